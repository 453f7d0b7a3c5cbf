"""Run the real `mailbridge` command with SIGKILL armed at stage boundaries (tests only).

    python -m tests.fault.crashrun -c CONF run [--once]

Nothing in the product knows about this: the boundary functions are wrapped here, in the
daemon's own process, before `mailbridge.cli.main` runs. The environment says when to die:

- ``MB_CRASH_AT="stage:N[,stage:N...]"``: SIGKILL on the Nth call of that boundary;
- ``MB_CRASH_RANDOM="seed:probability"``: SIGKILL at any boundary with that probability
  (``MB_CRASH_STAGES="a,b"`` limits which boundaries);
- ``MB_CRASH_LOG=path``: one line ``stage N`` is appended just before each kill, so a test
  can tell where the process died;
- ``MB_ENOSPC_FLAG=path``: while that file exists, the attachment store's write fails with
  ENOSPC (the fallback when no small filesystem can be mounted).

Boundaries:

- ``fetched``: `ImapClient.fetch` returned the batch's bytes (nothing recorded yet);
- ``flushed``: the inbound row, ticket, message and outbox rows are flushed to the database
  inside the open transaction, not committed;
- ``committed``: a fetched batch's transaction committed (or a single message's, through
  `Processor.process`), IMAP not settled;
- ``moved``: `ImapClient.settle` returned (the UID MOVE is done on the server);
- ``sent``: the SMTP server accepted an acknowledgement, the outbox row is not yet marked
  (the one window where at-least-once delivery can repeat an ack; not armed by default).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import sys
from collections import Counter
from collections.abc import Callable
from functools import wraps
from typing import Any

STAGES = ("fetched", "flushed", "committed", "moved", "sent")
_calls: Counter[str] = Counter()


def _plan() -> tuple[dict[str, int], random.Random | None, float, set[str]]:
    fixed: dict[str, int] = {}
    for item in filter(None, os.environ.get("MB_CRASH_AT", "").split(",")):
        stage, _, number = item.partition(":")
        if stage not in STAGES:
            raise SystemExit(f"crashrun: unknown stage {stage!r}")
        fixed[stage] = int(number or 1)
    rng, probability = None, 0.0
    if spec := os.environ.get("MB_CRASH_RANDOM"):
        seed, _, chance = spec.partition(":")
        rng, probability = random.Random(int(seed)), float(chance)
    # "sent" only when asked for: a kill there repeats an ack by design (at-least-once).
    default = ",".join(s for s in STAGES if s != "sent")
    stages = set(filter(None, os.environ.get("MB_CRASH_STAGES", default).split(",")))
    return fixed, rng, probability, stages


FIXED, RNG, PROBABILITY, RANDOM_STAGES = _plan()


def boundary(stage: str) -> None:
    """Count one passage of `stage`; die here if the plan says so."""
    _calls[stage] += 1
    number = _calls[stage]
    due = FIXED.get(stage) == number
    if not due and RNG is not None and stage in RANDOM_STAGES:
        due = RNG.random() < PROBABILITY
    if due:
        if path := os.environ.get("MB_CRASH_LOG"):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.write(fd, f"{stage} {number}\n".encode())
            os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def _after(stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(function)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = await function(*args, **kwargs)
        boundary(stage)
        return result

    return wrapper


def install() -> None:
    from mailbridge.adapters import blobs
    from mailbridge.adapters.imap import ImapClient
    from mailbridge.adapters.smtp import SendStatus, SmtpSender
    from mailbridge.pipeline import batch
    from mailbridge.pipeline.persist import TicketWriter
    from mailbridge.pipeline.process import Processor

    ImapClient.fetch = _after("fetched", ImapClient.fetch)  # type: ignore[method-assign]
    ImapClient.settle = _after("moved", ImapClient.settle)  # type: ignore[method-assign]
    # A commit: each batch's (the daemon's path) and each single message's (ingest, and a
    # batch that failed and is run again one message at a time).
    Processor.process = _after("committed", Processor.process)  # type: ignore[method-assign]
    batch._in_one_transaction = _after("committed", batch._in_one_transaction)

    write = TicketWriter.write

    @wraps(write)
    async def write_then_flush(self: Any, session: Any, *args: Any, **kwargs: Any) -> Any:
        result = await write(self, session, *args, **kwargs)
        await session.flush()  # every row is on the database's side, uncommitted
        boundary("flushed")
        return result

    TicketWriter.write = write_then_flush  # type: ignore[method-assign]

    send = SmtpSender.send

    @wraps(send)
    async def send_then_mark(self: Any, mail: Any) -> Any:
        result = await send(self, mail)
        if result.status is SendStatus.SENT:
            boundary("sent")
        return result

    SmtpSender.send = send_then_mark  # type: ignore[method-assign]

    if flag := os.environ.get("MB_ENOSPC_FLAG"):
        real_fsync = blobs.os.fsync

        def fsync(fd: int) -> None:
            if os.path.exists(flag):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        blobs.os.fsync = fsync  # type: ignore[assignment]


def main() -> None:
    install()
    from mailbridge.cli import main as cli_main

    sys.argv[0] = "mailbridge"
    cli_main()


if __name__ == "__main__":
    main()
