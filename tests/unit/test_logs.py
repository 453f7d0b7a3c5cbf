"""Logs: JSON lines off a TTY, library records through the same renderer, no secrets."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from mailbridge import logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()  # not a TTY: JSON expected
    logs.configure("info", "auto", stream)
    yield stream
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_structlog_and_library_records_are_json_lines_with_message_context(
    captured: io.StringIO,
) -> None:
    with structlog.contextvars.bound_contextvars(mailbox="INBOX", uid=7, message_id="<a@b>"):
        structlog.get_logger("mailbridge.test").info("ticket_created", ticket="MB-000001")
        logging.getLogger("aiosmtplib").warning("server said 421")

    ours, library = lines(captured)
    assert ours["event"] == "ticket_created"
    assert (ours["mailbox"], ours["uid"], ours["message_id"]) == ("INBOX", 7, "<a@b>")
    assert ours["ticket"] == "MB-000001"
    assert library["event"] == "server said 421"
    assert library["logger"] == "aiosmtplib"
    assert library["uid"] == 7  # the message in hand shows on library lines too
    assert {"timestamp", "level"} <= ours.keys()


def test_chatty_libraries_are_quiet_below_warning(captured: io.StringIO) -> None:
    logging.getLogger("aioimaplib.aioimaplib").info("Received : 4000 bytes of a message")
    logging.getLogger("sqlalchemy.engine").info("SELECT 1")
    assert captured.getvalue() == ""


def test_secrets_never_reach_a_log_line(captured: io.StringIO) -> None:
    structlog.get_logger("x").info("login", password="hunter2", imap_token="abc.def")
    logging.getLogger("aioimaplib").warning('send: LOGIN support@example.com "hunter2"')
    logging.getLogger("aiosmtplib").warning("AUTH PLAIN AHVzZXIAaHVudGVyMg==")
    text = captured.getvalue()
    assert "hunter2" not in text
    assert "abc.def" not in text
    assert "AHVzZXIAaHVudGVyMg==" not in text
    assert text.count("**********") == 4
