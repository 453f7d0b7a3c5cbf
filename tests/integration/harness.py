"""Helpers for end-to-end tests: settings for the real servers, mail builders, database reads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from mailbridge.adapters.db.models import InboundMessage, Outbox, Ticket, TicketMessage
from mailbridge.app import open_app
from mailbridge.settings import (
    AckSettings,
    DatabaseSettings,
    PolicySettings,
    Settings,
    StorageSettings,
)
from tests.fixtures.make_fixtures import encode_png
from tests.servers.dovecot import Mailbox
from tests.servers.smtp import SmtpSink

CUSTOMER = "Ana Popescu <ana@customer.test>"


def png(width: int = 64, height: int = 48, seed: int = 7) -> bytes:
    """A real, valid PNG (the kind of screenshot customers attach)."""
    rows = b"".join(
        b"\x00" + bytes((x * seed + y) % 256 for x in range(width * 3)) for y in range(height)
    )
    return encode_png(width, height, rows)


def toml_value(value: Any) -> str:
    """One TOML value; a JSON string is a valid TOML basic string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, Enum):
        value = value.value
    return json.dumps(str(value))


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """A settings file as an operator writes one: `[section]` tables, unset keys left out."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_settings(
    mailbox: Mailbox,
    sink: SmtpSink,
    database_url: str,
    data_dir: Path,
    *,
    policy: dict[str, Any] | None = None,
    imap: dict[str, Any] | None = None,
    ack: dict[str, Any] | None = None,
    storage: dict[str, Any] | None = None,
) -> Settings:
    """Settings pointing at the test's own Dovecot user, SMTP sink and database."""
    return Settings(
        imap=mailbox.settings(idle_renew_seconds=5, poll_seconds=1, **(imap or {})),
        smtp=sink.settings(backoff_base_seconds=0.01, backoff_max_seconds=0.05, poll_seconds=0.2),
        database=DatabaseSettings(url=database_url),
        storage=StorageSettings(data_dir=data_dir, **(storage or {})),
        policy=PolicySettings(**(policy or {})),
        ack=AckSettings(from_address=mailbox.user, **(ack or {})),
    )


def make_mail(
    *,
    to: str,
    subject: str = "Cannot log in to the admin panel",
    body: str = "Hello,\n\nI cannot log in since this morning.\n\nAna",
    sender: str = CUSTOMER,
    cc: Sequence[str] = (),
    html: str | None = None,
    images: Sequence[tuple[str, bytes]] = (),
    in_reply_to: str | None = None,
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id or make_msgid(domain="customer.test")
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    if html is not None:
        message.add_alternative(html, subtype="html")
    for filename, data in images:
        message.add_attachment(data, maintype="image", subtype="png", filename=filename)
    return message.as_bytes(policy=policy.SMTP)


@dataclass(frozen=True)
class DbState:
    tickets: list[Ticket]
    inbound: list[InboundMessage]
    outbox: list[Outbox]

    def ticket(self, number: str) -> Ticket:
        return next(t for t in self.tickets if t.number == number)


async def read_db(settings: Settings) -> DbState:
    async with open_app(settings) as app, app.sessions() as session:
        tickets = (
            await session.scalars(
                select(Ticket)
                .options(
                    selectinload(Ticket.messages).selectinload(TicketMessage.attachments),
                    selectinload(Ticket.participants),
                )
                .order_by(Ticket.id)
            )
        ).all()
        inbound = (await session.scalars(select(InboundMessage).order_by(InboundMessage.id))).all()
        outbox = (await session.scalars(select(Outbox).order_by(Outbox.id))).all()
        return DbState(list(tickets), list(inbound), list(outbox))


async def run_once(settings: Settings, **worker_options: Any) -> tuple[int, int]:
    async with open_app(settings) as app:
        return await app.daemon(**worker_options).run_once()
