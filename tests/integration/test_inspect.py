"""`mailbridge inspect`: every decision for one message, via the daemon's code, no side effect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailbridge.cli import main

FIXTURES = sorted((Path(__file__).parents[1] / "fixtures" / "mail").glob("*.eml"))
REQUIRED_KEYS = {
    "from", "to", "cc", "subject", "message_id", "body_text", "attachments", "decision",
    "reasons", "ticket_type", "department", "priority", "thread", "defects",
}  # fmt: skip


@pytest.fixture
def runner_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ("MAILBRIDGE_CONFIG", "MAILBRIDGE_DATABASE__URL"):
        monkeypatch.delenv(name, raising=False)
    return {
        "MAILBRIDGE_STORAGE__DATA_DIR": str(tmp_path / "data"),
        "MAILBRIDGE_LOG__LEVEL": "warning",
        "MAILBRIDGE_ACK__FROM_ADDRESS": "support@example.com",
    }


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_inspect_json_decides_every_fixture_without_writing(
    fixture: Path, runner_env: dict[str, str], tmp_path: Path
) -> None:
    result = CliRunner().invoke(main, ["inspect", "--json", str(fixture)], env=runner_env)

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report.keys() >= REQUIRED_KEYS
    assert report["decision"] in {"ticket_created", "follow_up", "rejected", "quarantined"}
    for address in report["from"] + report["to"] + report["cc"]:
        assert set(address) == {"name", "email"}
    for attachment in report["attachments"]:
        assert {"filename", "content_type", "size", "sha256", "inline"} <= attachment.keys()
    assert not (tmp_path / "data").exists()  # no database, no attachment store made


def test_inspect_shows_the_cc_rejection_and_the_ack_it_would_send(
    runner_env: dict[str, str], tmp_path: Path
) -> None:
    cc_mail = tmp_path / "cc.eml"
    cc_mail.write_bytes(
        b"From: Ana <ana@customer.test>\r\nTo: support@example.com\r\n"
        b"Cc: boss@customer.test\r\nSubject: [Bug] Site down\r\n"
        b"Message-ID: <cc1@customer.test>\r\n\r\nThe site is down.\r\n"
    )
    rejected = CliRunner().invoke(main, ["inspect", "--json", str(cc_mail)], env=runner_env)
    report = json.loads(rejected.stdout)
    assert report["decision"] == "rejected"
    assert [r["rule"] for r in report["reasons"]] == ["cc_third_party"]
    assert report["answer"] == "cc_rejection"

    allowed = CliRunner().invoke(
        main, ["inspect", str(cc_mail)], env={**runner_env, "MAILBRIDGE_POLICY__CC_MODE": "allow"}
    )
    assert allowed.exit_code == 0
    assert "ticket_created" in allowed.stdout
    assert '"Bug"' in allowed.stdout
    assert '"urgent"' in allowed.stdout
    assert "acknowledgement that would be sent" in allowed.stdout
    assert "Auto-Submitted: auto-replied" in allowed.stdout


def test_unreadable_input_is_the_only_failure(runner_env: dict[str, str], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "missing.eml")], env=runner_env)
    assert result.exit_code == 1
    assert result.stderr.startswith("mailbridge: error: cannot read")
    assert result.stderr.count("\n") == 1
