"""Admin listings and the few admin writes (discard, outbox retry, customers), as plain records."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from mailbridge.adapters.blobs import BlobStore
from mailbridge.adapters.db.models import (
    Customer,
    InboundMessage,
    Outbox,
    Ticket,
    utcnow,
)

# Enough of a message's start to hold its header block, without loading a 20 MB body per row.
HEAD_BYTES = 16 * 1024
_HISTORY_LIMIT = 4000


def aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored moment is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """One inbound message for admins; `head` is the start of the raw bytes (the headers)."""

    id: int
    state: str
    outcome: str | None
    stage: str | None
    error_class: str | None
    error: str | None
    attempts: int
    source: str
    mailbox: str | None
    uidvalidity: int | None
    uid: int | None
    message_id: str | None
    sha256: str
    size: int
    received_at: datetime
    updated_at: datetime
    discard_reason: str | None
    reasons: list[dict[str, str]]
    ticket_number: str | None
    head: bytes
    raw: bytes | None = None


def _inbound_query(*, raw: bool) -> Select[Any]:
    head = func.substr(InboundMessage.raw, 1, HEAD_BYTES).label("head")
    columns: list[Any] = [InboundMessage, Ticket.number, head]
    if raw:
        columns.append(InboundMessage.raw)
    return (
        select(*columns)
        .outerjoin(Ticket, Ticket.id == InboundMessage.ticket_id)
        .options(defer(InboundMessage.raw))
    )


def _inbound_record(row: Any, blobs: BlobStore, *, raw: bool) -> InboundRecord:
    inbound: InboundMessage = row[0]
    head = bytes(row[2] or b"")
    if not head and inbound.size:  # a large message, kept in the blob store
        # A record stays listable without its bytes: --raw, export and replay say what is
        # missing; its headers are then shown empty.
        with suppress(OSError):
            head = blobs.head(inbound.sha256, HEAD_BYTES)
    return InboundRecord(
        id=inbound.id,
        state=inbound.state,
        outcome=inbound.outcome,
        stage=inbound.stage,
        error_class=inbound.error_class,
        error=inbound.error,
        attempts=inbound.attempts,
        source=inbound.source,
        mailbox=inbound.mailbox,
        uidvalidity=inbound.uidvalidity,
        uid=inbound.uid,
        message_id=inbound.message_id,
        sha256=inbound.sha256,
        size=inbound.size,
        received_at=aware(inbound.received_at) or inbound.received_at,
        updated_at=aware(inbound.updated_at) or inbound.updated_at,
        discard_reason=inbound.discard_reason,
        reasons=list(inbound.reasons or []),
        ticket_number=row[1],
        head=head,
        raw=blobs.kept_raw(bytes(row[3]), inbound.sha256, inbound.size) if raw else None,
    )


async def list_inbound(
    session: AsyncSession,
    blobs: BlobStore,
    *,
    states: Sequence[str] = ("failed",),
    since: datetime | None = None,
    stage: str | None = None,
    error: str | None = None,
    limit: int | None = None,
    rejected: bool = False,
) -> list[InboundRecord]:
    """Inbound messages in these states (and the rejected ones when asked), oldest first.

    `error` matches the error or its class, case-insensitively.
    """
    wanted: ColumnElement[bool] = InboundMessage.state.in_(list(states))
    if rejected:
        wanted = wanted | (
            (InboundMessage.state == "done") & (InboundMessage.outcome == "rejected")
        )
    query = _inbound_query(raw=False).where(wanted)
    if since is not None:
        query = query.where(InboundMessage.received_at >= since.astimezone(UTC))
    if stage:
        query = query.where(InboundMessage.stage == stage)
    if error:
        needle = error.lower()
        query = query.where(
            func.lower(func.coalesce(InboundMessage.error, "")).contains(needle, autoescape=True)
            | func.lower(func.coalesce(InboundMessage.error_class, "")).contains(
                needle, autoescape=True
            )
        )
    query = query.order_by(InboundMessage.id)
    if limit:
        query = query.limit(limit)
    return [_inbound_record(row, blobs, raw=False) for row in await session.execute(query)]


async def get_inbound(
    session: AsyncSession, blobs: BlobStore, inbound_id: int, *, raw: bool = False
) -> InboundRecord | None:
    """One inbound message's record; with `raw`, its bytes too (from the blob store when
    they are kept there). Raises OSError when they cannot be read."""
    query = _inbound_query(raw=raw).where(InboundMessage.id == inbound_id)
    row = (await session.execute(query)).first()
    return _inbound_record(row, blobs, raw=raw) if row is not None else None


async def inbound_states(session: AsyncSession, ids: Sequence[int]) -> dict[int, str]:
    rows = await session.execute(
        select(InboundMessage.id, InboundMessage.state).where(InboundMessage.id.in_(list(ids)))
    )
    return {int(inbound_id): state for inbound_id, state in rows}


async def discard_inbound(session: AsyncSession, ids: Sequence[int], reason: str) -> list[int]:
    """Mark failed messages discarded, keeping bytes and error as an audit record."""
    rows = (
        await session.scalars(
            select(InboundMessage)
            .where(InboundMessage.id.in_(list(ids)), InboundMessage.state == "failed")
            .options(defer(InboundMessage.raw))
            .with_for_update()
        )
    ).all()
    now = utcnow()
    for row in rows:
        row.state, row.outcome, row.discard_reason, row.updated_at = (
            "discarded",
            "discarded",
            reason,
            now,
        )
    return sorted(row.id for row in rows)


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    id: int
    kind: str
    ticket_number: str | None
    inbound_id: int | None
    message_id: str
    rcpt_to: str
    state: str
    attempts: int
    uncertain: bool
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None


def outbox_query() -> Select[Any]:
    columns: list[Any] = [
        Outbox.id,
        Outbox.kind,
        Ticket.number,
        Outbox.inbound_id,
        Outbox.message_id,
        Outbox.rcpt_to,
        Outbox.state,
        Outbox.attempts,
        Outbox.uncertain,
        Outbox.next_attempt_at,
        Outbox.last_error,
        Outbox.created_at,
        Outbox.sent_at,
    ]
    return select(*columns).outerjoin(Ticket, Ticket.id == Outbox.ticket_id)


def outbox_record(row: Any) -> OutboxRecord:
    values = list(row)
    for index in (9, 11, 12):
        values[index] = aware(values[index])
    return OutboxRecord(*values)


async def list_outbox(
    session: AsyncSession, *, state: str | None = None, limit: int | None = None
) -> list[OutboxRecord]:
    query = outbox_query()
    if state:
        query = query.where(Outbox.state == state)
    query = query.order_by(Outbox.id)
    if limit:
        query = query.limit(limit)
    return [outbox_record(row) for row in await session.execute(query)]


async def outbox_states(session: AsyncSession, ids: Sequence[int]) -> dict[int, str]:
    rows = await session.execute(select(Outbox.id, Outbox.state).where(Outbox.id.in_(list(ids))))
    return {int(outbox_id): state for outbox_id, state in rows}


async def retry_outbox(session: AsyncSession, ids: Sequence[int] | None) -> list[int]:
    """Failed rows (these, or all when `ids` is None) back to pending, due now, attempts reset.

    The attempts so far and the last error are kept, prefixed to `last_error`.
    """
    query = select(Outbox).where(Outbox.state == "failed").with_for_update()
    if ids is not None:
        query = query.where(Outbox.id.in_(list(ids)))
    now = utcnow()
    retried = []
    for row in (await session.scalars(query.order_by(Outbox.id))).all():
        history = (
            f"[retried by admin at {now.isoformat(timespec='seconds')} after "
            f"{row.attempts} attempt(s); last error: {row.last_error or 'none'}]"
        )
        row.last_error = history[-_HISTORY_LIMIT:]
        row.state, row.attempts, row.next_attempt_at = "pending", 0, now
        retried.append(row.id)
    return retried


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    email: str
    name: str
    company: str
    language: str | None
    priority: str
    created_at: datetime | None = None


async def list_customers(session: AsyncSession) -> list[CustomerRecord]:
    rows = await session.scalars(select(Customer).order_by(Customer.email))
    return [
        CustomerRecord(c.email, c.name, c.company, c.language, c.priority, aware(c.created_at))
        for c in rows
    ]


async def upsert_customers(
    session: AsyncSession, customers: Sequence[CustomerRecord], columns: frozenset[str]
) -> tuple[int, int]:
    """Insert or update by (lowercased) email; only `columns` are written on an update.

    Returns (new, updated).
    """
    wanted = {c.email.lower(): c for c in customers}
    existing: dict[str, Customer] = {}
    emails = list(wanted)
    for start in range(0, len(emails), 500):
        chunk = emails[start : start + 500]
        found = await session.scalars(select(Customer).where(Customer.email.in_(chunk)))
        existing.update({row.email: row for row in found})
    new = updated = 0
    for email, customer in wanted.items():
        row = existing.get(email)
        if row is None:
            session.add(
                Customer(
                    email=email,
                    name=customer.name,
                    company=customer.company,
                    language=customer.language,
                    priority=customer.priority,
                )
            )
            new += 1
            continue
        for column in ("name", "company", "language", "priority"):
            if column in columns:
                setattr(row, column, getattr(customer, column))
        updated += 1
    return new, updated
