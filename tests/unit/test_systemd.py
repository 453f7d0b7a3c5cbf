"""systemd integration without systemd: the notify protocol on a real datagram socket, the
watchdog interval, and the unit file checked by `systemd-analyze` where it is installed."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailbridge.adapters.systemd import Notifier, notify_address, watchdog_interval
from mailbridge.mailbox_worker import Liveness

UNIT = Path(__file__).parents[2] / "config" / "mailbridge.service"


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket like systemd's notify socket, and its $NOTIFY_SOCKET value."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def test_messages_arrive_on_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready("2/2 mailboxes connected")
    assert notifier.watchdog()
    assert notifier.stopping()
    got = [sock.recv(4096).decode() for _ in range(3)]
    assert got == [
        "READY=1\nSTATUS=2/2 mailboxes connected",
        "WATCHDOG=1",
        "STOPPING=1",
    ]
    notifier.close()


def test_abstract_socket_address() -> None:
    name = f"mailbridge-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.status("line one\nline two")
        assert sock.recv(4096) == b"STATUS=line one line two"  # one STATUS, one line
        notifier.close()
    finally:
        sock.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.sent


def test_a_vanished_supervisor_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert not notifier.watchdog()
    assert not notifier.watchdog()
    notifier.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("/run/systemd/notify", "/run/systemd/notify"), ("@abc", b"\0abc"), ("", None), ("x", None)],
)
def test_notify_address(value: str, expected: object) -> None:
    assert notify_address(value) == expected


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "180000000"}) == 90.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_liveness_allows_the_announced_wait_then_the_stall_time() -> None:
    now = [100.0]
    live = Liveness("mailbox", stall_seconds=10, clock=lambda: now[0])
    live.beat(quiet_for=60)  # e.g. an IDLE of up to a minute
    now[0] = 169.0
    assert live.alive
    now[0] = 171.0
    assert not live.alive
    assert live.overdue_seconds == pytest.approx(1.0)
    live.beat()
    assert live.alive


def test_state_directory_is_the_default_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailbridge.settings import Settings

    monkeypatch.delenv("MAILBRIDGE_STORAGE__DATA_DIR", raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/mailbridge:/var/lib/mailbridge-extra")
    settings = Settings()
    assert settings.storage.data_dir == Path("/var/lib/mailbridge")
    assert settings.database_url == "sqlite+aiosqlite:////var/lib/mailbridge/mailbridge.db"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert Settings().storage.data_dir == Path("data")


# --- the unit file ----------------------------------------------------------------------------


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_file_asks_for_notify_watchdog_hardening_and_credentials() -> None:
    unit = _directives(UNIT.read_text())
    expected = {
        "Type": "notify",
        "Restart": "on-failure",
        "DynamicUser": "yes",
        "StateDirectory": "mailbridge",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    assert "@system-service" in unit["SystemCallFilter"]
    assert unit["WatchdogSec"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert any(c.startswith("imap__password:") for c in unit["LoadCredential"])
    assert unit["ExecStartPre"] == ["/usr/local/bin/mailbridge db upgrade"]
    # The stop timeout leaves the daemon its own shutdown bound (30 s) and more.
    assert unit["TimeoutStopSec"] == ["60s"]


def _analyze() -> str:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return analyze


@pytest.fixture
def installed_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart= pointing at the mailbridge installed here (verify checks it)."""
    program = shutil.which("mailbridge")
    if program is None:
        pytest.skip("the mailbridge command is not on PATH (pip install -e .)")
    unit = tmp_path / "mailbridge.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/mailbridge", program))
    return unit


def test_systemd_analyze_verify_finds_nothing_wrong(installed_unit: Path) -> None:
    analyze = _analyze()
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(installed_unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 on unknown keys too, with a warning naming the file: none may appear.
    complaints = [line for line in result.stderr.splitlines() if installed_unit.name in line]
    assert result.returncode == 0, result.stderr
    assert complaints == []


def test_systemd_analyze_security_rates_the_unit_ok(installed_unit: Path) -> None:
    analyze = _analyze()
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(installed_unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout + result.stderr)
    if match is None:
        pytest.skip(f"this systemd-analyze cannot rate offline units: {result.stderr[:200]}")
    assert float(match.group(1)) <= 2.0, result.stdout
