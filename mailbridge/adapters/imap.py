"""The IMAP adapter: the only module that speaks IMAP (aioimaplib behind a small typed client)."""

from __future__ import annotations

import asyncio
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aioimaplib

from mailbridge.adapters.imap_protocol import (
    Imap4,
    IterativeProtocol,
    check_keyword,
    encode_mailbox,
    folder_key,
    uid_set,
    until_silent,
)
from mailbridge.adapters.imap_replies import (
    fetched_bodies,
    has_news,
    list_names,
    message_sizes,
    said_bye,
    status_text,
)
from mailbridge.adapters.oauth import TokenSource
from mailbridge.errors import TransientError
from mailbridge.logs import get_logger
from mailbridge.records import RawMail
from mailbridge.settings import ImapSecurity, ImapSettings

log = get_logger(__name__)

FETCH_ITEMS = "(UID RFC822.SIZE BODY.PEEK[])"
MAX_UIDS_PER_COMMAND = 1000  # bounds a command's UID set and its reply (one EXPUNGE per UID)
LOGOUT_TIMEOUT = 5.0
_STOP_PUSH: list[bytes] = aioimaplib.aioimaplib.STOP_WAIT_SERVER_PUSH
_LIBRARY_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    OSError,
    EOFError,
    RecursionError,
    aioimaplib.aioimaplib.AioImapException,
)
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (*_LIBRARY_ERRORS, RuntimeError)


class ImapError(TransientError):
    """The IMAP connection failed (network, timeout, BYE, unexpected NO); it has been closed."""


class ImapAuthError(ImapError):
    """The server refused the login."""


@dataclass(frozen=True, slots=True)
class FolderState:
    """A selected folder as SELECT reported it."""

    name: str
    uidvalidity: int
    uidnext: int | None
    exists: int


def backoff_delay(attempt: int, cap: float, base: float = 1.0) -> float:
    """Seconds to wait before reconnect `attempt` (0-based): doubling, capped, half jittered."""
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 0), 32))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _call(method: str, *args: str) -> Callable[[Any], Awaitable[Any]]:
    """A deferred `imap.<method>(*args)` for `ImapClient._run` (binds the arguments now)."""
    return lambda imap: getattr(imap, method)(*args)


class ImapClient:
    """One IMAP connection for one mailbox. Any ImapError leaves it closed: `connect()` again."""

    def __init__(
        self,
        settings: ImapSettings,
        *,
        timeout: float | None = None,
        token_source: TokenSource | None = None,
    ) -> None:
        self._settings = settings
        self._token_source = token_source  # XOAUTH2 instead of LOGIN when given
        self._timeout = settings.timeout_seconds if timeout is None else timeout
        self._imap: Any = None
        self._selected: FolderState | None = None
        self._log = log.bind(imap_host=settings.host, imap_user=settings.user)
        self.capabilities: frozenset[str] = frozenset()
        self.has_move = False
        self.has_idle = False
        self.on_progress: Callable[[], None] = lambda: None  # a long fetch still receiving

    @property
    def connected(self) -> bool:
        return self._imap is not None

    @property
    def selected(self) -> FolderState | None:
        return self._selected

    # --- connection ------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        settings = self._settings
        if settings.security is ImapSecurity.TLS:
            cafile = str(settings.ca_file) if settings.ca_file is not None else None
            return ssl.create_default_context(cafile=cafile)
        self._log.warning("imap_plaintext_connection", port=settings.port)
        return None

    async def connect(self) -> None:
        """Connect, LOGIN and read the capabilities; ImapAuthError if the login is refused."""
        await self.close()
        settings = self._settings
        context = self._ssl_context()
        self._imap = Imap4(settings.host, settings.port, timeout=self._timeout, ssl_context=context)
        await self._run("connect", lambda imap: imap.wait_hello_from_server())
        response = await self._login()
        if response.result != "OK":
            text = status_text(response)
            await self._drop()
            self._log.warning("imap_login_refused", reply=text)
            if "[UNAVAILABLE]" in text:
                raise ImapError(f"login to {settings.host}: server unavailable: {text}")
            raise ImapAuthError(f"login to {settings.host} as {settings.user} refused: {text}")
        await self._run("capability", lambda imap: imap.protocol.capability())
        self.capabilities = frozenset(c.upper() for c in self._imap.protocol.capabilities)
        self.has_move = "MOVE" in self.capabilities
        self.has_idle = "IDLE" in self.capabilities and settings.idle
        self._log.info(
            "imap_connected",
            port=settings.port,
            security=str(settings.security),
            move=self.has_move,
            idle=self.has_idle,
        )

    async def _login(self) -> Any:
        """LOGIN with the password, or AUTHENTICATE XOAUTH2 with the account's token: once
        with the cached token and, if the server refuses it, once more with a fresh one."""
        settings = self._settings
        source = self._token_source
        if source is None:
            password = settings.password.get_secret_value()
            user = aioimaplib.quoted(settings.user)
            return await self._run("login", lambda imap: imap.login(user, password))
        response = None
        for fresh in (False, True):
            try:
                token = await source.token(fresh=fresh)
            except TransientError:
                await self._drop()
                raise
            response = await self._run("authenticate", _call("xoauth2", settings.user, token))
            if response.result == "OK" or "[UNAVAILABLE]" in status_text(response):
                break
            if not fresh:
                self._log.info("imap_token_refused", reply=status_text(response))
        return response

    async def close(self) -> None:
        """LOGOUT (under a short timeout) and close the connection; never raises."""
        imap = self._imap
        if imap is None:
            return
        protocol: IterativeProtocol = imap.protocol
        try:
            transport = protocol.transport
            if transport is not None and not transport.is_closing() and not protocol.lost.is_set():
                await asyncio.wait_for(imap.logout(), min(self._timeout, LOGOUT_TIMEOUT))
        except _CLOSE_ERRORS as error:
            self._log.debug("imap_logout_failed", error=repr(error))
        finally:
            await self._drop(graceful=True)

    async def _drop(self, *, graceful: bool = False) -> None:
        """Close the transport now and fail what is pending; waits briefly for the socket."""
        imap, self._imap, self._selected = self._imap, None, None
        if imap is None:
            return
        protocol: IterativeProtocol = imap.protocol
        imap.abandon(graceful=graceful)
        if protocol.transport is not None:
            try:
                await asyncio.wait_for(protocol.lost.wait(), 2.0)
            except TimeoutError:
                self._log.debug("imap_close_slow")

    async def _run(
        self, what: str, call: Callable[[Any], Awaitable[Any]], *, while_arriving: bool = False
    ) -> Any:
        """Await one library call under the timeout; on any failure drop the connection.

        `while_arriving`: the timeout is for silence, not for the whole reply, so a large
        message on a slow link is fetched as long as its bytes keep coming in.
        """
        imap = self._imap
        if imap is None:
            raise ImapError(f"{what}: not connected")
        try:
            if while_arriving:
                return await until_silent(
                    imap.protocol, call(imap), self._timeout, self.on_progress
                )
            return await asyncio.wait_for(call(imap), self._timeout)
        except _LIBRARY_ERRORS as error:
            reason = "timed out" if isinstance(error, TimeoutError) else repr(error)
            await self._fail(what, reason, error)
        except asyncio.CancelledError:
            self._imap = self._selected = None
            imap.abandon(graceful=False)
            raise

    async def _fail(self, what: str, reason: str, cause: BaseException | None = None) -> Any:
        await self._drop()
        self._log.warning("imap_connection_dropped", command=what, reason=reason)
        raise ImapError(f"IMAP {what} on {self._settings.host}: {reason}") from cause

    async def _ok(
        self, what: str, call: Callable[[Any], Awaitable[Any]], *, while_arriving: bool = False
    ) -> Any:
        """`_run`, and anything but OK is a failure too."""
        response = await self._run(what, call, while_arriving=while_arriving)
        if response.result != "OK":
            await self._fail(what, f"{response.result} {status_text(response)}")
        return response

    # --- folders ---------------------------------------------------------------------------

    async def ensure_folders(self, names: Iterable[str]) -> None:
        """CREATE each folder that LIST does not show."""
        wanted = list(dict.fromkeys(names))
        response = await self._ok("list", lambda imap: imap.list('""', "*"))
        existing = {folder_key(name) for name in list_names(response.lines)}
        for name in wanted:
            if folder_key(name) in existing:
                continue
            encoded = encode_mailbox(name)
            created = await self._run("create", _call("create", encoded))
            if created.result == "OK":
                self._log.info("imap_folder_created", folder=name)
            elif "[ALREADYEXISTS]" not in status_text(created):
                await self._fail("create", f"{created.result} {status_text(created)}")

    async def select(self, folder: str) -> FolderState:
        """SELECT the folder; its UIDVALIDITY, UIDNEXT and message count."""
        self._selected = None
        encoded = encode_mailbox(folder)
        response = await self._ok("select", lambda imap: imap.select(encoded))
        exists, uidvalidity, uidnext = 0, None, None
        for line in response.lines:
            if not isinstance(line, bytes):
                continue
            if match := re.match(rb"(\d+) EXISTS", line):
                exists = int(match.group(1))
            elif match := re.search(rb"\[UIDVALIDITY (\d+)\]", line):
                uidvalidity = int(match.group(1))
            elif match := re.search(rb"\[UIDNEXT (\d+)\]", line):
                uidnext = int(match.group(1))
        if uidvalidity is None:
            await self._fail("select", f"no UIDVALIDITY for {folder!r}")
            raise AssertionError("unreachable")  # for the type checker: _fail raises
        self._selected = FolderState(folder, uidvalidity, uidnext, exists)
        self._log.debug("imap_selected", folder=folder, uidvalidity=uidvalidity, exists=exists)
        return self._selected

    def _require_selected(self) -> FolderState:
        if self._imap is None:
            raise ImapError("not connected (an earlier failure closed the connection)")
        if self._selected is None:
            raise RuntimeError("no folder selected: call select() first")
        return self._selected

    # --- messages --------------------------------------------------------------------------

    async def search_unsettled(self, keyword: str) -> list[int]:
        """UIDs of the selected folder's messages without `keyword` and not \\Deleted."""
        check_keyword(keyword)
        self._require_selected()
        response = await self._ok(
            "search",
            lambda imap: imap.uid_search("UNKEYWORD", keyword, "UNDELETED", charset=None),
        )
        found: set[int] = set()
        for line in response.lines[:-1]:
            words = bytes(line).split()
            if words and all(word.isdigit() for word in words):
                found.update(int(word) for word in words)
        return sorted(found)

    async def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE of these messages, by UID (absent: expunged meanwhile)."""
        self._require_selected()
        found: dict[int, int] = {}
        ordered = sorted(set(uids))
        for start in range(0, len(ordered), MAX_UIDS_PER_COMMAND):
            chunk = uid_set(ordered[start : start + MAX_UIDS_PER_COMMAND])
            response = await self._ok("fetch", _call("uid", "fetch", chunk, "(UID RFC822.SIZE)"))
            found.update(message_sizes(response.lines))
        return found

    async def fetch(self, uids: Sequence[int]) -> list[RawMail]:
        """The raw bytes of these messages (without setting \\Seen), in UID order."""
        folder = self._require_selected()
        if not uids:
            return []
        wanted = set(uids)
        response = await self._ok(
            "fetch",
            lambda imap: imap.uid("fetch", uid_set(wanted), FETCH_ITEMS),
            while_arriving=True,
        )
        mails: dict[int, RawMail] = {}
        for item in fetched_bodies(response.lines, wanted):
            if item.declared_size is not None and item.declared_size != len(item.data):
                self._log.warning(
                    "imap_size_mismatch", uid=item.uid, size=item.declared_size, got=len(item.data)
                )
            mails[item.uid] = RawMail(folder.name, folder.uidvalidity, item.uid, item.data)
        if len(mails) != len(wanted):
            self._log.warning(
                "imap_fetch_missing", folder=folder.name, missing=sorted(wanted - set(mails))[:20]
            )
        return [mails[uid] for uid in sorted(mails)]

    async def settle(self, uids: Sequence[int], folder: str, keyword: str) -> None:
        """UID MOVE to `folder` when MOVE is offered, else mark them (\\Seen `keyword`)."""
        check_keyword(keyword)
        selected = self._require_selected()
        ordered = sorted(set(uids))
        for start in range(0, len(ordered), MAX_UIDS_PER_COMMAND):
            chunk = uid_set(ordered[start : start + MAX_UIDS_PER_COMMAND])
            if self.has_move:
                target = encode_mailbox(folder)
                await self._ok("move", _call("uid", "move", chunk, target))
            else:
                flags = f"(\\Seen {keyword})"
                await self._ok("store", _call("uid", "store", chunk, "+FLAGS.SILENT", flags))
        if ordered:
            self._log.info(
                "imap_settled",
                folder=selected.name,
                to=folder if self.has_move else None,
                count=len(ordered),
                method="move" if self.has_move else "store",
            )

    # --- waiting ---------------------------------------------------------------------------

    async def wait_for_news(self, max_seconds: float) -> bool:
        """IDLE until the server reports new or expunged mail (True) or `max_seconds` pass."""
        if not self.has_idle:
            await asyncio.sleep(max_seconds)
            return False
        self._require_selected()
        imap = self._imap
        queue: asyncio.Queue[Any] = imap.protocol.idle_queue
        while not queue.empty():  # pushes from an earlier IDLE were looked at then
            queue.get_nowait()
        idle_task = await self._run(
            "idle", lambda imap: imap.idle_start(timeout=max_seconds + 2 * self._timeout)
        )
        command = imap.protocol.pending_sync_command
        try:
            news = await self._idle_until_news(queue, idle_task, max_seconds)
        except asyncio.CancelledError:
            if self._imap is imap and imap.has_pending_idle() and not imap.protocol.lost.is_set():
                imap.idle_done()  # leave IDLE so close() can still LOGOUT
            raise
        imap.idle_done()
        response = await self._ok("idle_done", lambda _imap: idle_task)
        leftovers = [*getattr(command, "buffer", []), *response.lines]
        while not queue.empty():
            leftovers.extend(queue.get_nowait())
        news = news or has_news(leftovers)
        self._log.debug("imap_idle_ended", news=news)
        return news

    async def _idle_until_news(
        self, queue: asyncio.Queue[Any], idle_task: asyncio.Future[Any], max_seconds: float
    ) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_seconds
        while (remaining := deadline - loop.time()) > 0:
            getter = asyncio.ensure_future(queue.get())
            try:
                await asyncio.wait(
                    {getter, idle_task}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                lines = getter.result()
                if lines is _STOP_PUSH or lines == _STOP_PUSH:
                    return False
                if said_bye(lines):
                    await self._fail("idle", "server said BYE")
                if has_news(lines):
                    return True
            if idle_task.done():
                reason = "IDLE ended by the server"
                if not idle_task.cancelled() and idle_task.exception() is not None:
                    reason = repr(idle_task.exception())
                await self._fail("idle", reason)
        return False
