"""What one database transaction has looked up about senders, and the new tickets it owes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from mailbridge.adapters.db import store
from mailbridge.adapters.db.models import InboundMessage, Ticket
from mailbridge.pipeline.render import AckContext
from mailbridge.records import CustomerView, Outcome, ProcessResult


@dataclass(frozen=True, slots=True)
class WaitingTicket:
    """A ticket added in this transaction whose id, and so number, the database has not given
    yet; `ack` is its acknowledgement but for the number (None: no answer is sent)."""

    ticket: Ticket
    inbound: InboundMessage
    ack: AckContext | None


@dataclass(frozen=True, slots=True)
class Written:
    """One message's rows, added to the transaction; its result once they are flushed."""

    outcome: Outcome
    inbound: InboundMessage
    ticket: Ticket | None = None  # a new ticket: its number is known after the flush
    number: str | None = None  # a follow-up: the ticket joined

    def result(self) -> ProcessResult:
        number = self.ticket.number if self.ticket is not None else self.number
        return ProcessResult(self.outcome, self.inbound.id, number)


class OpenTransaction:
    """The plan's reads about a sender and the writer's debts within one transaction.

    This one asks the database at each read; a batch answers every sender from one query
    (pipeline/batch.py). New tickets wait here until the transaction is flushed at once:
    then they get their numbers and acknowledgements (TicketWriter.finish).
    """

    def __init__(self) -> None:
        self.waiting: list[WaitingTicket] = []

    async def customer(self, session: AsyncSession, email: str | None) -> CustomerView | None:
        return await store.customer_by_email(session, email)

    async def sent_counts(
        self, session: AsyncSession, rcpt: str, moments: Sequence[datetime]
    ) -> list[int]:
        return await store.outgoing_counts_since(session, rcpt, moments)

    def queued(self, recipients: Iterable[str]) -> None:
        """Automatic mail to these recipients is decided in this transaction (the caps)."""
