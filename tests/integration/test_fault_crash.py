"""SIGKILL at every stage boundary of the real daemon (a subprocess): nothing lost or doubled.

The daemon runs as `python -m tests.fault.crashrun -c CONF run --once`: the real CLI with the
boundary functions wrapped to SIGKILL their own process on the Nth call (tests/fault/crashrun.py;
no test hook in the product). "During SMTP DATA" is done by the SMTP sink, which SIGKILLs the
daemon when an acknowledgement's final dot arrives and never answers it. Each case then runs
the daemon again without faults and checks the invariants of tests/fault/harness.py.
"""

from __future__ import annotations

import os
import random
import signal

import pytest

from tests.fault import fixtures
from tests.fault.harness import (
    LONG,
    Rig,
    check_invariants,
    check_moved_means_committed,
    mixed_mail,
)
from tests.integration.harness import png

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600 if LONG else 240)]

# The fault fixtures, bound here so pytest finds them (tests/fault/fixtures.py).
killing_sink = fixtures.killing_sink
rig = fixtures.rig

SCREENSHOT = png(160, 120)
KILLED = -signal.SIGKILL


@pytest.mark.parametrize(
    ("stage", "nth"),
    [("fetched", 1), ("fetched", 2), ("flushed", 2), ("committed", 1), ("committed", 2),
     ("moved", 1), ("moved", 2)],
)  # fmt: skip
async def test_sigkill_at_a_stage_boundary_loses_and_doubles_nothing(
    rig: Rig, stage: str, nth: int
) -> None:
    mails = mixed_mail(rig.mailbox, 4, tag=f"{stage}{nth}-", png=SCREENSHOT)
    rig.mailbox.append_many([mail.data for mail in mails])
    crash_log = rig.workdir / "crash.log"

    first = rig.run_once(crash={"MB_CRASH_AT": f"{stage}:{nth}", "MB_CRASH_LOG": str(crash_log)})

    assert first.process.returncode == KILLED, first.tail()
    assert crash_log.read_text().split() == [stage, str(nth)]
    await check_moved_means_committed(rig)
    assert rig.sink.messages == []  # run --once sends only after draining the mailbox

    second = rig.run_once()

    assert second.process.returncode == 0, second.tail()
    counts = await check_invariants(rig, mails)
    assert counts["acks"] == len(mails)


@pytest.mark.parametrize("nth", [1, 3])
async def test_sigkill_during_smtp_data_sends_each_ack_once(rig: Rig, nth: int) -> None:
    mails = mixed_mail(rig.mailbox, 4, tag=f"data{nth}-")
    rig.mailbox.append_many([mail.data for mail in mails])

    first = rig.start(once=True)
    rig.sink.kill_on_data(first.pid, nth)
    first.wait()

    assert first.process.returncode == KILLED, first.tail()
    assert rig.sink.killed.is_set()
    assert len(rig.sink.messages) == nth - 1

    second = rig.run_once()

    assert second.process.returncode == 0, second.tail()
    counts = await check_invariants(rig, mails)
    assert counts["acks"] == len(mails)
    assert counts["seen_by_sink"] == len(mails) + 1  # the one cut mid-reply, sent again


async def test_sigkill_at_random_boundaries_under_load(rig: Rig) -> None:
    """Many kills, at random boundaries and during SMTP DATA, while mail keeps arriving."""
    seed = int(os.environ.get("MAILBRIDGE_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    count, chance, max_runs = (120, 0.06, 400) if LONG else (10, 0.12, 60)
    mails = mixed_mail(rig.mailbox, count, tag="rnd-", png=SCREENSHOT)
    waves = [mails[: count // 2], mails[count // 2 :]]
    rig.mailbox.append_many([mail.data for mail in waves.pop(0)])
    kills = runs = 0
    while True:
        runs += 1
        assert runs <= max_runs, f"seed {seed}: not done after {max_runs} runs"
        crash = {"MB_CRASH_RANDOM": f"{rng.randrange(1 << 30)}:{chance}"}
        if runs == 1:  # at least one kill, whatever the dice say
            crash["MB_CRASH_AT"] = f"{rng.choice(['fetched', 'flushed', 'committed', 'moved'])}:1"
        daemon = rig.start(crash=crash, once=True)
        if rng.random() < 0.3:
            rig.sink.kill_on_data(daemon.pid, rng.randint(1, 3))
        code = daemon.wait()
        rig.sink.disarm()
        assert code in (0, KILLED), f"seed {seed}: exit {code}\n{daemon.tail()}"
        if code == KILLED:
            kills += 1
            await check_moved_means_committed(rig)
        if waves and runs >= 2:
            rig.mailbox.append_many([mail.data for mail in waves.pop(0)])  # more mail arrives
        elif code == 0 and not waves and not rig.mailbox.uids("INBOX"):
            break

    counts = await check_invariants(rig, mails)
    print(f"seed {seed}: {kills} kills in {runs} runs, {len(mails)} messages")  # with -s
    assert kills >= 1, f"seed {seed}: the run was never killed"
    assert counts["acks"] == len(mails)
