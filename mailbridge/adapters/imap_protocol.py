"""aioimaplib's client protocol, fixed (iterative reader, lazy logs), and IMAP wire helpers."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aioimaplib

# aioimaplib's names, read from its own module: it ships no type information.
CRLF: bytes = aioimaplib.aioimaplib.CRLF
LOGOUT: str = aioimaplib.aioimaplib.LOGOUT
_literal_data_re = aioimaplib.aioimaplib.literal_data_re
_Command: Any = aioimaplib.aioimaplib.Command
_FetchCommand: Any = aioimaplib.aioimaplib.FetchCommand
_IncompleteRead: Any = aioimaplib.aioimaplib.IncompleteRead
_Abort: Any = aioimaplib.aioimaplib.Abort

log = logging.getLogger(__name__)

ConnectionLostCallback = Callable[[Exception | None], None]


_KEYWORD_RE = re.compile(r"[^\s(){%*\"\\\]\x00-\x1f\x7f]+", re.ASCII)


def check_keyword(keyword: str) -> None:
    if not _KEYWORD_RE.fullmatch(keyword):
        raise ValueError(f"not an IMAP keyword: {keyword!r}")


def folder_key(name: str) -> str:
    """INBOX is case-insensitive (RFC 3501 section 5.1); every other name is exact."""
    return "INBOX" if name.upper() == "INBOX" else name


def uid_set(uids: Iterable[int]) -> str:
    """A compact IMAP sequence set: [1, 2, 3, 7] -> "1:3,7"."""
    ordered = sorted(set(uids))
    if not ordered or ordered[0] < 1:
        raise ValueError(f"UIDs must be positive and at least one: {ordered[:5]}")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in [*ordered[1:], 0]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    return ",".join(parts)


def encode_mailbox(name: str) -> str:
    """A folder name in IMAP modified UTF-7 (RFC 3501 section 5.1.3), quoted for a command."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = base64.b64encode("".join(pending).encode("utf-16-be")).rstrip(b"=")
            out.append("&" + raw.decode("ascii").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return aioimaplib.quoted("".join(out))  # type: ignore[no-any-return]


def decode_mailbox(raw: str) -> str:
    """The inverse of `encode_mailbox` for an unquoted name."""

    def shifted(match: re.Match[str]) -> str:
        text = match.group(1).replace(",", "/")
        if not text:
            return "&"
        return base64.b64decode(text + "=" * (-len(text) % 4)).decode("utf-16-be")

    return re.sub(r"&([^-]*)-", shifted, raw)


class LinearFetchCommand(_FetchCommand):  # type: ignore[misc]
    """A FETCH whose "is the current item complete?" check is O(1) instead of O(lines so far).

    The stock check re-scans every response line on each line received (quadratic in the
    size of the reply); here the parenthesis balance of the current FETCH item is kept as
    lines arrive. Literal data (bytearray lines) is excluded, as upstream does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._balance = 0
        super().__init__(*args, **kwargs)

    def append_to_resp(self, line: bytes, result: str = "Pending") -> None:
        super().append_to_resp(line, result)
        if isinstance(line, bytes):
            if self.FETCH_MESSAGE_DATA_RE.match(line):
                self._balance = 0
            self._balance += line.count(b"(") - line.count(b")")

    def wait_data(self) -> bool:
        return self._balance != 0


class IterativeProtocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """IMAP4ClientProtocol that reads a reply of any number of lines without recursing.

    Upstream `_handle_responses` calls itself once per line (RecursionError on ~1,000 lines
    in one read, aioimaplib#118) and copies the rest of the buffer per line; `data_received`
    formats every chunk for a debug message even when DEBUG is off. This reader walks the
    buffer with an offset, and logs only sizes (never mail content or credentials). When the
    connection is lost, every pending command fails at once instead of waiting forever, and
    `lost` is set.
    """

    incomplete_line: bytes
    current_command: Any
    pending_sync_command: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lost = asyncio.Event()
        self.last_received = 0.0  # the loop's clock when bytes last came in

    def data_received(self, d: bytes) -> None:
        self.last_received = self.loop.time()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("received %d bytes", len(d))
        data = self.incomplete_line + d if self.incomplete_line else d
        try:
            self._handle_responses(data, self._handle_line, self.current_command)
            self.incomplete_line = b""
            self.current_command = None
        except _IncompleteRead as incomplete_read:
            self.current_command = incomplete_read.cmd
            self.incomplete_line = incomplete_read.data

    def _handle_responses(
        self,
        data: bytes,
        line_handler: Callable[[bytes, Any], Any],
        current_cmd: Any = None,
    ) -> None:
        pos, size = 0, len(data)
        while True:
            if current_cmd is not None and current_cmd.wait_literal_data():
                missing = current_cmd._expected_size - len(current_cmd._resp_literal_data)
                chunk = data[pos : pos + missing]
                pos += len(chunk)
                current_cmd.append_literal_data(chunk)
                if current_cmd.wait_literal_data():
                    raise _IncompleteRead(current_cmd)
            if pos >= size:
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current_cmd is not None and current_cmd.wait_data():
                    raise _IncompleteRead(current_cmd)
                return
            end = data.find(CRLF, pos)
            if end < 0:
                raise _IncompleteRead(current_cmd, data[pos:])
            line = data[pos:end]
            pos = end + 2
            cmd = line_handler(line, current_cmd)
            begin_literal = _literal_data_re.match(line) if line.endswith(b"}") else None
            if begin_literal:
                if cmd is None:
                    cmd = _Command("NIL", "unused", loop=self.loop)
                cmd.begin_literal_data(int(begin_literal.group("size")))
                current_cmd = cmd
            elif cmd is not None and cmd.wait_data():
                current_cmd = cmd
            else:
                current_cmd = None

    def send(self, line: str, scrub: str | None = None) -> None:
        if log.isEnabledFor(logging.DEBUG):
            # A scrubbed line carries credentials (possibly escaped): log its command only.
            shown = line.split(" ", 2)[:2] if scrub else [line]
            log.debug("sending %s", " ".join(shown))
        self.transport.write(f"{line}\r\n".encode())

    async def fetch(
        self,
        message_set: str,
        message_parts: str,
        by_uid: bool = False,
        timeout: Any = None,  # noqa: ASYNC109 - upstream's signature, called by its uid()
    ) -> Any:
        # No per-line inactivity timer (upstream re-arms a loop timer for every line received):
        # our caller bounds the whole command with asyncio.wait_for.
        del timeout
        return await self.execute(
            LinearFetchCommand(
                self.new_tag(),
                message_set,
                message_parts,
                prefix="UID" if by_uid else "",
                loop=self.loop,
            )
        )

    def _continuation(self, line: bytes) -> None:
        command = self.pending_sync_command
        if command is not None and command.name == "AUTHENTICATE":
            # After an initial response (XOAUTH2), a challenge is the server's error report (a
            # base64 JSON): answer it empty so the server ends the exchange with NO at once.
            self.transport.write(CRLF)
            return
        super()._continuation(line)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.fail_pending("connection lost")
        self.lost.set()

    def fail_pending(self, reason: str) -> None:
        """Make every command still waiting for its reply fail now, and refuse new ones."""
        self.state = LOGOUT
        pending = [*self.pending_async_commands.values(), self.pending_sync_command]
        self.pending_async_commands.clear()
        self.pending_sync_command = None
        for command in pending:
            if command is not None and not command._event.is_set():
                command._exception = _Abort(reason)
                command.close(reason.encode(), "BYE")
        self._idle_event.set()


async def until_silent(
    protocol: IterativeProtocol,
    reply: Awaitable[Any],
    silence: float,
    on_progress: Callable[[], None] = lambda: None,
) -> Any:
    """The reply, or TimeoutError once nothing has arrived on the connection for `silence`
    seconds: a large message on a slow link takes as long as its bytes keep coming.
    `on_progress` is called at least every `silence` seconds while they do."""
    loop = asyncio.get_running_loop()
    protocol.last_received = loop.time()
    task = asyncio.ensure_future(reply)
    try:
        while True:
            quiet_until = protocol.last_received + silence
            done, _pending = await asyncio.wait({task}, timeout=quiet_until - loop.time())
            if done:
                return task.result()
            if loop.time() >= protocol.last_received + silence:
                raise TimeoutError
            on_progress()
    finally:
        if not task.done():
            task.cancel()


class Imap4(aioimaplib.IMAP4):  # type: ignore[misc]
    """aioimaplib.IMAP4 (plain or, given an SSLContext, implicit TLS) on IterativeProtocol."""

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: ConnectionLostCallback | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        local_loop = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = IterativeProtocol(local_loop, conn_lost_cb)
        self._client_task = local_loop.create_task(
            local_loop.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )

    def abandon(self, *, graceful: bool) -> None:
        """Close (or abort) the connection now and fail every pending command and task."""
        protocol: IterativeProtocol = self.protocol
        if not self._client_task.done():
            self._client_task.cancel()
        if self._idle_waiter is not None:
            self._idle_waiter.cancel()
        if protocol.transport is not None:
            if graceful:
                protocol.transport.close()
            else:
                protocol.transport.abort()
        protocol.fail_pending("connection closed by mailbridge")
        for task in [self._client_task, *self.tasks, *protocol.tasks]:
            task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a finished library task's outcome as seen (no "exception never retrieved")."""
    if not task.cancelled():
        task.exception()
