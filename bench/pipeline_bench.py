"""The pipeline alone, in process: CPU per message for batches into SQLite or PostgreSQL.

    python bench/pipeline_bench.py                       # 1,000 mixed messages into SQLite
    python bench/pipeline_bench.py --database postgresql --batch 10
    python bench/pipeline_bench.py --profile 25          # + cProfile's top functions

No IMAP or SMTP: the same generated mix as bench/run.py is handed to `process_batch` (what the
daemon's mailbox worker calls after each FETCH); acknowledgements are rendered and queued, not
sent. It isolates what the pipeline itself costs from the network peers and the machine's
load: the figure is CPU time of this process (all threads), not wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.mailmix import mix  # noqa: E402
from mailbridge import logs  # noqa: E402
from mailbridge.adapters.db.engine import make_engine, upgrade  # noqa: E402
from mailbridge.app import open_app  # noqa: E402
from mailbridge.pipeline.batch import process_batch  # noqa: E402
from mailbridge.records import Intake  # noqa: E402
from mailbridge.settings import Settings  # noqa: E402
from tests.servers.databases import pg_admin  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drain(url: str, data_dir: Path, mails: list[bytes], batch: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to process every message, batch by batch."""
    engine = make_engine(url)
    await upgrade(engine, url)
    await engine.dispose()
    settings = Settings.model_validate(
        {
            "database": {"url": url},
            "storage": {"data_dir": str(data_dir)},
            "policy": {"cc_mode": "flag"},
            "ack": {"from_address": "support@bench.test"},
        }
    )
    async with open_app(settings) as app:
        cpu, wall = cpu_seconds(), time.perf_counter()
        for start in range(0, len(mails), batch):
            intakes = [
                Intake(data, "imap", "bench@localhost/INBOX", 1, start + offset + 1)
                for offset, data in enumerate(mails[start : start + batch])
            ]
            await process_batch(app.processor, intakes)
        return cpu_seconds() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--profile", type=int, default=0, help="print the top N functions")
    args = parser.parse_args()
    # The daemon's own logging (a JSON line per message), into the void: its cost is counted.
    logs.configure("info", "json", stream=open(os.devnull, "w"))  # noqa: SIM115
    mails = [mail.data for mail in mix(args.messages, to="support@bench.test", seed=5)]
    megabytes = sum(map(len, mails)) / 1e6
    with tempfile.TemporaryDirectory(prefix="mbpipe-") as root:
        if args.database == "sqlite":
            url = f"sqlite+aiosqlite:///{root}/mailbridge.db"
        else:
            name = f"mbpipe_{uuid.uuid4().hex[:10]}"
            asyncio.run(pg_admin(f'CREATE DATABASE "{name}"', PG_ADMIN))
            url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        profiler = cProfile.Profile() if args.profile else None
        try:
            if profiler:
                profiler.enable()
            cpu, wall = asyncio.run(drain(url, Path(root) / "data", mails, args.batch))
            if profiler:
                profiler.disable()
        finally:
            if args.database == "postgresql":
                asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', PG_ADMIN))
    count = len(mails)
    print(
        f"{args.database}, batch {args.batch}: {count} messages ({megabytes:.0f} MB) in "
        f"{wall:.1f} s wall, {cpu:.1f} s CPU = {1000 * cpu / count:.2f} ms CPU/message "
        f"({count / cpu:.0f} msg/s per core)"
    )
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.profile)
        print(out.getvalue())


if __name__ == "__main__":
    main()
