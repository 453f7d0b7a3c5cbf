"""The tiny HTTP server behind /metrics, /healthz and /readyz, over real loopback sockets."""

from __future__ import annotations

import asyncio
import json

from mailbridge.adapters.http import HttpServer, Response
from mailbridge.health import Check, summary


async def raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return data


async def test_routes_methods_and_bad_requests() -> None:
    async def ok() -> Response:
        return Response.json(200, {"status": "ok"})

    async def broken() -> Response:
        raise RuntimeError("boom")

    async with HttpServer("127.0.0.1", 0, {"/healthz": ok, "/broken": broken}) as server:
        answer = await raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Type: application/json" in head
        assert b"Connection: close" in head
        assert json.loads(body) == {"status": "ok"}

        head_only = await raw(server.port, b"HEAD /healthz?x=1 HTTP/1.0\r\n\r\n")
        assert head_only.startswith(b"HTTP/1.1 200 OK")
        assert head_only.endswith(b"\r\n\r\n")

        assert (await raw(server.port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        posted = await raw(server.port, b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert posted.startswith(b"HTTP/1.1 405")
        assert b"Allow: GET, HEAD" in posted
        assert (await raw(server.port, b"hello\r\n\r\n")).startswith(b"HTTP/1.1 400")
        assert (
            await raw(server.port, b"GET /healthz HTTP/1.1\r\n" + b"X: y\r\n" * 2000)
        ).startswith(b"HTTP/1.1 400")
        assert (await raw(server.port, b"GET /broken HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 500")


def test_summary_names_the_failed_checks() -> None:
    body = summary([Check("database", True, "reachable"), Check("imap:x", False, "refused")])
    assert body["status"] == "fail"
    assert body["failed"] == ["imap:x"]
    assert summary([Check("database", True, "reachable")])["status"] == "ok"
