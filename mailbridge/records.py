"""Frozen dataclasses passed between the pipeline stages; no library shapes cross a stage."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class RawMail:
    """One message as fetched from IMAP (or piped in), before anything is decided about it."""

    mailbox: str
    uidvalidity: int
    uid: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox address with its decoded display name; `email` is kept as written."""

    name: str
    email: str

    @property
    def key(self) -> str:
        """The comparison form: addresses are compared case-insensitively."""
        return self.email.strip().lower()

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email


@dataclass(frozen=True, slots=True)
class Attachment:
    """A decoded MIME part kept for the ticket: attachments, inline images, attached messages."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)
    inline: bool = False
    content_id: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def is_image(self) -> bool:
        return self.content_type.lower().startswith("image/")


@dataclass(frozen=True, slots=True)
class ParsedMail:
    """What the parser could read from one message; `defects` says what it had to work around."""

    message_id: str | None
    subject: str
    sender: Address | None
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    date: datetime | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    body_text: str
    body_html: str | None
    attachments: tuple[Attachment, ...]
    defects: tuple[str, ...]
    size: int
    omitted: tuple[str, ...] = ()

    def header(self, name: str) -> str | None:
        """The first value of a header, matched case-insensitively."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def header_values(self, name: str) -> tuple[str, ...]:
        wanted = name.lower()
        return tuple(value for key, value in self.headers if key.lower() == wanted)

    @property
    def reply_address(self) -> Address | None:
        """Where an answer goes: Reply-To when given, else From."""
        return self.reply_to[0] if self.reply_to else self.sender

    @property
    def requester(self) -> Address | None:
        """Who the ticket belongs to: From, or Reply-To when From is missing."""
        return self.sender or (self.reply_to[0] if self.reply_to else None)


class Action(StrEnum):
    """What the screen decided to do with a message."""

    ACCEPT = "accept"
    FLAG = "flag"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Reason:
    """One rule that fired, by name, with what it saw."""

    rule: str
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The screen's decision: the action, every rule that fired, and whether to auto-answer."""

    action: Action
    reasons: tuple[Reason, ...] = ()
    acknowledge: bool = True
    suppressions: tuple[Reason, ...] = ()
    cc_addresses: tuple[Address, ...] = ()


class TicketType(StrEnum):
    QUESTION = "Question"
    BUG = "Bug"
    CONFIGURATION = "Configuration"
    DEVELOPMENT = "Development"
    MODIFICATION = "Modification"
    NONE = "None"


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


@dataclass(frozen=True, slots=True)
class Classification:
    """Type, department and priority, each with the rule that decided it."""

    ticket_type: TicketType
    type_rule: str
    department: str
    priority: Priority
    priority_reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ThreadHint:
    """What in the message points at an existing ticket (pure: read from headers and subject)."""

    ticket_numbers: tuple[str, ...]
    referenced_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ThreadMatch:
    """The ticket a message joins, or the one a stranger's message is linked to."""

    ticket_number: str | None
    how: str
    linked_number: str | None = None


@dataclass(frozen=True, slots=True)
class TicketView:
    """What the pipeline needs to know about an existing ticket to decide on a follow-up."""

    number: str
    participants: frozenset[str]
    language: str | None = None


@dataclass(frozen=True, slots=True)
class CustomerView:
    """A known customer from the customers table."""

    email: str
    name: str
    language: str | None
    priority: Priority
    company: str = ""


@dataclass(frozen=True, slots=True)
class OutgoingMail:
    """A composed message ready for the outbox: envelope plus the exact bytes to send."""

    kind: str
    message_id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Decision:
    """Everything the pipeline decided about one message, before anything is written."""

    parsed: ParsedMail
    verdict: Verdict
    classification: Classification | None
    thread: ThreadMatch
    language: str


@dataclass(frozen=True, slots=True)
class Intake:
    """A message handed to the pipeline, and where it came from (IMAP location when known)."""

    data: bytes = field(repr=False)
    source: str
    mailbox: str | None = None
    uidvalidity: int | None = None
    uid: int | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """A decision plus what the writer needs: the customer, and why no answer may be sent."""

    decision: Decision
    customer: CustomerView | None
    answer_suppressions: tuple[Reason, ...]


class Outcome(StrEnum):
    """How a message ended; every message ends as exactly one of these."""

    TICKET_CREATED = "ticket_created"
    FOLLOW_UP = "follow_up"
    REJECTED = "rejected"
    QUARANTINED = "quarantined"
    DISCARDED = "discarded"


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """What processing one message did, for logs, the CLI and the IMAP settle step.

    `duplicate` means the message was already held: `outcome` is then what it became the
    first time, so the IMAP copy is settled into the same folder.
    """

    outcome: Outcome
    inbound_id: int
    ticket_number: str | None = None
    error: str | None = None
    stage: str | None = None
    duplicate: bool = False
