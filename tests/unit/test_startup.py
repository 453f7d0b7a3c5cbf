"""Start-up cost: the command line imports only what the command being run needs.

`mailbridge ingest -` runs once per message under an MTA pipe, so its start-up is that
deployment's throughput; `--help` and `config check` should not load a database driver.
Each case runs in a fresh interpreter and reads `sys.modules` as it exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]

# Only `run` (and `health`) need these: the daemon, the IMAP/SMTP clients, the endpoint.
DAEMON = (
    "aioimaplib",
    "aiosmtplib",
    "prometheus_client",
    "alembic",
    "mailbridge.daemon",
    "mailbridge.delivery",
    "mailbridge.mailbox_worker",
    "mailbridge.metrics",
    "mailbridge.health",
    "mailbridge.pipeline.batch",
    "mailbridge.adapters.imap",
    "mailbridge.adapters.smtp",
    "mailbridge.adapters.http",
    "mailbridge.adapters.oauth",
)
# Nor does anything that stays away from the database.
DATABASE = (
    "sqlalchemy",
    "aiosqlite",
    "asyncpg",
    "mailbridge.app",
    "mailbridge.adapters.db.engine",
    "mailbridge.pipeline.process",
)
# And what reads no settings needs no settings library, logging set-up or event loop.
SETTINGS = ("pydantic", "pydantic_settings", "structlog", "rich", "asyncio", "mailbridge.settings")
# Only the admin commands' tables need rich (5 MB that structlog would import for its console
# tracebacks). The daemon's own holidays-in-a-child check is in test_hours.py.
RESIDENT = ("rich",)

COMMAND_MODULES = {
    "mailbridge.cli_mail",
    "mailbridge.cli_admin",
    "mailbridge.cli_failed",
    "mailbridge.cli_replay",
    "mailbridge.cli_tickets",
    "mailbridge.cli_ops",
    "mailbridge.cli_types",  # the shared parameter types: imported by the commands, as light
}

# Runs the real command line; whatever way it ends, dumps the loaded module names to a file.
RUNNER = """\
import atexit, json, sys
out, args = sys.argv[1], sys.argv[2:]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["mailbridge", *args]
from mailbridge.cli import main
main()
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBRIDGE_")}
    return {**env, **extra}


def mailbridge(
    tmp_path: Path, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[bytes], set[str]]:
    """Run `mailbridge ARGS` in a fresh interpreter: the result, and the modules it loaded."""
    dump = tmp_path / "modules.json"
    dump.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(dump), *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env=env or clean_env(),
        timeout=120,
    )
    return done, set(json.loads(dump.read_text()))


def unwanted(modules: set[str], *groups: tuple[str, ...]) -> list[str]:
    return sorted(
        m for m in modules if any(m == h or m.startswith(h + ".") for g in groups for h in g)
    )


def test_importing_the_command_line_loads_only_click_and_the_commands() -> None:
    script = "import json, sys, mailbridge.cli; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    )
    modules = set(json.loads(done.stdout))
    assert unwanted(modules, DAEMON, DATABASE, SETTINGS) == []
    # Every command module is imported, plainly: a missing one fails instead of vanishing.
    assert modules >= COMMAND_MODULES


def test_python_dash_m_help_works_and_stays_light(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mailbridge", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for command in ("run", "db", "config", "ingest", "inspect", "failed", "tickets", "health"):
        assert f"  {command} " in done.stdout

    done_help, modules = mailbridge(tmp_path, "failed", "replay", "--help")
    assert done_help.returncode == 0, done_help.stderr
    assert unwanted(modules, DAEMON, DATABASE, SETTINGS) == []


def test_config_check_loads_no_database_code(tmp_path: Path) -> None:
    config = tmp_path / "m.toml"
    config.write_text('[imap]\nhost = "imap.example.com"\n')
    done, modules = mailbridge(tmp_path, "-c", str(config), "config", "check")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["imap"]["host"] == "imap.example.com"
    assert unwanted(modules, DAEMON, DATABASE) == []


def test_ingest_stores_a_message_without_the_daemon_code(tmp_path: Path) -> None:
    """The MTA pipe path: the pipeline and the database, no IMAP, SMTP, HTTP or metrics."""
    data = tmp_path / "data"
    config = tmp_path / "m.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{data}"\n'
        f'[database]\nurl = "sqlite+aiosqlite:///{data / "mailbridge.db"}"\n'
        '[ack]\nfrom_address = "support@example.com"\n'
    )
    upgraded, _ = mailbridge(tmp_path, "-c", str(config), "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    message = (
        b"From: Ana <ana@customer.test>\r\nTo: support@example.com\r\n"
        b"Subject: Cannot log in\r\nMessage-ID: <startup@customer.test>\r\n\r\nHello\r\n"
    )
    done, modules = mailbridge(tmp_path, "-c", str(config), "ingest", "-", stdin=message)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"stdin: ticket created")
    assert unwanted(modules, DAEMON, RESIDENT) == []
