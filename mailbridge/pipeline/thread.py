"""Which ticket a message belongs to: ticket tags and referenced Message-IDs, participants only."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

from mailbridge.records import ParsedMail, ThreadHint, ThreadMatch, TicketView

NEW = "new"


@lru_cache(maxsize=8)
def number_pattern(number_format: str) -> re.Pattern[str]:
    """A regex for ticket numbers made by `number_format`, e.g. `MB-{id:06d}` → `MB-\\d+`."""
    head, _, rest = number_format.partition("{id")
    _, _, tail = rest.partition("}")
    return re.compile(re.escape(head) + r"\d+" + re.escape(tail), re.IGNORECASE)


@lru_cache(maxsize=8)
def _tag_pattern(number_format: str) -> re.Pattern[str]:
    return re.compile(r"\[#\s*(" + number_pattern(number_format).pattern + r")\s*\]", re.I)


def format_number(number_format: str, ticket_id: int) -> str:
    return number_format.format(id=ticket_id)


def subject_tag(number: str) -> str:
    return f"[#{number}]"


def thread_hint(parsed: ParsedMail, number_format: str) -> ThreadHint:
    """What in the message points at existing tickets, most specific first."""
    numbers = tuple(m.upper() for m in _tag_pattern(number_format).findall(parsed.subject))
    # In-Reply-To names the one message answered; References lists the thread, newest last.
    referenced = tuple(dict.fromkeys((*parsed.in_reply_to, *reversed(parsed.references))))
    return ThreadHint(ticket_numbers=numbers, referenced_ids=referenced)


def choose_thread(
    hint: ThreadHint,
    *,
    by_reference: Mapping[str, TicketView],
    by_number: Mapping[str, TicketView],
    sender: str | None,
) -> ThreadMatch:
    """Join the first pointed-at ticket the sender takes part in.

    A stranger quoting a ticket (a forwarded ack, a guessed number) gets a new ticket linked
    to the old one, never a way into it.
    """
    candidates: list[tuple[TicketView, str]] = []
    for message_id in hint.referenced_ids:
        if message_id in by_reference:
            candidates.append((by_reference[message_id], "references"))
    for number in hint.ticket_numbers:
        if number in by_number:
            candidates.append((by_number[number], "subject_tag"))
    if not candidates:
        return ThreadMatch(ticket_number=None, how=NEW)
    key = (sender or "").strip().lower()
    for ticket, how in candidates:
        if key and key in ticket.participants:
            return ThreadMatch(ticket_number=ticket.number, how=how)
    return ThreadMatch(ticket_number=None, how="new_linked", linked_number=candidates[0][0].number)
