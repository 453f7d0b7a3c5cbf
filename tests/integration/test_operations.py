"""Operating the daemon: systemd notify and watchdog, /metrics /healthz /readyz, `mailbridge
health`, signals (TERM, HUP), the shutdown bound, and several accounts in one process.

Everything runs against the real servers: Dovecot (IMAP), the aiosmtpd sink, SQLite (and
PostgreSQL where a test takes `database_url`). One test runs the real `mailbridge run` as a
subprocess with a real datagram socket as $NOTIFY_SOCKET, as systemd would start it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from mailbridge.adapters.db.models import Outbox
from mailbridge.adapters.smtp import SmtpSender
from mailbridge.adapters.systemd import Notifier
from mailbridge.app import open_app, upgrade_schema
from mailbridge.cli import main
from mailbridge.daemon import ServiceOutbox
from mailbridge.delivery import outbox_stats
from mailbridge.records import OutgoingMail, ParsedMail
from mailbridge.settings import (
    AckSettings,
    DaemonSettings,
    DatabaseSettings,
    HttpSettings,
    Settings,
    StorageSettings,
)
from tests.integration.harness import make_mail, read_db, write_config
from tests.servers.dovecot import DovecotServer, Mailbox
from tests.servers.smtp import SmtpSink

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# --- helpers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def aget(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(http_get, url)


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None when absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        sample, _, label_text = series.partition("{")
        if sample != name:
            continue
        found = ",".join(sorted(re.findall(r'\w+="[^"]*"', label_text)))
        if found == wanted:
            return float(value)
    return None


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


async def await_until(condition: Callable[[], Any], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket; records what arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def lines(self) -> list[str]:
        return [line for message in self.poll() for line in message.splitlines()]

    def count(self, line: str) -> int:
        return self.lines().count(line)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.close()


def quick_imap(mailbox: Mailbox, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "idle_renew_seconds": 5.0,
        "poll_seconds": 1.0,
        "timeout_seconds": 5.0,
        "backoff_max_seconds": 1.0,
    }
    values.update(overrides)
    return mailbox.settings(**values)


def quick_smtp(sink: SmtpSink) -> Any:
    return sink.settings(backoff_base_seconds=0.05, backoff_max_seconds=0.2, poll_seconds=0.2)


async def sqlite_settings(tmp_path: Path, **groups: Any) -> Settings:
    settings = Settings(
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'mb.db'}"),
        storage=StorageSettings(data_dir=tmp_path / "data"),
        **groups,
    )
    await upgrade_schema(settings)
    return settings


# --- the real daemon, as systemd runs it -------------------------------------------------------


def test_daemon_under_systemd_notify_serves_health_and_stops_on_sigterm(
    mailbox: Mailbox, smtp_sink: SmtpSink, notify: NotifySocket, tmp_path: Path
) -> None:
    server = mailbox.server
    port = free_port()
    log_file = tmp_path / "mailbridge.log"
    config = write_config(
        tmp_path / "mailbridge.toml",
        {
            "imap": {
                "host": server.host,
                "port": server.port,
                "security": "plain",
                "user": mailbox.user,
                "password": mailbox.password,
                "idle_renew_seconds": 5.0,
                "poll_seconds": 1.0,
                "timeout_seconds": 5.0,
            },
            "smtp": {
                "host": smtp_sink.host,
                "port": smtp_sink.port,
                "security": "plain",
                "local_hostname": "mailbridge.test",
                "timeout_seconds": 5.0,
                "poll_seconds": 0.3,
            },
            # A database that does not exist yet: upgrade_on_start makes it.
            "database": {
                "url": f"sqlite+aiosqlite:///{tmp_path / 'new.db'}",
                "upgrade_on_start": True,
            },
            "storage": {"data_dir": tmp_path / "data"},
            "ack": {"from_address": mailbox.user},
            "log": {"level": "info", "format": "json", "file": log_file},
            "daemon": {"shutdown_timeout_seconds": 10.0, "stall_seconds": 30.0},
            "http": {"enabled": True, "port": port},
        },
    )
    mailbox.append(make_mail(to=mailbox.user, message_id="<ops1@customer.test>"))
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    env.pop("MAILBRIDGE_CONFIG", None)
    stderr = (tmp_path / "stderr.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mailbridge", "-c", str(config), "run"],
        cwd=REPO,
        env=env,
        stdout=stderr,
        stderr=stderr,
    )
    stderr.close()

    def alive(what: str) -> Callable[[], bool]:
        def check() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"daemon exited {process.returncode} waiting for {what}: {tail()}"
                )
            return False

        return check

    def tail() -> str:
        logs = [
            p.read_text(errors="replace") for p in (log_file, tmp_path / "stderr.log") if p.exists()
        ]
        return "\n".join("\n".join(text.splitlines()[-30:]) for text in logs)

    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: alive("READY")() or "READY=1" in notify.lines(), 60, "READY=1")
        wait_until(
            lambda: (
                metric(
                    http_get(f"{base}/metrics")[1],
                    "mailbridge_acks_total",
                    result="sent",
                )
                == 1.0
            ),
            60,
            "the acknowledgement to be sent",
        )
        status, text = http_get(f"{base}/metrics")
        assert status == 200
        key = f"{mailbox.user}@{server.host}/INBOX"
        assert (
            metric(
                text, "mailbridge_messages_processed_total", mailbox=key, outcome="ticket_created"
            )
            == 1.0
        )
        assert metric(text, "mailbridge_messages_fetched_total", mailbox=key) == 1.0
        assert metric(text, "mailbridge_imap_connected", mailbox=key) == 1.0
        assert metric(text, "mailbridge_processing_seconds_count", mailbox=key) == 1.0
        assert metric(text, "mailbridge_outbox_pending") == 0.0
        assert metric(text, "mailbridge_loop_alive", loop="outbox") == 1.0
        since = metric(text, "mailbridge_imap_seconds_since_last_poll", mailbox=key)
        assert since is not None
        assert since < 30

        status, body = http_get(f"{base}/healthz")
        assert status == 200, body
        assert json.loads(body)["status"] == "ok"
        status, body = http_get(f"{base}/readyz")
        assert status == 200, body
        assert {c["name"] for c in json.loads(body)["checks"]} == {"database", f"imap:{key}"}
        assert http_get(f"{base}/nothing")[0] == 404

        health = subprocess.run(
            [sys.executable, "-m", "mailbridge", "-c", str(config), "health"],
            cwd=REPO,
            env={k: v for k, v in env.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert health.returncode == 0, health.stdout + health.stderr
        assert f"ok   mailbox:{key}: last poll" in health.stdout
        assert "ok   loop:outbox: making progress" in health.stdout

        wait_until(lambda: alive("WATCHDOG")() or notify.count("WATCHDOG=1") >= 2, 30, "pings")

        # SIGHUP after logrotate moved the file: a new file, templates reloaded.
        log_file.rename(tmp_path / "mailbridge.log.1")
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: alive("reload")() or log_file.exists(), 30, "the log file reopened")
        wait_until(lambda: "templates_reloaded" in log_file.read_text(), 30, "templates reloaded")
        assert "RELOADING=1" in notify.lines()

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, tail()
        assert time.monotonic() - started < 10 + 5  # the shutdown bound, and some slack
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    lines = notify.lines()
    ready, stopping = lines.index("READY=1"), lines.index("STOPPING=1")
    pings = [i for i, line in enumerate(lines) if line == "WATCHDOG=1"]
    assert ready < pings[0], lines
    assert pings[-1] < stopping, lines
    assert lines[ready + 1].startswith("STATUS=1/1 mailboxes connected")
    events = [json.loads(line)["event"] for line in log_file.read_text().splitlines()]
    assert events[-1] == "daemon_stopped"
    assert mailbox.uids("INBOX") == []
    assert len(mailbox.uids("Processed")) == 1
    assert len(smtp_sink.messages) == 1


# --- several accounts: one broken never stalls the others --------------------------------------


async def test_a_broken_account_shows_in_health_while_the_good_one_makes_tickets(
    dovecot: DovecotServer,
    mailbox: Mailbox,
    smtp_sink: SmtpSink,
    database_url: str,
    tmp_path: Path,
) -> None:
    office = Mailbox(dovecot, dovecot.new_user())
    settings = Settings(
        imap=quick_imap(mailbox),
        accounts={"office": quick_imap(office, password="not-the-password")},
        smtp=quick_smtp(smtp_sink),
        database=DatabaseSettings(url=database_url),
        storage=StorageSettings(data_dir=tmp_path / "data"),
        ack=AckSettings(from_address=mailbox.user),
        http=HttpSettings(enabled=True, port=0),
    )
    mailbox.append(make_mail(to=mailbox.user, message_id="<good@customer.test>"))
    office.append(make_mail(to=office.user, message_id="<waiting@customer.test>"))
    good = f"{mailbox.user}@{dovecot.host}/INBOX"
    bad = f"{office.user}@{dovecot.host}/INBOX"

    async with open_app(settings) as app:
        daemon = app.daemon()
        assert [w.account for w in daemon.workers] == ["default", "office"]
        async with app.serving(daemon) as server:
            assert server is not None
            base = f"http://127.0.0.1:{server.port}"
            task = asyncio.create_task(daemon.run())
            try:
                await asyncio.wait_for(daemon.ready.wait(), 30)
                await await_until(lambda: smtp_sink.messages, 30, "the good account's ack")
                await await_until(
                    lambda: daemon.workers[1].status.failures >= 2, 30, "a second failed login"
                )
                status, body = await aget(f"{base}/healthz")
                assert status == 503
                report = json.loads(body)
                assert report["failed"] == [f"mailbox:{bad}"]
                (detail,) = [c["detail"] for c in report["checks"] if c["name"] == f"mailbox:{bad}"]
                assert "refused" in detail
                assert "no successful poll yet" in detail

                status, body = await aget(f"{base}/readyz")
                assert status == 503
                assert json.loads(body)["failed"] == [f"imap:{bad}"]

                _, text = await aget(f"{base}/metrics")
                assert metric(text, "mailbridge_imap_connected", mailbox=good) == 1.0
                assert metric(text, "mailbridge_imap_connected", mailbox=bad) == 0.0
                assert (
                    metric(text, "mailbridge_imap_connection_errors_total", mailbox=bad) or 0
                ) >= 2
                assert metric(
                    text, "mailbridge_imap_seconds_since_last_poll", mailbox=bad
                ) == float("inf")
                assert "failing: " + bad in daemon.status_line()
            finally:
                daemon.stop.set()
                await asyncio.wait_for(task, 30)

    state = await read_db(settings)
    assert [t.requester_email for t in state.tickets] == ["ana@customer.test"]
    assert len(office.uids("INBOX")) == 1  # untouched, waiting for a working password


# --- liveness: a stuck loop stops the watchdog ------------------------------------------------


async def test_a_stuck_loop_stops_watchdog_pings_and_fails_healthz(
    mailbox: Mailbox,
    smtp_sink: SmtpSink,
    notify: NotifySocket,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.2 s while all is well
    monkeypatch.setattr("mailbridge.daemon.SUPERVISE_TICK_SECONDS", 0.1)
    settings = await sqlite_settings(
        tmp_path,
        imap=quick_imap(mailbox),
        smtp=quick_smtp(smtp_sink),
        ack=AckSettings(from_address=mailbox.user),
        daemon=DaemonSettings(stall_seconds=1.0, shutdown_timeout_seconds=1.0),
        http=HttpSettings(enabled=True, port=0),
    )
    async with open_app(settings) as app:
        never = asyncio.Event()

        async def hang(data: bytes) -> ParsedMail:
            await never.wait()  # a database lock that never comes, a parser in a loop...
            raise AssertionError("unreachable")

        monkeypatch.setattr(app.processor, "parse", hang)
        daemon = app.daemon(notifier=Notifier.from_environ())
        key = daemon.workers[0].key
        async with app.serving(daemon) as server:
            assert server is not None
            task = asyncio.create_task(daemon.run())
            try:
                await await_until(lambda: notify.count("WATCHDOG=1") >= 2, 30, "watchdog pings")
                mailbox.append(make_mail(to=mailbox.user))
                url = f"http://127.0.0.1:{server.port}/healthz"

                async def stuck() -> bool:
                    status, body = await aget(url)
                    return status == 503 and f"loop:{key}" in json.loads(body)["failed"]

                await await_until(stuck, 30, "healthz to name the stuck loop")
                await asyncio.sleep(0.3)  # a ping already on its way may still arrive
                pings = notify.count("WATCHDOG=1")
                await asyncio.sleep(1.5)
                assert notify.count("WATCHDOG=1") == pings  # no pings while stuck
                assert f"STUCK: {key}" in daemon.status_line()
            finally:
                started = time.monotonic()
                daemon.stop.set()
                await asyncio.wait_for(task, 30)
            # The stuck message is cancelled after shutdown_timeout_seconds, not waited for.
            assert time.monotonic() - started < 8
    assert "STOPPING=1" in notify.lines()
    assert len(mailbox.uids("INBOX")) == 1  # nothing committed, so nothing moved
    assert (await read_db(settings)).tickets == []


# --- graceful stop -----------------------------------------------------------------------------


async def test_sigterm_finishes_the_message_in_hand_and_leaves_the_rest(
    mailbox: Mailbox, smtp_sink: SmtpSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = await sqlite_settings(
        tmp_path,
        imap=quick_imap(mailbox),
        smtp=quick_smtp(smtp_sink),
        ack=AckSettings(from_address=mailbox.user),
    )
    mailbox.append_many(
        make_mail(to=mailbox.user, sender=f"c{n} <c{n}@customer.test>") for n in range(3)
    )
    async with open_app(settings) as app:
        original = app.processor.parse
        calls = 0

        async def slow(data: bytes) -> ParsedMail:
            nonlocal calls
            calls += 1
            if calls == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives while this message is in hand
                await asyncio.sleep(0.3)
            return await original(data)

        monkeypatch.setattr(app.processor, "parse", slow)
        daemon = app.daemon()
        daemon.install_signal_handlers()
        await asyncio.wait_for(daemon.run(), 30)
    assert calls == 1
    state = await read_db(settings)
    assert len(state.tickets) == 1
    assert len(mailbox.uids("Processed")) == 1  # committed, then settled before stopping
    assert len(mailbox.uids("INBOX")) == 2  # not started: left for the next run

    async with open_app(settings) as app:
        await app.daemon().run_once()
    assert len((await read_db(settings)).tickets) == 3


async def test_stop_lets_the_send_in_flight_finish_and_keeps_the_rest_pending(
    smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    settings = await sqlite_settings(tmp_path, smtp=quick_smtp(smtp_sink))
    started = asyncio.Event()

    class SlowSender(SmtpSender):
        async def send(self, mail: OutgoingMail) -> Any:
            started.set()
            await asyncio.sleep(0.5)
            return await super().send(mail)

    async with open_app(settings) as app:
        async with app.sessions.begin() as session:
            for n in range(3):
                session.add(
                    Outbox(
                        kind="ack",
                        message_id=f"<ack{n}@mailbridge.test>",
                        mail_from="support@example.test",
                        rcpt_to=f"c{n}@customer.test",
                        data=f"Subject: ack {n}\r\n\r\nhello\r\n".encode(),
                    )
                )
        pending, oldest = await outbox_stats(app.sessions)
        assert pending == 3
        assert oldest is not None
        assert 0 <= oldest < 60
        outbox = ServiceOutbox(
            settings.smtp, app.sessions, metrics=app.metrics, sender=SlowSender(settings.smtp)
        )
        stop = asyncio.Event()
        task = asyncio.create_task(outbox.run(stop))
        await asyncio.wait_for(started.wait(), 10)
        stop.set()
        await asyncio.wait_for(task, 10)
        await outbox.close()
        async with app.sessions() as session:
            states = list((await session.scalars(select(Outbox.state).order_by(Outbox.id))).all())
        assert states == ["sent", "pending", "pending"]
        assert len(smtp_sink.messages) == 1
        assert metric(app.metrics.render().decode(), "mailbridge_acks_total", result="sent") == 1.0


# --- `mailbridge health` without an endpoint ---------------------------------------------------


async def test_health_command_checks_database_and_logins_directly(
    mailbox: Mailbox, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    settings = await sqlite_settings(tmp_path, imap=quick_imap(mailbox))

    def config(password: str, **http: Any) -> str:
        imap = settings.imap
        return str(
            write_config(
                tmp_path / "health.toml",
                {
                    "imap": {
                        "host": imap.host,
                        "port": imap.port,
                        "ca_file": imap.ca_file,
                        "user": imap.user,
                        "password": password,
                        "timeout_seconds": 5.0,
                    },
                    "database": {"url": settings.database.url},
                    "storage": {"data_dir": settings.storage.data_dir},
                    "http": http,
                },
            )
        )

    runner = CliRunner()

    def health(path: str, *args: str) -> Any:
        return await_cli(runner, ["-c", path, "health", *args])

    result = await health(config(mailbox.password))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "ok   database: reachable, schema current"
    assert lines[1] == f"ok   imap:default:{mailbox.user}@{mailbox.server.host}: login ok"

    result = await health(config("wrong"))
    assert result.exit_code == 1
    assert "FAIL imap:default:" in result.stdout
    assert "refused" in result.stdout

    # With [http] enabled it asks the daemon; none runs here, and it says so.
    result = await health(config(mailbox.password, enabled=True, port=free_port()))
    assert result.exit_code == 1
    assert result.stdout.startswith("FAIL http: cannot reach http://127.0.0.1:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "-1"], "Invalid value for '--timeout': -1.0 is not in the range 0<x<=3600"),
        (["--timeout", "0"], "Invalid value for '--timeout'"),
        (["--timeout", "nan"], "Invalid value for '--timeout': 'nan' is not a number of seconds"),
        (["--url", "ftp://x"], "Invalid value for '--url': not an http(s) URL with a host"),
        (["--url", "http://"], "Invalid value for '--url'"),
        (["--url", "http://[::1/healthz"], "Invalid value for '--url'"),
    ],
)
def test_health_refuses_a_bad_timeout_or_url_as_usage(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["health", *args])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"mailbridge: error: {message}")
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""  # no FAIL line: nothing was checked


async def await_cli(runner: CliRunner, args: list[str]) -> Any:
    """The CLI runs its own event loop: call it from a thread, as a shell would."""
    return await asyncio.to_thread(runner.invoke, main, args)
