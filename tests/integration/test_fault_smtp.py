"""SMTP faults while the daemon sends acknowledgements: the server down, answering 421/451,
answering 550, or dropping the connection after the final dot. Tickets are all there; each ack
is accepted at most once, by its Message-ID.

The daemon runs in-process here (`Daemon.run_once`, what `mailbridge run --once` calls): these
faults need no process death, and a subprocess costs ~2.5 s of start-up per run."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.fault import fixtures
from tests.fault.harness import LONG, Rig, check_invariants, mixed_mail, norm, read_db
from tests.integration.harness import run_once

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600 if LONG else 180)]

# The fault fixtures, bound here so pytest finds them (tests/fault/fixtures.py).
killing_sink = fixtures.killing_sink
rig = fixtures.rig


async def run_until_sent(rig: Rig, runs: int = 10) -> int:
    """`run --once` until no acknowledgement is left pending; returns how many runs it took."""
    for number in range(1, runs + 1):
        _handled, pending = await run_once(rig.settings())
        if pending == 0:
            return number
    raise AssertionError(f"acknowledgements still queued after {runs} runs")


def data_count(rig: Rig) -> Counter[str]:
    """How often each ack's final dot reached the server (accepted or not)."""
    return Counter(norm(mail.message["Message-ID"]) for mail in rig.sink.seen)


async def test_smtp_down_then_back_sends_every_ack_once(rig: Rig) -> None:
    mails = mixed_mail(rig.mailbox, 4, tag="down-")
    rig.mailbox.append_many([mail.data for mail in mails])
    rig.sink.stop()

    assert await run_once(rig.settings()) == (4, 4)  # 4 handled, 4 answers still queued

    state = await read_db(rig.settings())
    assert len(state.tickets) == 3
    assert {row.state for row in state.outbox} == {"pending"}
    assert all(row.last_error for row in state.outbox)

    rig.sink.start()
    await run_until_sent(rig)

    counts = await check_invariants(rig, mails)
    assert counts["acks"] == len(mails)


@pytest.mark.parametrize(
    ("code", "text", "stage"),
    [(421, "4.3.2 service shutting down", "mail"), (451, "4.3.0 try again later", "data")],
)
async def test_smtp_temporary_failures_are_retried_until_sent_once(
    rig: Rig, code: int, text: str, stage: str
) -> None:
    mails = mixed_mail(rig.mailbox, 4, tag=f"t{code}-")
    rig.mailbox.append_many([mail.data for mail in mails])
    rig.sink.reply(code, text, stage=stage, times=6)  # the first six attempts fail

    await run_until_sent(rig)

    counts = await check_invariants(rig, mails)
    assert counts["acks"] == len(mails)
    assert {row[0] for row in counts["outbox"]} == {"sent"}
    assert max(row[1] for row in counts["outbox"]) >= 2  # some were retried


async def test_smtp_550_fails_the_row_with_the_reply_and_never_resends(rig: Rig) -> None:
    mails = mixed_mail(rig.mailbox, 4, tag="p550-")
    rig.mailbox.append_many([mail.data for mail in mails])
    rig.sink.reply(550, "5.1.1 mailbox unavailable", stage="data")

    for _ in range(3):  # later runs must not try again
        await run_once(rig.settings())

    counts = await check_invariants(rig, mails, acks="at_most_one")
    assert counts["acks"] == 0
    for state, attempts, uncertain, error in counts["outbox"]:
        assert (state, attempts, uncertain) == ("failed", 1, False)
        assert "550" in error
        assert "mailbox unavailable" in error
    assert set(data_count(rig).values()) == {1}


async def test_drop_after_the_final_dot_is_retried_once(rig: Rig) -> None:
    mails = mixed_mail(rig.mailbox, 4, tag="drop1-")
    rig.mailbox.append_many([mail.data for mail in mails])
    rig.sink.drop_after_data(times=1)  # the first ack's dot arrives, the reply never does

    await run_until_sent(rig)

    counts = await check_invariants(rig, mails)
    assert counts["acks"] == len(mails)
    assert sorted(data_count(rig).values()) == [1, 1, 1, 2]  # one resent, with its Message-ID
    assert sum(1 for row in counts["outbox"] if row[2]) == 1  # and marked uncertain


async def test_drop_after_the_final_dot_every_time_stops_after_one_retry(rig: Rig) -> None:
    mails = mixed_mail(rig.mailbox, 4, tag="dropall-")
    rig.mailbox.append_many([mail.data for mail in mails])
    rig.sink.drop_after_data()  # the server always takes the dot and hangs up

    for _ in range(4):
        await run_once(rig.settings())

    counts = await check_invariants(rig, mails, acks="at_most_one")
    assert counts["acks"] == 0
    assert set(data_count(rig).values()) == {2}  # sent, retried once, never more
    for state, attempts, uncertain, _error in counts["outbox"]:
        assert (state, attempts, uncertain) == ("failed", 2, True)
