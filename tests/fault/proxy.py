"""A small TCP proxy between the daemon and Dovecot that cuts or stalls a connection on cue.

It runs its own event loop on a thread, so a test (or a daemon in a subprocess) is not slowed.
`arm(trigger, action, after_bytes=...)` makes the next connection whose client sends a
command matching `trigger` ("fetch" or "idle") misbehave once:

- ``cut``: after forwarding `after_bytes` more bytes of the server's answer, both sockets are
  aborted (a reset mid-reply, as a NAT or a crashing server would do);
- ``stall``: after those bytes nothing more is forwarded either way and nothing is closed,
  until the client gives up (its timeout) and closes its side.

`fired` is set when the fault has happened; `connections` counts accepted connections.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from dataclasses import dataclass
from typing import Literal

Trigger = Literal["fetch", "idle"]
Action = Literal["cut", "stall"]

_TRIGGERS: dict[str, re.Pattern[bytes]] = {
    "fetch": re.compile(rb"^\S+ UID FETCH ", re.IGNORECASE | re.MULTILINE),
    "idle": re.compile(rb"^\S+ IDLE\r?$", re.IGNORECASE | re.MULTILINE),
}


@dataclass
class _Armed:
    trigger: Trigger
    action: Action
    after_bytes: int


class _Link:
    """One client connection and its upstream."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.fault: _Armed | None = None
        self.budget: int | None = None  # server bytes still forwarded once a fault is live
        self.stalled = False
        self.writers: list[asyncio.StreamWriter] = []

    def abort(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = "127.0.0.1"
        self.port = 0
        self.connections = 0
        self.fired = threading.Event()
        self._armed: _Armed | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._links: set[_Link] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    # --- control, from the test's thread ---------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def arm(self, trigger: Trigger, action: Action, *, after_bytes: int = 0) -> None:
        with self._lock:
            self.fired.clear()
            self._armed = _Armed(trigger, action, after_bytes)

    def cut_all(self) -> None:
        """Abort every live connection now."""
        self._loop.call_soon_threadsafe(lambda: [link.abort() for link in list(self._links)])

    # --- the proxy -------------------------------------------------------------------------

    async def _start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._serve, sock=sock)

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for link in list(self._links):
            link.abort()
        await asyncio.sleep(0.05)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        link = _Link(self)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        link.writers = [writer, up_writer]
        self._links.add(link)
        try:
            await asyncio.gather(
                self._client_to_server(link, reader, up_writer),
                self._server_to_client(link, up_reader, writer),
                return_exceptions=True,
            )
        finally:
            self._links.discard(link)
            link.abort()

    async def _client_to_server(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while data := await reader.read(65536):
            if link.stalled:
                continue  # swallowed: the server never hears it
            if link.fault is None:
                with self._lock:
                    armed = self._armed
                    if armed is not None and _TRIGGERS[armed.trigger].search(data):
                        self._armed = None
                        link.fault, link.budget = armed, armed.after_bytes
            writer.write(data)
            await writer.drain()
        link.abort()

    async def _server_to_client(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while data := await reader.read(65536):
            if link.stalled:
                continue
            fault = link.fault
            if fault is not None and link.budget is not None:
                if fault.trigger == "idle":
                    # Forward until the server's "+ idling": from then on we are mid-IDLE.
                    writer.write(data)
                    await writer.drain()
                    if re.search(rb"(^|\n)\+ ", data) and await self._fire(link):
                        return
                    continue
                head, data = data[: link.budget], data[link.budget :]
                link.budget -= len(head)
                if head:
                    writer.write(head)
                    await writer.drain()
                if not data:
                    continue  # the fault waits for more of the reply: mid-reply, not after it
                if await self._fire(link):
                    return
                continue
            writer.write(data)
            await writer.drain()
        link.abort()

    async def _fire(self, link: _Link) -> bool:
        """Make the fault happen; True when the connection is gone."""
        assert link.fault is not None
        link.budget = None
        self.fired.set()
        if link.fault.action == "stall":
            link.stalled = True
            return False
        link.abort()
        return True
