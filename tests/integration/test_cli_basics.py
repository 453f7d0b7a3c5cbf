"""The operator's first commands, as a user types them: config check, db upgrade, run --once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailbridge.cli import main
from tests.integration.harness import make_mail
from tests.servers.dovecot import Mailbox
from tests.servers.smtp import SmtpSink

pytestmark = pytest.mark.integration


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith("MAILBRIDGE_"):
            monkeypatch.delenv(name)
    return {"MAILBRIDGE_STORAGE__DATA_DIR": str(tmp_path / "data")}


def test_config_check_prints_effective_settings_with_secrets_redacted(
    clean_env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "m.toml"
    config.write_text('[imap]\nhost = "imap.example.com"\npassword = "hunter2"\n')
    result = CliRunner().invoke(main, ["-c", str(config), "config", "check"], env=clean_env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["imap"]["host"] == "imap.example.com"
    assert shown["imap"]["password"] == "**********"
    assert "hunter2" not in result.output


def test_bad_setting_is_one_line_naming_the_key_and_exit_2(
    clean_env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "m.toml"
    config.write_text("[smtp]\nport = 99999\n")
    result = CliRunner().invoke(main, ["-c", str(config), "config", "check"], env=clean_env)
    assert result.exit_code == 2
    assert result.stderr.startswith("mailbridge: error: invalid setting smtp.port:")
    assert result.stderr.count("\n") == 1


def test_unknown_option_is_one_line_and_exit_2(clean_env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["run", "--onse"], env=clean_env)
    assert result.exit_code == 2
    assert "--onse" in result.stderr
    assert result.stderr.count("\n") == 1


def test_run_refuses_an_outdated_schema_and_says_what_to_run(clean_env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["run", "--once"], env=clean_env)
    assert result.exit_code == 1
    assert "run `mailbridge db upgrade`" in result.stderr

    upgraded = CliRunner().invoke(main, ["db", "upgrade"], env=clean_env)
    assert upgraded.exit_code == 0, upgraded.output
    assert "database schema at" in upgraded.stdout


@pytest.mark.parametrize("revision", ["bogus", "", "-1", "base"])
def test_an_unknown_revision_is_one_line_naming_it_and_exit_2(
    clean_env: dict[str, str], revision: str
) -> None:
    result = CliRunner().invoke(main, ["db", "upgrade", "--revision", revision], env=clean_env)
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"mailbridge: error: Invalid value for '--revision': {revision!r} is not a revision"
    )
    assert "(known: head, 0001)" in result.stderr
    assert result.stderr.count("\n") == 1

    by_id = CliRunner().invoke(main, ["db", "upgrade", "--revision", "0001"], env=clean_env)
    assert by_id.exit_code == 0, by_id.output
    assert "database schema at 0001" in by_id.stdout


@pytest.mark.parametrize(
    ("args", "commands"), [([], ("run", "db", "tickets")), (["db"], ("upgrade",))]
)
def test_a_group_without_a_command_prints_its_help_readably(
    clean_env: dict[str, str], args: list[str], commands: tuple[str, ...]
) -> None:
    result = CliRunner().invoke(main, args, env=clean_env)
    assert result.exit_code == 2  # click's own code for a bare group
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Usage: ")
    assert "Options:" in lines
    assert "Commands:" in lines
    for command in commands:
        assert any(line.startswith(f"  {command} ") for line in lines), command
    assert "error" not in result.stderr


@pytest.mark.parametrize("args", [["tickets", "list"], ["db", "upgrade"], ["run", "--once"]])
def test_a_file_that_is_not_sqlite_is_one_line_naming_database_url(
    clean_env: dict[str, str], tmp_path: Path, args: list[str]
) -> None:
    notes = tmp_path / "notes.db"
    notes.write_text("these are my notes, not a database\n" * 200)
    env = {**clean_env, "MAILBRIDGE_DATABASE__URL": f"sqlite+aiosqlite:///{notes}"}
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 1
    assert result.stderr == f"mailbridge: error: database.url: {notes}: file is not a database\n"
    assert notes.read_text().startswith("these are my notes")


def test_the_installed_command_drains_a_real_mailbox(
    mailbox: Mailbox, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    """What the README's quick start does: a TOML file, `db upgrade`, `run --once`, SQLite."""
    config = tmp_path / "mailbridge.toml"
    config.write_text(
        f"""
[imap]
host = "127.0.0.1"
port = {mailbox.server.tls_port}
ca_file = "{mailbox.server.ca_file}"
user = "{mailbox.user}"
folders = ["INBOX"]

[smtp]
host = "127.0.0.1"
port = {smtp_sink.port}
security = "plain"

[storage]
data_dir = "{tmp_path / "data"}"

[ack]
from_address = "{mailbox.user}"
"""
    )
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "imap__password").write_text(mailbox.password)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBRIDGE_")}
    env |= {"CREDENTIALS_DIRECTORY": str(secrets)}
    mailbox.append(make_mail(to=mailbox.user))
    command = [sys.executable, "-m", "mailbridge", "-c", str(config)]

    for args in (["db", "upgrade"], ["run", "--once"]):
        done = subprocess.run(
            [*command, *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr

    assert "handled 1 message(s); 0 acknowledgement(s) still queued" in done.stdout
    assert (tmp_path / "data" / "mailbridge.db").is_file()
    (ack,) = smtp_sink.messages
    assert ack.message["Subject"].startswith("[#MB-000001]")
    assert mailbox.uids("INBOX") == []
    assert mailbox.password not in done.stderr
    for line in done.stderr.splitlines():
        json.loads(line)  # logs are JSON lines when not on a TTY
