"""Admin reads of tickets: listings with filters, and one ticket with all that belongs to it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, selectinload

from mailbridge.adapters.db.models import Outbox, Ticket, TicketMessage
from mailbridge.adapters.db.queries import OutboxRecord, aware, outbox_query, outbox_record


@dataclass(frozen=True, slots=True)
class TicketRecord:
    id: int
    number: str
    subject: str
    requester_email: str
    requester_name: str
    status: str
    ticket_type: str
    department: str
    priority: str
    priority_reasons: list[str]
    language: str
    cc_flag: bool
    cc_addresses: list[str]
    linked_number: str | None
    messages: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AttachmentRecord:
    filename: str
    content_type: str
    size: int
    sha256: str
    inline: bool
    content_id: str | None


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: int
    inbound_id: int | None
    message_id: str | None
    sender_email: str
    sender_name: str
    subject: str
    display_text: str
    created_at: datetime
    attachments: list[AttachmentRecord]
    defects: list[str]
    omitted: list[str]


@dataclass(frozen=True, slots=True)
class TicketDetail:
    ticket: TicketRecord
    participants: list[tuple[str, str]]
    messages: list[MessageRecord]
    outbox: list[OutboxRecord]


def _ticket_query() -> Select[Any]:
    linked = aliased(Ticket)
    count = (
        select(func.count(TicketMessage.id))
        .where(TicketMessage.ticket_id == Ticket.id)
        .scalar_subquery()
    )
    return select(Ticket, linked.number, count).outerjoin(
        linked, linked.id == Ticket.linked_ticket_id
    )


def _ticket_record(row: Any) -> TicketRecord:
    ticket: Ticket = row[0]
    return TicketRecord(
        id=ticket.id,
        number=ticket.number or "",
        subject=ticket.subject,
        requester_email=ticket.requester_email,
        requester_name=ticket.requester_name,
        status=ticket.status,
        ticket_type=ticket.ticket_type,
        department=ticket.department,
        priority=ticket.priority,
        priority_reasons=list(ticket.priority_reasons or []),
        language=ticket.language,
        cc_flag=ticket.cc_flag,
        cc_addresses=list(ticket.cc_addresses or []),
        linked_number=row[1],
        messages=int(row[2] or 0),
        created_at=aware(ticket.created_at) or ticket.created_at,
        updated_at=aware(ticket.updated_at) or ticket.updated_at,
    )


async def list_tickets(
    session: AsyncSession,
    *,
    status: str | None = None,
    ticket_type: str | None = None,
    department: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> list[TicketRecord]:
    """Tickets, newest first; type and department match case-insensitively."""
    query = _ticket_query()
    if status:
        query = query.where(func.lower(Ticket.status) == status.lower())
    if ticket_type:
        query = query.where(func.lower(Ticket.ticket_type) == ticket_type.lower())
    if department:
        query = query.where(func.lower(Ticket.department) == department.lower())
    if since is not None:
        query = query.where(Ticket.created_at >= since.astimezone(UTC))
    query = query.order_by(Ticket.id.desc())
    if limit:
        query = query.limit(limit)
    return [_ticket_record(row) for row in await session.execute(query)]


async def get_ticket(session: AsyncSession, number: str) -> TicketDetail | None:
    """A ticket by number (or by id when given digits only), with messages and its outbox."""
    query = _ticket_query()
    if number.isdigit():
        query = query.where(Ticket.id == int(number))
    else:
        query = query.where(func.upper(Ticket.number) == number.strip().lstrip("#").upper())
    row = (await session.execute(query)).first()
    if row is None:
        return None
    record = _ticket_record(row)
    full = await session.scalar(
        select(Ticket)
        .where(Ticket.id == record.id)
        .options(
            selectinload(Ticket.messages).selectinload(TicketMessage.attachments),
            selectinload(Ticket.participants),
        )
    )
    assert full is not None
    messages = [
        MessageRecord(
            id=m.id,
            inbound_id=m.inbound_id,
            message_id=m.message_id,
            sender_email=m.sender_email,
            sender_name=m.sender_name,
            subject=m.subject,
            display_text=m.display_text,
            created_at=aware(m.created_at) or m.created_at,
            attachments=[
                AttachmentRecord(
                    a.filename, a.content_type, a.size, a.sha256, a.inline, a.content_id
                )
                for a in m.attachments
            ],
            defects=list(m.defects or []),
            omitted=list(m.omitted or []),
        )
        for m in full.messages
    ]
    outbox = await session.execute(
        outbox_query().where(Outbox.ticket_id == record.id).order_by(Outbox.id)
    )
    participants = sorted((p.email, p.role) for p in full.participants)
    return TicketDetail(record, participants, messages, [outbox_record(r) for r in outbox])
