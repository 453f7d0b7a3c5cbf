"""Builds ParsedMail records for unit tests without going through the parser."""

from __future__ import annotations

from typing import Any

from mailbridge.records import Address, Attachment, ParsedMail


def parsed(
    *,
    subject: str = "Hello",
    sender: str | None = "ana@customer.test",
    to: tuple[str, ...] = ("support@example.com",),
    cc: tuple[str, ...] = (),
    body: str = "Hi",
    headers: tuple[tuple[str, str], ...] = (),
    in_reply_to: tuple[str, ...] = (),
    references: tuple[str, ...] = (),
    attachments: tuple[Attachment, ...] = (),
    **overrides: Any,
) -> ParsedMail:
    values: dict[str, Any] = {
        "message_id": "<m1@customer.test>",
        "subject": subject,
        "sender": Address("", sender) if sender else None,
        "reply_to": (),
        "to": tuple(Address("", a) for a in to),
        "cc": tuple(Address("", a) for a in cc),
        "date": None,
        "in_reply_to": in_reply_to,
        "references": references,
        "headers": headers,
        "body_text": body,
        "body_html": None,
        "attachments": attachments,
        "defects": (),
        "size": 100,
    }
    values.update(overrides)
    return ParsedMail(**values)
