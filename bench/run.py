"""mailbridge benchmark: throughput, IDLE latency, memory, and django-helpdesk side by side.

    python bench/run.py                          # 1,000 messages; SQLite and PostgreSQL
    python bench/run.py --messages 2000 --rss 2000,20000 --helpdesk 500
    python bench/run.py --profile 300            # + a pyinstrument profile of one drain

It starts a private Dovecot (tests/servers/dovecot.py) and an aiosmtpd sink, fills a fresh
Dovecot user with a generated mix (bench/mailmix.py), and runs the real daemon
(`python -m mailbridge -c CONF run`) as a subprocess until the sink has every
acknowledgement. Figures:

- drain: messages/s and MB/s from the daemon's first `mailbox_connected` to the last ack
  accepted by the sink, into SQLite and into PostgreSQL (127.0.0.1:5432, database created and
  dropped here; MAILBRIDGE_BENCH_PG overrides the admin URL);
- IDLE latency: APPEND of one message to the acknowledgement arriving at the sink, p50/p99;
  Dovecot's own APPEND-to-EXISTS delay is measured alone for comparison;
- peak RSS (VmHWM) of the daemon for each --rss backlog: it must not grow with the backlog;
- django-helpdesk 2.6.1 `manage.py get_email` on the same kind of mailbox (its own venv),
  for the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import imaplib
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiosmtpd.controller import Controller  # noqa: E402

from bench import helpdesk  # noqa: E402
from bench.mailmix import Mail, mix  # noqa: E402
from tests.integration.harness import write_config  # noqa: E402
from tests.servers.databases import pg_admin  # noqa: E402
from tests.servers.dovecot import MAIL_UID, DovecotServer  # noqa: E402

PG_ADMIN = os.environ.get("MAILBRIDGE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
_IN_REPLY_TO = re.compile(rb"^In-Reply-To:\s*<([^>\r\n]+)>", re.IGNORECASE | re.MULTILINE)


# --- the SMTP sink -------------------------------------------------------------------------------


class Sink:
    """aiosmtpd on 127.0.0.1 that only notes, per message answered, when its answer arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.count = 0
        self.lock = threading.Lock()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(
            self, hostname="127.0.0.1", port=self.port, server_hostname="sink.bench"
        )

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        data = envelope.original_content or b""
        head = data.split(b"\r\n\r\n", 1)[0]
        found = _IN_REPLY_TO.search(head)
        with self.lock:
            self.count += 1
            if found:
                self.arrivals.setdefault(found.group(1).decode(), now)
        return "250 2.0.0 OK"

    def answered(self, ids: set[str]) -> int:
        with self.lock:
            return sum(1 for mid in ids if mid in self.arrivals)

    def last(self, ids: set[str]) -> float:
        with self.lock:
            return max(self.arrivals[mid] for mid in ids)

    def total(self) -> int:
        with self.lock:
            return self.count


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent not idle since boot (`/proc/stat`)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# --- mailbox and database set-up -----------------------------------------------------------------


def deliver(server: DovecotServer, user: str, mails: list[Mail]) -> None:
    """Put the mail straight into the user's Maildir (as an LDA would) and let Dovecot index it."""
    server.uids(user)  # makes the Maildir
    new = server.homes / user / "Maildir" / "new"
    stamp = int(time.time())
    for number, mail in enumerate(mails):
        path = new / f"{stamp}.M{number}P{os.getpid()}.bench,S={len(mail.data)}"
        path.write_bytes(mail.data)
        os.chown(path, MAIL_UID, MAIL_UID)
    found = len(server.uids(user))
    if found != len(mails):
        raise RuntimeError(f"Dovecot shows {found} of {len(mails)} delivered messages")


@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Any:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / 'mailbridge.db'}"
        return
    name = f"mbbench_{uuid.uuid4().hex[:10]}"
    asyncio.run(pg_admin(f'CREATE DATABASE "{name}"', PG_ADMIN))
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', PG_ADMIN))


# --- the daemon ----------------------------------------------------------------------------------


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    log: Path
    config: Path

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict) and item.get("event") == name:
                    found.append(item)
        return found

    def first_time(self, name: str) -> float | None:
        items = self.events(name)
        if not items:
            return None
        return datetime.fromisoformat(items[0]["timestamp"].replace("Z", "+00:00")).timestamp()

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"VmHWM:\s+(\d+) kB", status)
        return int(found.group(1)) / 1024 if found else float("nan")

    def cpu_seconds(self) -> float:
        """User + system CPU the daemon has used so far (all its threads)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_daemon(
    server: DovecotServer, user: str, sink: Sink, url: str, workdir: Path, **imap: Any
) -> Daemon:
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(
        workdir / "mailbridge.toml",
        {
            "imap": {
                "host": server.host, "port": server.tls_port, "security": "tls",
                "ca_file": str(server.ca_file), "user": user,
                "password": server.passwords[user], **imap,
            },
            "smtp": {
                "host": "127.0.0.1", "port": sink.port, "security": "plain",
                "local_hostname": "mailbridge.bench",
            },
            "database": {"url": url},
            "storage": {"data_dir": str(workdir / "data")},
            "policy": {"cc_mode": "flag"},
            "ack": {"from_address": user},
            "log": {"level": "info", "format": "json"},
        },
    )  # fmt: skip
    python = sys.executable
    subprocess.run(
        [python, "-m", "mailbridge", "-c", str(config), "db", "upgrade"],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    log = workdir / "daemon.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [python, "-m", "mailbridge", "-c", str(config), "run"],
            cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Daemon(process, log, config)


def wait_for(condition: Any, timeout: float, what: str, daemon: Daemon | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if daemon is not None and daemon.process.poll() is not None:
            raise RuntimeError(f"the daemon exited while waiting for {what}: {daemon.log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- measurements --------------------------------------------------------------------------------


@dataclass
class Drain:
    label: str
    messages: int
    megabytes: float
    seconds: float
    peak_rss_mb: float
    largest_mb: float
    cpu_seconds: float  # the daemon's user + system CPU from its connection to the last ack
    machine_cpu_seconds: float = 0.0  # every process's, over the same span: Dovecot, sink, DB
    machine_span: float = 0.0  # wall seconds of that span
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_ms_per_message(self) -> float:
        return 1000 * self.cpu_seconds / self.messages

    @property
    def machine_ms_per_message(self) -> float:
        return 1000 * self.machine_cpu_seconds / self.messages

    @property
    def cores_busy(self) -> float:
        return self.machine_cpu_seconds / self.machine_span if self.machine_span else 0.0

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def mb_rate(self) -> float:
        return self.megabytes / self.seconds


def drain(server: DovecotServer, sink: Sink, kind: str, count: int, root: Path, seed: int) -> Drain:
    user = server.new_user()
    mails = mix(count, to=user, seed=seed, tag=f"{kind}-")
    deliver(server, user, mails)
    ids = {mail.message_id for mail in mails}
    workdir = root / f"drain-{kind}-{count}"
    with database(kind, workdir) as url:
        daemon = start_daemon(server, user, sink, url, workdir)
        try:
            wait_for(lambda: daemon.first_time("mailbox_connected"), 60, "a connection", daemon)
            cpu_at_start = daemon.cpu_seconds()  # after start-up: the drain's own CPU below
            busy_at_start, span = machine_busy_seconds(), time.perf_counter()
            wait_for(lambda: sink.answered(ids) == len(ids), 60 + count, "every ack", daemon)
            cpu = daemon.cpu_seconds() - cpu_at_start
            busy = machine_busy_seconds() - busy_at_start
            span = time.perf_counter() - span
            began = daemon.first_time("mailbox_connected")
            assert began is not None
            seconds = sink.last(ids) - began
            rss = daemon.peak_rss_mb()
        finally:
            daemon.stop()
    size = sum(len(mail.data) for mail in mails) / 1e6
    largest = max(len(mail.data) for mail in mails) / 1e6
    return Drain(f"{kind}", count, size, seconds, rss, largest, cpu, busy, span)


def idle_latency(server: DovecotServer, sink: Sink, root: Path, samples: int) -> list[float]:
    """APPEND one small message, wait for its ack at the sink; repeat."""
    user = server.new_user()
    workdir = root / "latency"
    with database("sqlite", workdir) as url:
        daemon = start_daemon(server, user, sink, url, workdir)
        try:
            wait_for(lambda: daemon.first_time("mailbox_connected"), 60, "a connection", daemon)
            time.sleep(1.0)  # into IDLE
            latencies = []
            with server.session(user) as connection:
                for number in range(samples):
                    message_id = f"lat{number}.{uuid.uuid4().hex[:8]}@customer.test"
                    data = (
                        f"From: Latency {number} <lat{number}@customer.test>\r\nTo: {user}\r\n"
                        f"Subject: latency probe {number}\r\nMessage-ID: <{message_id}>\r\n"
                        "Date: Tue, 04 Jun 2024 10:15:00 +0300\r\n\r\nHello, a probe.\r\n"
                    ).encode()
                    began = time.time()
                    connection.append("INBOX", None, None, data)
                    wait_for(lambda m=message_id: sink.answered({m}) == 1, 30, "an ack", daemon)
                    latencies.append(sink.last({message_id}) - began)
                    time.sleep(0.3)
        finally:
            daemon.stop()
    return latencies


def dovecot_notify_delay(server: DovecotServer, samples: int) -> list[float]:
    """Dovecot alone: APPEND on one connection until `* n EXISTS` arrives on an IDLE one."""
    user = server.new_user()
    delays = []
    watcher = imaplib.IMAP4(server.host, server.port, timeout=30)
    watcher.login(user, server.passwords[user])
    watcher.select("INBOX")
    with server.session(user) as appender:
        for number in range(samples):
            tag = watcher._new_tag().decode()
            watcher.send(f"{tag} IDLE\r\n".encode())
            assert watcher.readline().startswith(b"+")
            began = time.time()
            appender.append("INBOX", None, None, f"Subject: {number}\r\n\r\nx\r\n".encode())
            while b"EXISTS" not in watcher.readline():
                pass
            delays.append(time.time() - began)
            watcher.send(b"DONE\r\n")
            while not watcher.readline().startswith(tag.encode()):
                pass
    watcher.logout()
    return delays


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def run_helpdesk(server: DovecotServer, sink: Sink, count: int, root: Path, seed: int) -> Any:
    python = helpdesk.ensure_venv()
    user = server.new_user()
    workdir = root / "helpdesk"
    helpdesk.prepare(
        python, workdir, user=user, password=server.passwords[user],
        imap_port=server.port, smtp_port=sink.port,
    )  # fmt: skip
    deliver(server, user, mix(count, to=user, seed=seed, tag="hd-"))
    return helpdesk.drain(python, workdir, ca_file=server.ca_file, messages=count,
                          sink_count=sink.total)  # fmt: skip


def profile(server: DovecotServer, sink: Sink, count: int, root: Path, seed: int) -> Path:
    """`mailbridge run --once` under pyinstrument on a SQLite drain of `count` messages."""
    user = server.new_user()
    deliver(server, user, mix(count, to=user, seed=seed, tag="prof-"))
    workdir = root / "profile"
    with database("sqlite", workdir) as url:
        daemon = start_daemon(server, user, sink, url, workdir)
        daemon.stop()  # only wanted its config and schema; the profiled run drains
        session = workdir / "profile.pyisession"
        subprocess.run(
            [sys.executable, "-m", "pyinstrument", "-o", str(session), "-r", "session",
             "-m", "mailbridge", "-c", str(daemon.config), "run", "--once"],
            cwd=REPO, check=True, capture_output=True,
        )  # fmt: skip
        out = root / "profile.txt"
        flat = subprocess.run(
            [sys.executable, "-m", "pyinstrument", "--load", str(session), "-r", "text",
             "-p", "flat=true", "-p", "show_all=true"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        out.write_text(flat)
        print("\n".join(flat.splitlines()[:45]))
    return out


# --- main ----------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    def version(command: list[str]) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"

    memory = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return {
        "cpus": str(os.cpu_count()),
        "memory_gb": f"{int(memory) / 1024 / 1024:.1f}",
        "python": platform.python_version(),
        "dovecot": version(["dovecot", "--version"]),
        "postgresql": version(["psql", "--version"]),
        "kernel": platform.release(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000, help="drain size (default 1000)")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--rss", default="", help="backlogs for the memory run, e.g. 2000,20000")
    parser.add_argument("--helpdesk", type=int, default=300, help="0 skips django-helpdesk")
    parser.add_argument("--profile", type=int, default=0, help="messages for a pyinstrument run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    figures: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv)}
    print(json.dumps(figures["machine"]))
    root = Path(tempfile.mkdtemp(prefix="mbbench-"))
    server = DovecotServer()
    server.start()
    sink = Sink()
    sink.controller.start()
    try:
        for kind in filter(None, args.databases.split(",")):
            result = drain(server, sink, kind, args.messages, root, args.seed)
            figures[f"drain_{kind}"] = result.__dict__ | {
                "rate": result.rate,
                "mb_rate": result.mb_rate,
                "cpu_ms_per_message": result.cpu_ms_per_message,
                "machine_ms_per_message": result.machine_ms_per_message,
                "cores_busy": result.cores_busy,
            }
            print(f"drain {kind:10} {result.messages} msgs {result.megabytes:.0f} MB in "
                  f"{result.seconds:.1f}s: {result.rate:.0f} msg/s, {result.mb_rate:.1f} MB/s, "
                  f"daemon CPU {result.cpu_ms_per_message:.1f} ms/msg, machine CPU "
                  f"{result.machine_ms_per_message:.1f} ms/msg ({result.cores_busy:.2f} of "
                  f"{os.cpu_count()} cores busy), "
                  f"peak RSS {result.peak_rss_mb:.0f} MB", flush=True)  # fmt: skip
        if args.latency_samples:
            notify = dovecot_notify_delay(server, min(20, args.latency_samples))
            latencies = idle_latency(server, sink, root, args.latency_samples)
            figures["idle_latency"] = {
                "samples": len(latencies),
                "p50": percentile(latencies, 0.5),
                "p99": percentile(latencies, 0.99),
                "max": max(latencies),
                "dovecot_notify_p50": statistics.median(notify),
            }
            print(f"IDLE APPEND→ack: p50 {figures['idle_latency']['p50'] * 1000:.0f} ms, "
                  f"p99 {figures['idle_latency']['p99'] * 1000:.0f} ms "
                  f"(n={len(latencies)}); Dovecot APPEND→EXISTS alone: p50 "
                  f"{statistics.median(notify) * 1000:.0f} ms", flush=True)  # fmt: skip
        for backlog in [int(n) for n in args.rss.split(",") if n]:
            result = drain(server, sink, "sqlite", backlog, root, args.seed + backlog)
            limit = 3 * result.largest_mb + 120
            figures[f"rss_{backlog}"] = result.__dict__ | {"rate": result.rate, "limit_mb": limit}
            print(f"backlog {backlog}: peak RSS {result.peak_rss_mb:.0f} MB (largest message "
                  f"{result.largest_mb:.1f} MB, limit {limit:.0f} MB); {result.rate:.0f} msg/s",
                  flush=True)  # fmt: skip
        if args.helpdesk:
            run = run_helpdesk(server, sink, args.helpdesk, root, args.seed)
            figures["helpdesk"] = run.__dict__ | {
                "rate": run.rate,
                "cpu_ms_per_message": run.cpu_ms_per_message,
            }
            print(f"django-helpdesk {helpdesk.VERSION} get_email: {run.tickets}/{run.messages} "
                  f"tickets in {run.seconds:.1f}s = {run.rate:.1f} msg/s, {run.acks_seen} acks, "
                  f"CPU {run.cpu_ms_per_message:.1f} ms/msg (start-up included), "
                  f"peak RSS {run.peak_rss_mb:.0f} MB", flush=True)  # fmt: skip
            ours = [v["rate"] for k, v in figures.items() if k.startswith("drain_")]
            if ours and run.rate:
                figures["ratio_vs_helpdesk"] = min(ours) / run.rate
                ratio = f"{min(ours) / run.rate:.2f}x (slower drain), {max(ours) / run.rate:.2f}x"
                print(f"ratio mailbridge/django-helpdesk: {ratio} (faster drain)", flush=True)
        if args.profile:
            path = profile(server, sink, args.profile, root, args.seed + 7)
            print(f"profile: {path}", flush=True)
    finally:
        sink.controller.stop()
        server.cleanup()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
