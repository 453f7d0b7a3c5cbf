"""The outbox alone: CPU and wall time per acknowledgement sent to an SMTP sink.

    python bench/outbox_bench.py                 # 1,000 acks, SQLite
    python bench/outbox_bench.py --acks 5000

The sink (aiosmtpd's Sink handler) runs in its own process, so only the sending side's CPU
is counted: the SMTP exchange (aiosmtplib) and recording each result in the database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mailbridge import logs  # noqa: E402
from mailbridge.adapters.db.engine import make_engine, upgrade  # noqa: E402
from mailbridge.adapters.db.models import Outbox  # noqa: E402
from mailbridge.app import open_app  # noqa: E402
from mailbridge.delivery import OutboxWorker  # noqa: E402
from mailbridge.settings import Settings  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no SMTP sink on port {port}")


async def send_all(root: Path, port: int, count: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for one outbox pass over `count` pending acks."""
    url = f"sqlite+aiosqlite:///{root / 'mailbridge.db'}"
    engine = make_engine(url)
    await upgrade(engine, url)
    await engine.dispose()
    settings = Settings.model_validate(
        {
            "database": {"url": url},
            "storage": {"data_dir": str(root / "data")},
            "smtp": {"host": "127.0.0.1", "port": port, "security": "plain"},
            "ack": {"from_address": "support@bench.test"},
        }
    )
    body = b"Subject: ack\r\nFrom: support@bench.test\r\n\r\n" + b"Thank you.\r\n" * 150
    async with open_app(settings) as app:
        async with app.sessions.begin() as session:
            for n in range(count):
                session.add(
                    Outbox(
                        kind="ack",
                        message_id=f"<ack{n}@bench.test>",
                        mail_from="support@bench.test",
                        rcpt_to=f"c{n}@customer.test",
                        data=body,
                    )
                )
        worker = OutboxWorker(settings.smtp, app.sessions)
        try:
            cpu, wall = cpu_seconds(), time.perf_counter()
            report = await worker.drain()
            cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
        finally:
            await worker.close()
    if report.sent != count:
        raise RuntimeError(f"sent {report.sent} of {count}: {report}")
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acks", type=int, default=1000)
    args = parser.parse_args()
    logs.configure("info", "json", stream=open(os.devnull, "w"))  # noqa: SIM115
    port = free_port()
    sink = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
         "-c", "aiosmtpd.handlers.Sink"],
    )  # fmt: skip
    try:
        wait_for_port(port)
        with tempfile.TemporaryDirectory(prefix="mboutbox-") as root:
            cpu, wall = asyncio.run(send_all(Path(root), port, args.acks))
    finally:
        sink.terminate()
        sink.wait()
    print(
        f"{args.acks} acks: {1000 * cpu / args.acks:.2f} ms CPU and "
        f"{1000 * wall / args.acks:.2f} ms wall per ack ({args.acks / wall:.0f} acks/s)"
    )


if __name__ == "__main__":
    main()
