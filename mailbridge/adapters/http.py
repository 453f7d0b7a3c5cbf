"""A tiny HTTP/1.1 server on the daemon's event loop, for /metrics, /healthz and /readyz.

GET (and HEAD) only, one request per connection (`Connection: close`), small bounded reads
with a timeout: enough for Prometheus and a health probe, nothing a browser would need. No
threads: handlers are coroutines on the same loop as the workers, so what they report is
what the workers see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from mailbridge.logs import get_logger

log = get_logger(__name__)

MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_SECONDS = 5.0
HANDLER_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, data: Any) -> Response:
        body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
        return cls(status, body, "application/json")

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode())


Handler = Callable[[], Awaitable[Response]]


class HttpServer:
    """Serves `routes` (path -> coroutine) on host:port; port 0 picks a free one."""

    def __init__(self, host: str, port: int, routes: dict[str, Handler]) -> None:
        self.host = host
        self.port = port
        self.routes = routes
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_REQUEST_BYTES, reuse_address=True
        )
        sockets = self._server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("http_listening", host=self.host, port=self.port, paths=sorted(self.routes))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            try:
                method, path = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT_SECONDS)
            except (TimeoutError, ValueError, asyncio.LimitOverrunError, EOFError):
                response = Response.text(HTTPStatus.BAD_REQUEST, "bad request\n")
            else:
                head_only = method == "HEAD"
                response = await self._respond(method, path)
            await _write(writer, response, head_only=head_only)
        except (ConnectionError, OSError):
            pass  # the client went away
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), READ_TIMEOUT_SECONDS)

    async def _respond(self, method: str, path: str) -> Response:
        handler = self.routes.get(path.split("?", 1)[0])
        if handler is None:
            return Response.text(HTTPStatus.NOT_FOUND, "not found\n")
        if method not in ("GET", "HEAD"):
            return Response(
                HTTPStatus.METHOD_NOT_ALLOWED,
                b"method not allowed\n",
                headers={"Allow": "GET, HEAD"},
            )
        try:
            return await asyncio.wait_for(handler(), HANDLER_TIMEOUT_SECONDS)
        except Exception as error:
            log.exception("http_handler_failed", path=path)
            return Response.text(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(error).__name__}\n")


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """The method and path of the request line; the headers are read and ignored."""
    line = (await reader.readuntil(b"\r\n")).decode("latin-1").strip()
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"bad request line {line[:80]!r}")
    total = len(line)
    while True:
        header = await reader.readuntil(b"\r\n")
        total += len(header)
        if total > MAX_REQUEST_BYTES:
            raise ValueError("request head too large")
        if header == b"\r\n":
            return parts[0].upper(), parts[1]


async def _write(writer: asyncio.StreamWriter, response: Response, *, head_only: bool) -> None:
    reason = HTTPStatus(response.status).phrase
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{name}: {value}" for name, value in response.headers.items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(response.body)
    await asyncio.wait_for(writer.drain(), READ_TIMEOUT_SECONDS)
