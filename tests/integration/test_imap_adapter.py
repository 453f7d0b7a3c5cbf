"""The IMAP adapter against a real Dovecot (tests/servers/dovecot.py)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from collections.abc import AsyncIterator
from typing import Any

import aioimaplib
import pytest
from structlog.testing import capture_logs

from mailbridge.adapters.imap import (
    FolderState,
    ImapAuthError,
    ImapClient,
    ImapError,
    backoff_delay,
)
from mailbridge.adapters.imap_protocol import (
    IterativeProtocol,
    decode_mailbox,
    encode_mailbox,
    uid_set,
)
from mailbridge.settings import ImapSettings
from tests.servers.dovecot import DovecotServer, Mailbox

pytestmark = pytest.mark.integration

KEYWORD = "MailbridgeDone"
HANG = 30.0  # generous: only there to turn a hang into a failure


def mail(n: int, extra: bytes = b"") -> bytes:
    return (
        b"From: Customer <customer@example.org>\r\n"
        b"To: support@example.test\r\n"
        b"Subject: message " + str(n).encode() + b"\r\n"
        b"Message-ID: <m" + str(n).encode() + b"@example.org>\r\n"
        b"\r\n"
        b"Hello (number " + str(n).encode() + b")\r\n" + extra
    )


@pytest.fixture
async def client(mailbox: Mailbox) -> AsyncIterator[ImapClient]:
    imap = ImapClient(mailbox.settings())
    await asyncio.wait_for(imap.connect(), HANG)
    try:
        yield imap
    finally:
        await asyncio.wait_for(imap.close(), HANG)


# --- connecting ------------------------------------------------------------------------------


async def test_tls_login_with_the_test_ca(client: ImapClient) -> None:
    assert client.connected
    assert "IMAP4REV1" in client.capabilities
    assert client.has_move
    assert client.has_idle


async def test_tls_without_the_ca_fails_certificate_verification(mailbox: Mailbox) -> None:
    imap = ImapClient(mailbox.settings(ca_file=None))
    with pytest.raises(ImapError) as caught:
        await asyncio.wait_for(imap.connect(), HANG)
    assert not isinstance(caught.value, ImapAuthError)
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    assert not imap.connected


async def test_wrong_password_is_an_auth_error(mailbox: Mailbox) -> None:
    imap = ImapClient(mailbox.settings(password="not-the-password"))
    with pytest.raises(ImapAuthError):
        await asyncio.wait_for(imap.connect(), HANG)
    assert not imap.connected


async def test_plain_connection_warns_and_never_logs_the_password(
    mailbox: Mailbox, caplog: pytest.LogCaptureFixture
) -> None:
    secret = mailbox.password
    caplog.set_level(logging.DEBUG)
    imap = ImapClient(mailbox.settings(security="plain"))
    with capture_logs() as events:
        await asyncio.wait_for(imap.connect(), HANG)
        await imap.select("INBOX")
        await imap.close()
    assert any(
        e["event"] == "imap_plaintext_connection" and e["log_level"] == "warning" for e in events
    )
    assert any(e["event"] == "imap_connected" for e in events)
    assert secret not in repr(events)
    assert caplog.records, "DEBUG logging of the library should have produced records"
    assert secret not in caplog.text


async def test_timeout_on_a_silent_server_raises_and_drops() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never greets
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        imap = ImapClient(
            ImapSettings(host="127.0.0.1", port=port, security="plain", user="u", password="p"),
            timeout=0.5,
        )
        with pytest.raises(ImapError, match="timed out"):
            await asyncio.wait_for(imap.connect(), HANG)
        assert not imap.connected
        with pytest.raises(ImapError, match="not connected"):
            await imap.select("INBOX")
    finally:
        server.close()
        await server.wait_closed()


async def _scripted_server(handler: Any) -> tuple[asyncio.Server, int]:
    """A loopback IMAP server that answers the login dance, then lets `handler` misbehave."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK ready\r\n")
        while line := await reader.readline():
            tag, _, command = line.decode().rstrip("\r\n").partition(" ")
            verb = command.split(" ")[0].upper()
            if verb == "CAPABILITY":
                writer.write(b"* CAPABILITY IMAP4rev1 IDLE MOVE\r\n%s OK done\r\n" % tag.encode())
            elif verb in ("LOGIN", "LOGOUT"):
                writer.write(b"%s OK done\r\n" % tag.encode())
            elif verb == "SELECT":
                writer.write(
                    b"* 0 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n%s OK done\r\n" % tag.encode()
                )
            elif not await handler(verb, tag, writer):
                break
        await reader.read()  # then stay silent until the client goes away
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_server_gone_silent_in_idle_raises_instead_of_hanging() -> None:
    async def idle_then_silence(verb: str, tag: str, writer: asyncio.StreamWriter) -> bool:
        if verb == "IDLE":
            writer.write(b"+ idling\r\n")
        return False  # ignores DONE and everything after

    server, port = await _scripted_server(idle_then_silence)
    settings = ImapSettings(host="127.0.0.1", port=port, security="plain", user="u", password="p")
    imap = ImapClient(settings, timeout=0.5)
    try:
        await imap.connect()
        assert await imap.select("INBOX") == FolderState("INBOX", 7, None, 0)
        with pytest.raises(ImapError, match="timed out"):
            await asyncio.wait_for(imap.wait_for_news(0.2), HANG)
        assert not imap.connected
    finally:
        await imap.close()
        server.close()
        await server.wait_closed()


# --- folders and messages --------------------------------------------------------------------


async def test_fetch_returns_the_exact_bytes_and_uids(client: ImapClient, mailbox: Mailbox) -> None:
    bodies = [
        mail(1),
        mail(2, b"8-bit: \xc8\x99i \xd0\xb6 \xff\r\nA literal-looking {5}\r\n(unbalanced (\r\n"),
        mail(3, b"x" * 70_000 + b"\r\n"),
    ]
    uids = [mailbox.append(body) for body in bodies]

    state = await client.select("INBOX")
    assert state == FolderState("INBOX", mailbox.uidvalidity(), uids[-1] + 1, 3)
    assert await client.search_unsettled(KEYWORD) == uids

    fetched = await client.fetch(list(reversed(uids)))
    assert [m.uid for m in fetched] == uids
    assert [m.data for m in fetched] == bodies
    assert {m.mailbox for m in fetched} == {"INBOX"}
    assert {m.uidvalidity for m in fetched} == {state.uidvalidity}
    assert all("\\Seen" not in flags for flags in mailbox.flags().values()), "BODY.PEEK"


async def test_fetch_skips_uids_that_are_gone(client: ImapClient, mailbox: Mailbox) -> None:
    uid = mailbox.append(mail(1))
    await client.select("INBOX")
    fetched = await client.fetch([uid, uid + 50])
    assert [m.uid for m in fetched] == [uid]


async def test_sizes_are_the_bytes_fetch_returns(client: ImapClient, mailbox: Mailbox) -> None:
    bodies = [mail(1), mail(2, b"y" * 250_000 + b"\r\n")]
    uids = [mailbox.append(body) for body in bodies]
    await client.select("INBOX")

    sizes = await client.sizes([*uids, uids[-1] + 50])  # a UID that is gone is left out

    assert sizes == {uid: len(body) for uid, body in zip(uids, bodies, strict=True)}


async def test_search_unsettled_excludes_settled_and_deleted(
    client: ImapClient, mailbox: Mailbox
) -> None:
    first, second, third = (mailbox.append(mail(n)) for n in range(3))
    deleted = mailbox.append(mail(9), flags="\\Deleted")
    await client.select("INBOX")
    assert await client.search_unsettled(KEYWORD) == [first, second, third]

    client.has_move = False  # the STORE path, as on a server without MOVE
    await client.settle([second], "Processed", KEYWORD)

    assert await client.search_unsettled(KEYWORD) == [first, third]
    flags = mailbox.flags()
    assert {"\\Seen", KEYWORD} <= flags[second]
    assert "\\Seen" not in flags[first]
    assert mailbox.uids() == [first, second, third, deleted], "STORE must not move or expunge"


async def test_settle_moves_to_a_folder_made_by_ensure_folders(
    client: ImapClient, mailbox: Mailbox
) -> None:
    bodies = [mail(n) for n in range(4)]
    uids = mailbox.append_many(bodies)
    await client.ensure_folders(["INBOX", "Processed", "Rejected", "Quarantine"])
    await client.ensure_folders(["Processed", "inbox"])  # already there: no error
    assert mailbox.folders() == ["INBOX", "Processed", "Quarantine", "Rejected"]

    await client.select("INBOX")
    await client.settle([uids[0], uids[2]], "Processed", KEYWORD)

    assert mailbox.uids() == [uids[1], uids[3]]
    assert mailbox.messages("Processed") == [bodies[0], bodies[2]]
    assert await client.search_unsettled(KEYWORD) == [uids[1], uids[3]]
    await client.settle([], "Processed", KEYWORD)  # nothing to do


async def test_settle_into_a_missing_folder_fails_and_drops(
    client: ImapClient, mailbox: Mailbox
) -> None:
    uid = mailbox.append(mail(1))
    await client.select("INBOX")
    with pytest.raises(ImapError, match="move"):
        await client.settle([uid], "NoSuchFolder", KEYWORD)
    assert not client.connected
    with pytest.raises(ImapError, match="not connected"):
        await client.search_unsettled(KEYWORD)
    assert mailbox.uids() == [uid]


async def test_non_ascii_folder_names(client: ImapClient, mailbox: Mailbox) -> None:
    name = "Procesate Ș & Ж"
    await client.ensure_folders([name])
    assert encode_mailbox(name)[1:-1] in mailbox.folders()
    await client.ensure_folders([name])  # LIST decodes it back: not created twice
    uid = mailbox.append(mail(1))
    await client.select("INBOX")
    await client.settle([uid], name, KEYWORD)
    assert mailbox.uids() == []
    state = await client.select(name)
    assert state.name == name
    assert state.exists == 1


async def test_select_reports_uidvalidity_change(client: ImapClient, mailbox: Mailbox) -> None:
    mailbox.create_folder("Work")
    before = await client.select("Work")
    await client.select("INBOX")
    mailbox.delete_folder("Work")
    mailbox.create_folder("Work")
    after = await client.select("Work")
    assert after.uidvalidity != before.uidvalidity
    assert after.uidvalidity == mailbox.uidvalidity("Work")


# --- IDLE ------------------------------------------------------------------------------------


async def test_idle_wakes_on_an_append_from_another_connection(
    client: ImapClient, mailbox: Mailbox
) -> None:
    await client.select("INBOX")
    waiting = asyncio.create_task(client.wait_for_news(HANG))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    uid = await asyncio.to_thread(mailbox.append, mail(1))

    assert await asyncio.wait_for(waiting, HANG) is True
    # IDLE was ended cleanly: the connection goes on working.
    assert await client.search_unsettled(KEYWORD) == [uid]


async def test_idle_times_out_without_news(client: ImapClient) -> None:
    await client.select("INBOX")
    assert await asyncio.wait_for(client.wait_for_news(1.0), HANG) is False
    assert client.connected
    assert await client.search_unsettled(KEYWORD) == []
    assert await asyncio.wait_for(client.wait_for_news(0.5), HANG) is False


async def test_without_idle_it_sleeps(mailbox: Mailbox) -> None:
    imap = ImapClient(mailbox.settings(idle=False))
    await imap.connect()
    try:
        assert not imap.has_idle
        await imap.select("INBOX")
        assert await imap.wait_for_news(0.2) is False
    finally:
        await imap.close()


async def test_cancelled_idle_still_closes_cleanly(client: ImapClient) -> None:
    await client.select("INBOX")
    waiting = asyncio.create_task(client.wait_for_news(HANG))
    await asyncio.sleep(0.3)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.wait_for(client.close(), HANG)
    assert not client.connected


# --- large replies ---------------------------------------------------------------------------


async def test_large_replies_do_not_crash(client: ImapClient, mailbox: Mailbox) -> None:
    count = 1200
    uids = await asyncio.to_thread(mailbox.append_many, [mail(n) for n in range(count)])
    await client.ensure_folders(["Processed"])
    await client.select("INBOX")

    found = await client.search_unsettled(KEYWORD)
    assert found == uids
    fetched = await client.fetch(found[:400])  # 1,200 reply lines
    assert [m.uid for m in fetched] == uids[:400]
    assert fetched[399].data == mail(399)

    await asyncio.wait_for(client.settle(found, "Processed", KEYWORD), HANG)  # 1,000 EXPUNGEs
    assert client.connected
    assert await client.search_unsettled(KEYWORD) == []
    assert len(mailbox.uids("Processed")) == count


def _big_reply(protocol: Any, lines: int) -> asyncio.Future[Any]:
    """Send a UID MOVE and feed its reply (`lines` untagged EXPUNGEs) in one chunk."""

    class Transport:
        def write(self, data: bytes) -> None:
            pass

    protocol.transport = Transport()
    protocol.state = "SELECTED"
    protocol.capabilities = {"MOVE"}
    pending = asyncio.ensure_future(protocol.uid("move", "1:*", "Processed"))
    return pending


@pytest.mark.parametrize("lines", [2000])
async def test_stock_protocol_recursion_is_fixed(lines: int) -> None:
    loop = asyncio.get_running_loop()
    reply = b"".join(b"* %d EXPUNGE\r\n" % 1 for _ in range(lines))
    outcomes: dict[str, Any] = {}
    for name, cls in (("stock", aioimaplib.IMAP4ClientProtocol), ("ours", IterativeProtocol)):
        protocol = cls(loop)
        pending = _big_reply(protocol, lines)
        await asyncio.sleep(0)
        tag = protocol.pending_sync_command.tag
        try:
            protocol.data_received(reply + tag.encode() + b" OK Move completed.\r\n")
            outcomes[name] = (await asyncio.wait_for(pending, 5)).result
        except RecursionError:
            outcomes[name] = "RecursionError"
            pending.cancel()
    assert lines > sys.getrecursionlimit()
    assert outcomes == {"stock": "RecursionError", "ours": "OK"}


# --- losing the server -----------------------------------------------------------------------


async def test_server_restart_raises_then_reconnect_works(
    dovecot: DovecotServer, client: ImapClient, mailbox: Mailbox
) -> None:
    await client.select("INBOX")
    await asyncio.to_thread(dovecot.restart)

    with pytest.raises(ImapError):
        await asyncio.wait_for(client.search_unsettled(KEYWORD), HANG)
    assert not client.connected

    await asyncio.wait_for(client.connect(), HANG)
    uid = mailbox.append(mail(1))
    await client.select("INBOX")
    assert await client.search_unsettled(KEYWORD) == [uid]


async def test_server_restart_during_idle(
    dovecot: DovecotServer, client: ImapClient, mailbox: Mailbox
) -> None:
    await client.select("INBOX")
    waiting = asyncio.create_task(client.wait_for_news(HANG))
    await asyncio.sleep(0.3)
    await asyncio.to_thread(dovecot.restart)
    with pytest.raises(ImapError):
        await asyncio.wait_for(waiting, HANG)
    assert not client.connected
    await asyncio.wait_for(client.connect(), HANG)
    await client.select("INBOX")


# --- pure helpers ----------------------------------------------------------------------------


def test_backoff_delay_grows_with_jitter_and_is_capped() -> None:
    for attempt in range(12):
        delays = [backoff_delay(attempt, 60.0) for _ in range(50)]
        ceiling = min(60.0, 2.0**attempt)
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len({backoff_delay(5, 60.0) for _ in range(20)}) > 1
    assert backoff_delay(10_000, 300.0) <= 300.0


def test_uid_set_compacts_ranges() -> None:
    assert uid_set([7, 1, 2, 3, 3, 9, 10]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"
    with pytest.raises(ValueError, match="positive"):
        uid_set([])


def test_mailbox_names_use_modified_utf7() -> None:
    assert encode_mailbox("Entwürfe") == '"Entw&APw-rfe"'
    assert encode_mailbox("A & B") == '"A &- B"'
    for name in ("Entwürfe", "A & B", "日本語", "Procesate/Ș"):
        assert decode_mailbox(encode_mailbox(name)[1:-1]) == name


async def _slow_link(mailbox: Mailbox, bytes_per_second: int) -> tuple[asyncio.Server, int]:
    """A loopback proxy to the plain IMAP port that passes the server's bytes on slowly."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slow: bool) -> None:
        try:
            while data := await reader.read(16384):
                writer.write(data)
                await writer.drain()
                if slow:
                    await asyncio.sleep(len(data) / bytes_per_second)
        except OSError:
            pass
        finally:
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = mailbox.server.host, mailbox.server.port
        up_reader, up_writer = await asyncio.open_connection(*upstream)
        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_large_message_on_a_slow_link_is_fetched_while_its_bytes_keep_coming(
    mailbox: Mailbox,
) -> None:
    """The timeout is for silence: a 2 MB message at 1 MB/s takes about 2 s, four times the
    0.5 s timeout, and must still arrive (a whole-command timeout stalled its folder)."""
    big = mail(1, b"x" * 76 + b"\r\n") + (b"y" * 76 + b"\r\n") * 26_000
    uid = mailbox.append(big)
    server, port = await _slow_link(mailbox, 1_000_000)
    imap = ImapClient(mailbox.settings(security="plain", port=port), timeout=0.5)
    progress: list[float] = []  # the worker beats its liveness here: still receiving
    imap.on_progress = lambda: progress.append(asyncio.get_running_loop().time())
    try:
        await asyncio.wait_for(imap.connect(), HANG)
        await asyncio.wait_for(imap.select("INBOX"), HANG)
        (fetched,) = await asyncio.wait_for(imap.fetch([uid]), HANG)
        assert fetched.data == big
        assert len(progress) >= 2
    finally:
        await asyncio.wait_for(imap.close(), HANG)
        server.close()
        await server.wait_closed()
