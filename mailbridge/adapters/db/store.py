"""Queries and writes the pipeline needs, on a session the caller owns (and commits)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailbridge.adapters.db.models import (
    AttachmentRow,
    Customer,
    InboundMessage,
    MailboxCheckpoint,
    Outbox,
    Ticket,
    TicketMessage,
    TicketParticipant,
    utcnow,
)
from mailbridge.records import (
    Classification,
    CustomerView,
    OutgoingMail,
    ParsedMail,
    Priority,
    TicketView,
)


def clean(text: str | None, limit: int | None = None) -> str:
    """Text every database takes: no NUL (PostgreSQL refuses it), cut to the column's length."""
    value = (text or "").replace("\x00", "\ufffd")
    return value[:limit] if limit is not None else value


async def inbound_by_key(session: AsyncSession, dedupe_key: str) -> InboundMessage | None:
    return await session.scalar(
        select(InboundMessage).where(InboundMessage.dedupe_key == dedupe_key)
    )


async def held_by_keys(
    session: AsyncSession, dedupe_keys: Sequence[str]
) -> dict[str, tuple[int, str | None, str | None, str | None, str | None]]:
    """Messages held under these keys: (inbound id, outcome, ticket number, error, stage)."""
    if not dedupe_keys:
        return {}
    rows = await session.execute(
        select(
            InboundMessage.dedupe_key,
            InboundMessage.id,
            InboundMessage.outcome,
            Ticket.number,
            InboundMessage.error,
            InboundMessage.stage,
        )
        .outerjoin(Ticket, Ticket.id == InboundMessage.ticket_id)
        .where(InboundMessage.dedupe_key.in_(list(set(dedupe_keys))))
    )
    return {
        key: (inbound_id, outcome, number, error, stage)
        for key, inbound_id, outcome, number, error, stage in rows
    }


async def outcomes_at(
    session: AsyncSession, mailbox: str, uidvalidity: int, uids: Sequence[int]
) -> dict[int, str]:
    """What became of messages we already hold at these IMAP locations, by UID."""
    if not uids:
        return {}
    rows = await session.execute(
        select(InboundMessage.uid, InboundMessage.outcome).where(
            InboundMessage.mailbox == mailbox,
            InboundMessage.uidvalidity == uidvalidity,
            InboundMessage.uid.in_(list(uids)),
        )
    )
    return {int(uid): outcome for uid, outcome in rows if uid is not None and outcome}


async def checkpoint(session: AsyncSession, mailbox: str) -> MailboxCheckpoint | None:
    return await session.get(MailboxCheckpoint, mailbox)


async def advance_checkpoint(
    session: AsyncSession, mailbox: str, uidvalidity: int, uid: int
) -> None:
    """Move the checkpoint forward (never back); a new UIDVALIDITY starts it again."""
    row = await session.get(MailboxCheckpoint, mailbox, with_for_update=True)
    if row is None:
        session.add(MailboxCheckpoint(mailbox=mailbox, uidvalidity=uidvalidity, last_uid=uid))
        return
    if row.uidvalidity != uidvalidity:
        row.uidvalidity, row.last_uid = uidvalidity, uid
    else:
        row.last_uid = max(row.last_uid, uid)
    row.updated_at = utcnow()


async def _views(session: AsyncSession, tickets: Iterable[Ticket]) -> dict[int, TicketView]:
    tickets = list(tickets)
    if not tickets:
        return {}
    ids = [t.id for t in tickets]
    rows = await session.execute(
        select(TicketParticipant.ticket_id, TicketParticipant.email).where(
            TicketParticipant.ticket_id.in_(ids)
        )
    )
    participants: dict[int, set[str]] = {t.id: set() for t in tickets}
    for ticket_id, email in rows:
        participants[ticket_id].add(email)
    return {
        t.id: TicketView(
            number=t.number or "", participants=frozenset(participants[t.id]), language=t.language
        )
        for t in tickets
    }


async def tickets_by_reference(
    session: AsyncSession, message_ids: Sequence[str]
) -> dict[str, TicketView]:
    """Tickets that sent or received a message with one of these Message-IDs."""
    if not message_ids:
        return {}
    pairs: list[tuple[str, int]] = []
    for column, ticket_column in (
        (TicketMessage.message_id, TicketMessage.ticket_id),
        (Outbox.message_id, Outbox.ticket_id),
    ):
        rows = await session.execute(
            select(column, ticket_column).where(
                column.in_(list(message_ids)), ticket_column.is_not(None)
            )
        )
        pairs.extend((mid, tid) for mid, tid in rows if mid is not None and tid is not None)
    tickets = (
        await session.scalars(select(Ticket).where(Ticket.id.in_({t for _, t in pairs})))
    ).all()
    views = await _views(session, tickets)
    return {mid: views[tid] for mid, tid in pairs if tid in views}


async def tickets_by_number(session: AsyncSession, numbers: Sequence[str]) -> dict[str, TicketView]:
    if not numbers:
        return {}
    tickets = (await session.scalars(select(Ticket).where(Ticket.number.in_(list(numbers))))).all()
    views = await _views(session, tickets)
    return {view.number: view for view in views.values()}


def _customer_view(row: Customer) -> CustomerView:
    return CustomerView(
        email=row.email,
        name=row.name,
        language=row.language,
        priority=Priority(row.priority),
        company=row.company,
    )


async def customer_by_email(session: AsyncSession, email: str | None) -> CustomerView | None:
    if not email:
        return None
    row = await session.scalar(select(Customer).where(Customer.email == email.strip().lower()))
    return _customer_view(row) if row is not None else None


async def customers_by_email(
    session: AsyncSession, emails: Iterable[str]
) -> dict[str, CustomerView]:
    """The known customers among these addresses (lower-cased), in one query."""
    wanted = {email.strip().lower() for email in emails if email}
    if not wanted:
        return {}
    rows = await session.scalars(select(Customer).where(Customer.email.in_(wanted)))
    return {row.email: _customer_view(row) for row in rows}


async def outgoing_counts_by_rcpt(
    session: AsyncSession, rcpts: Iterable[str], moments: Sequence[datetime]
) -> dict[str, list[int]]:
    """Automatic mail queued to each recipient since each moment, in one query; a recipient
    with none is absent."""
    wanted = {rcpt.lower() for rcpt in rcpts}
    if not wanted or not moments:
        return {}
    columns = [func.sum(case((Outbox.created_at >= m, 1), else_=0)) for m in moments]
    rows = await session.execute(
        select(Outbox.rcpt_to, *columns)
        .where(Outbox.rcpt_to.in_(wanted), Outbox.created_at >= min(moments))
        .group_by(Outbox.rcpt_to)
    )
    return {rcpt: [int(value or 0) for value in values] for rcpt, *values in rows}


async def outgoing_counts_since(
    session: AsyncSession, rcpt: str, moments: Sequence[datetime]
) -> list[int]:
    """Automatic mail queued to one recipient since each moment (the hour and the day caps)."""
    counts = await outgoing_counts_by_rcpt(session, [rcpt], moments)
    return counts.get(rcpt.lower(), [0] * len(moments))


async def outbox_has(session: AsyncSession, message_id: str) -> bool:
    """Whether a mail with this Message-ID was already queued (sent or not)."""
    found = await session.scalar(select(Outbox.id).where(Outbox.message_id == message_id))
    return found is not None


async def ticket_has_ack(session: AsyncSession, ticket_id: int) -> bool:
    found = await session.scalar(
        select(Outbox.id).where(Outbox.ticket_id == ticket_id, Outbox.kind == "ack").limit(1)
    )
    return found is not None


def new_ticket(
    parsed: ParsedMail,
    classification: Classification,
    *,
    requester_email: str,
    requester_name: str,
    language: str,
    cc_flag: bool,
    cc_addresses: Sequence[str],
    linked_ticket_id: int | None,
) -> Ticket:
    return Ticket(
        subject=clean(parsed.subject),
        requester_email=clean(requester_email, 320),
        requester_name=clean(requester_name, 255),
        status="open",
        ticket_type=classification.ticket_type.value,
        type_rule=classification.type_rule,
        department=classification.department,
        priority=classification.priority.value,
        priority_reasons=list(classification.priority_reasons),
        language=language,
        cc_flag=cc_flag,
        cc_addresses=[clean(a, 320) for a in cc_addresses],
        linked_ticket_id=linked_ticket_id,
    )


def new_message(
    ticket_id: int | None, inbound_id: int | None, parsed: ParsedMail, display_text: str
) -> TicketMessage:
    """A ticket's message; ids left None are filled from relationships at the flush."""
    sender = parsed.requester
    return TicketMessage(
        ticket_id=ticket_id,
        inbound_id=inbound_id,
        message_id=clean(parsed.message_id, 998) or None,
        sender_email=clean(sender.key if sender else "", 320),
        sender_name=clean(sender.name if sender else "", 255),
        subject=clean(parsed.subject),
        body_text=clean(parsed.body_text),
        display_text=clean(display_text),
        body_html=clean(parsed.body_html) if parsed.body_html is not None else None,
        defects=[clean(d) for d in parsed.defects],
        omitted=[clean(o) for o in parsed.omitted],
        attachments=[
            AttachmentRow(
                filename=clean(a.filename, 255),
                content_type=clean(a.content_type, 255),
                size=a.size,
                sha256=a.sha256,
                inline=a.inline,
                content_id=clean(a.content_id, 998) or None,
            )
            for a in parsed.attachments
        ],
    )


def outbox_row(mail: OutgoingMail, *, ticket_id: int | None, inbound_id: int | None) -> Outbox:
    return Outbox(
        kind=mail.kind,
        ticket_id=ticket_id,
        inbound_id=inbound_id,
        message_id=mail.message_id,
        mail_from=mail.mail_from,
        rcpt_to=",".join(r.lower() for r in mail.rcpt_to),
        data=mail.data,
        state="pending",
        attempts=0,
        next_attempt_at=utcnow(),
    )


async def ticket_by_number(session: AsyncSession, number: str) -> Ticket | None:
    return await session.scalar(select(Ticket).where(Ticket.number == number))
