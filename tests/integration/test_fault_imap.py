"""IMAP faults against the long-running daemon (`mailbridge run`, a subprocess): the connection
cut or stalled mid-FETCH and mid-IDLE by a TCP proxy between the daemon and Dovecot, Dovecot
restarted under it, and UIDVALIDITY changed. Each case ends with the full invariant set."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fault import fixtures
from tests.fault.harness import LONG, Injected, Rig, check_invariants, mixed_mail, wait_until
from tests.fault.proxy import FaultProxy
from tests.integration.harness import png
from tests.servers.dovecot import DovecotServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600 if LONG else 180)]

# The fault fixtures, bound here so pytest finds them (tests/fault/fixtures.py).
killing_sink = fixtures.killing_sink
rig = fixtures.rig

SCREENSHOT = png(200, 150)  # makes FETCH replies long enough to cut in the middle
SETTLE_TIMEOUT = 90.0


@pytest.fixture
def proxy(dovecot: DovecotServer) -> Iterator[FaultProxy]:
    server = FaultProxy(dovecot.host, dovecot.port).start()
    try:
        yield server
    finally:
        server.stop()


def handled(rig: Rig, mails: list[Injected]) -> bool:
    return len(rig.sink.messages) >= len(mails) and not rig.mailbox.uids("INBOX")


@pytest.mark.parametrize("action", ["cut", "stall"])
async def test_connection_cut_or_stalled_mid_fetch(rig: Rig, proxy: FaultProxy, action: str):  # type: ignore[no-untyped-def]
    rig.imap_port = proxy.port
    mails = mixed_mail(rig.mailbox, 4, tag=f"fetch-{action}-", png=SCREENSHOT)
    rig.mailbox.append_many([mail.data for mail in mails])
    proxy.arm("fetch", action, after_bytes=3000)  # mid-literal of the first message

    daemon = rig.start()
    try:
        wait_until(proxy.fired.is_set, 30, f"the {action} mid-FETCH")
        wait_until(lambda: handled(rig, mails), SETTLE_TIMEOUT, "every message handled")
    finally:
        code = daemon.terminate()

    assert code == 0, daemon.tail()
    assert daemon.saw("imap_connection_dropped") >= 1
    assert proxy.connections >= 2  # it reconnected
    await check_invariants(rig, mails)


@pytest.mark.parametrize("action", ["cut", "stall"])
async def test_connection_cut_or_stalled_mid_idle(rig: Rig, proxy: FaultProxy, action: str):  # type: ignore[no-untyped-def]
    rig.imap_port = proxy.port
    first = mixed_mail(rig.mailbox, 2, tag=f"idle-{action}-a")
    later = mixed_mail(rig.mailbox, 3, tag=f"idle-{action}-b")
    rig.mailbox.append_many([mail.data for mail in first])
    proxy.arm("idle", action)

    daemon = rig.start()
    try:
        wait_until(proxy.fired.is_set, 30, f"the {action} mid-IDLE")
        rig.mailbox.append_many([mail.data for mail in later])  # news the dead IDLE never sees
        wait_until(lambda: handled(rig, first + later), SETTLE_TIMEOUT, "every message handled")
    finally:
        code = daemon.terminate()

    assert code == 0, daemon.tail()
    assert daemon.saw("imap_connection_dropped") + daemon.saw("mailbox_retry") >= 1
    await check_invariants(rig, first + later)


async def test_dovecot_restarted_under_the_daemon(rig: Rig, dovecot: DovecotServer):  # type: ignore[no-untyped-def]
    rounds = 4 if LONG else 2
    waves = [mixed_mail(rig.mailbox, 4, tag=f"restart{n}-", png=SCREENSHOT) for n in range(rounds)]
    sent: list[Injected] = []

    daemon = rig.start()
    try:
        for number, wave in enumerate(waves, start=1):
            wait_until(lambda n=number: daemon.saw("mailbox_connected") >= n, 60, "a connection")
            rig.mailbox.append_many([mail.data for mail in wave])
            sent += wave
            done_before = len(rig.sink.seen) + len(rig.mailbox.uids("Processed"))
            wait_until(
                lambda d=done_before: len(rig.sink.seen) + len(rig.mailbox.uids("Processed")) > d,
                60,
                "the wave under way",
            )
            dovecot.restart()  # while the wave is being handled (or just after)
        wait_until(lambda: handled(rig, sent), SETTLE_TIMEOUT, "every message handled")
        wait_until(lambda: daemon.saw("mailbox_connected") > rounds, 60, "the last reconnection")
    finally:
        code = daemon.terminate()

    assert code == 0, daemon.tail()
    assert daemon.saw("mailbox_connected") >= rounds + 1  # it came back after each restart
    await check_invariants(rig, sent)


async def test_uidvalidity_change_with_the_same_mail_restored(rig: Rig) -> None:
    rig.imap = {"folders": ["Support"]}
    rig.mailbox.create_folder("Support")
    mails = mixed_mail(rig.mailbox, 4, tag="uidv-", png=SCREENSHOT)
    rig.mailbox.append_many([mail.data for mail in mails], folder="Support")
    before = rig.mailbox.uidvalidity("Support")
    assert rig.run_once().process.returncode == 0

    # The folder is deleted and recreated (a restore), the same mail appended again, plus news.
    rig.mailbox.delete_folder("Support")
    rig.mailbox.create_folder("Support")
    news = mixed_mail(rig.mailbox, 2, tag="uidv-new-")
    rig.mailbox.append_many([mail.data for mail in mails + news], folder="Support")
    assert rig.mailbox.uidvalidity("Support") != before
    second = rig.run_once()

    assert second.process.returncode == 0, second.tail()
    assert second.saw("uidvalidity_changed") == 1
    counts = await check_invariants(
        rig,
        mails + news,
        sources=("Support", "INBOX"),
        copies={mail.message_id: 2 for mail in mails},  # the original and the restored copy
    )
    assert counts["acks"] == len(mails) + len(news)
