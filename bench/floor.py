"""The floor: what each unavoidable step of a drain costs alone, and the rate that allows.

    python bench/floor.py                      # 1,000 messages of the benchmark's mix
    python bench/floor.py --helpdesk-rate 42   # the 20x target from this django-helpdesk rate

A drain must, per message, fetch it over IMAPS, parse it, write its rows, and send one
acknowledgement over SMTP. Each step is run here alone, as cheaply as the libraries allow and
with nothing else of mailbridge around it:

- imap: mailbridge's IMAP adapter (aioimaplib with the adapter's reader) fetching the mix from
  the private Dovecot over TLS, 25 messages per UID FETCH, one connection;
- parse: mailbridge's parser over the fetched bytes (it beat mail-parser, `parse_bench.py`);
- files: mailbridge's blob store writing each decoded attachment (a file, fsynced, renamed);
- rows: SQLAlchemy Core `executemany` of three slim rows per message (raw, ticket, message:
  fewer columns and indexes than mailbridge's own) into SQLite, one transaction per 25;
- smtp: aiosmtplib sending a 2 KB acknowledgement per message over one connection to the
  aiosmtpd sink the benchmark uses.

Each step's cost is the CPU time of the *whole machine* over the step (`/proc/stat`, less the
idle machine's own rate measured first), so Dovecot's and the sink's work count as they do in
a real drain. The sum is a floor for any design built on these parts; with every core busy
and perfect overlap, the drain can go no faster than `cores / sum`. The last line compares
that ceiling with 20x the django-helpdesk rate (`--helpdesk-rate`, default: bench/results.json).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiosmtplib  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from bench.mailmix import mix  # noqa: E402
from bench.run import Sink, deliver, machine_busy_seconds  # noqa: E402
from mailbridge import logs  # noqa: E402
from mailbridge.adapters.blobs import BlobStore  # noqa: E402
from mailbridge.adapters.imap import ImapClient  # noqa: E402
from mailbridge.pipeline.parse import parse_message  # noqa: E402
from tests.servers.dovecot import DovecotServer, Mailbox  # noqa: E402

BATCH = 25
ACK = (
    b"From: support@bench.test\r\nTo: {to}\r\nSubject: [#{n}] We received your message\r\n"
    b"Message-ID: <ack{n}@bench.test>\r\nIn-Reply-To: <{mid}>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + b"Thank you, we received it.\r\n" * 70
)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Step:
    name: str
    messages: int
    wall: float
    machine_cpu: float  # less the idle machine's rate over the same time
    own_cpu: float  # this process alone (the client side of imap and smtp)

    @property
    def machine_ms(self) -> float:
        return 1000 * self.machine_cpu / self.messages

    @property
    def own_ms(self) -> float:
        return 1000 * self.own_cpu / self.messages


class Meter:
    """Times steps against the machine's idle rate, measured once at the start."""

    def __init__(self, idle_probe: float = 3.0) -> None:
        busy, wall = machine_busy_seconds(), time.perf_counter()
        time.sleep(idle_probe)
        self.idle_rate = (machine_busy_seconds() - busy) / (time.perf_counter() - wall)
        self.steps: list[Step] = []

    @contextmanager
    def step(self, name: str, messages: int) -> Iterator[None]:
        busy, own, wall = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
        yield
        wall = time.perf_counter() - wall
        machine = machine_busy_seconds() - busy - self.idle_rate * wall
        found = Step(name, messages, wall, max(machine, 0.0), own_cpu_seconds() - own)
        self.steps.append(found)
        print(
            f"{name:6} {messages} msgs in {wall:.2f}s: machine CPU {found.machine_ms:.2f} ms/msg "
            f"(this process {found.own_ms:.2f}), {messages / wall:.0f} msg/s alone",
            flush=True,
        )


async def fetch_all(mailbox: Mailbox, count: int) -> list[bytes]:
    client = ImapClient(mailbox.settings())
    await client.connect()
    try:
        await client.select("INBOX")
        uids = await client.search_unsettled("$MailbridgeFloor")
        if len(uids) != count:
            raise RuntimeError(f"INBOX holds {len(uids)} of {count} messages")
        raws: list[bytes] = []
        for start in range(0, len(uids), BATCH):
            raws += [mail.data for mail in await client.fetch(uids[start : start + BATCH])]
        return raws
    finally:
        await client.close()


def parse_all(raws: list[bytes]) -> list[bytes]:
    """Every message parsed; the attachments' decoded bytes."""
    return [part.data for raw in raws for part in parse_message(raw).attachments]


def store_all(root: Path, files: list[bytes]) -> None:
    store = BlobStore(root)
    for data in files:
        store.put(data)


ROWS = sa.MetaData()
RAW = sa.Table(
    "raw", ROWS,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("dedupe_key", sa.String(200), unique=True),
    sa.Column("sha256", sa.String(64)),
    sa.Column("raw", sa.LargeBinary),
)  # fmt: skip
TICKET = sa.Table(
    "ticket", ROWS,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("number", sa.String(20), unique=True),
    sa.Column("subject", sa.String(300)),
    sa.Column("customer", sa.String(300)),
)  # fmt: skip
MESSAGE = sa.Table(
    "message", ROWS,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("ticket_id", sa.Integer),
    sa.Column("raw_id", sa.Integer),
    sa.Column("body", sa.Text),
)  # fmt: skip


async def write_all(path: Path, raws: list[bytes]) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as conn:
        await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        await conn.run_sync(ROWS.create_all)
    for start in range(0, len(raws), BATCH):
        numbers = range(start, min(start + BATCH, len(raws)))
        async with engine.begin() as conn:
            await conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
            await conn.execute(
                RAW.insert(),
                [
                    {
                        "id": n + 1,
                        "dedupe_key": f"INBOX:1:{n}",
                        "sha256": hashlib.sha256(raws[n]).hexdigest(),
                        "raw": raws[n],
                    }
                    for n in numbers
                ],
            )
            await conn.execute(
                TICKET.insert(),
                [
                    {"id": n + 1, "number": f"T{n:06}", "subject": "s", "customer": f"c{n}"}
                    for n in numbers
                ],
            )
            await conn.execute(
                MESSAGE.insert(),
                [{"ticket_id": n + 1, "raw_id": n + 1, "body": "Hello " * 40} for n in numbers],
            )
    await engine.dispose()


async def send_all(port: int, count: int) -> None:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
    await smtp.connect()
    try:
        for n in range(count):
            to = f"c{n}@customer.test"
            data = ACK.replace(b"{to}", to.encode()).replace(b"{n}", str(n).encode())
            data = data.replace(b"{mid}", f"floor{n}@bench.test".encode())
            await smtp.sendmail("support@bench.test", [to], data)
    finally:
        await smtp.quit()


def run(meter: Meter, name: str, count: int, work: Callable[[], Any]) -> Any:
    with meter.step(name, count):
        return work()


def default_helpdesk_rate() -> float | None:
    try:
        figures = json.loads((REPO / "bench" / "results.json").read_text())
        return float(figures["helpdesk"]["rate"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--helpdesk-rate", type=float, default=default_helpdesk_rate())
    args = parser.parse_args()
    if args.messages < 1:
        parser.error("argument --messages: must be at least 1")

    logs.configure("warning", "json", stream=sys.stderr)
    server = DovecotServer()
    server.start()
    sink = Sink()
    sink.controller.start()
    try:
        mailbox = Mailbox(server, server.new_user())
        mails = mix(args.messages, to=mailbox.user, seed=args.seed, tag="floor-")
        deliver(server, mailbox.user, mails)
        meter = Meter()
        print(f"idle machine: {meter.idle_rate * 100:.1f} % of one core (subtracted)")
        count = len(mails)
        raws = run(meter, "imap", count, lambda: asyncio.run(fetch_all(mailbox, count)))
        files = run(meter, "parse", count, lambda: parse_all(raws))
        with tempfile.TemporaryDirectory(prefix="mbfloor-") as workdir:
            path = Path(workdir) / "floor.db"
            run(meter, "files", count, lambda: store_all(Path(workdir) / "blobs", files))
            run(meter, "rows", count, lambda: asyncio.run(write_all(path, raws)))
        run(meter, "smtp", count, lambda: asyncio.run(send_all(sink.port, count)))
        if sink.total() != count:
            raise RuntimeError(f"the sink accepted {sink.total()} of {count} acknowledgements")
    finally:
        sink.controller.stop()
        server.cleanup()

    cores = os.cpu_count() or 1
    total_ms = sum(step.machine_ms for step in meter.steps)
    ceiling = cores * 1000 / total_ms
    print(
        f"floor: {total_ms:.2f} ms of machine CPU per message; on {cores} cores, all busy "
        f"and perfectly overlapped, at most {ceiling:.0f} msg/s"
    )
    if args.helpdesk_rate:
        target = 20 * args.helpdesk_rate
        verdict = "within" if ceiling >= target else "beyond"
        print(
            f"20x django-helpdesk ({args.helpdesk_rate:.1f} msg/s) is {target:.0f} msg/s: "
            f"{verdict} this machine's floor ({ceiling / args.helpdesk_rate:.1f}x at most)"
        )


if __name__ == "__main__":
    main()
