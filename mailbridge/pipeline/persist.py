"""Stage 7: a decided message's rows (ticket or follow-up, attachments, outbox) in a session."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from mailbridge.adapters.blobs import BlobStore
from mailbridge.adapters.db import store
from mailbridge.adapters.db.models import InboundMessage, TicketParticipant, utcnow
from mailbridge.errors import PermanentError
from mailbridge.pipeline.hours import next_opening
from mailbridge.pipeline.language import template_language
from mailbridge.pipeline.mailsafe import recipient_key
from mailbridge.pipeline.quotes import strip_quoted
from mailbridge.pipeline.render import AckContext, render_ack, render_cc_rejection
from mailbridge.pipeline.thread import format_number
from mailbridge.pipeline.transaction import OpenTransaction, WaitingTicket, Written
from mailbridge.records import (
    Action,
    Decision,
    Outcome,
    OutgoingMail,
    ParsedMail,
    Plan,
    Priority,
    TicketType,
)
from mailbridge.settings import Settings


class TicketWriter:
    """Applies a Plan inside the caller's transaction; the caller commits, then IMAP settles."""

    def __init__(self, settings: Settings, blobs: BlobStore, clock: Callable[[], datetime]) -> None:
        self.settings = settings
        self.blobs = blobs
        self.clock = clock

    async def write(
        self,
        session: AsyncSession,
        inbound: InboundMessage,
        plan: Plan,
        txn: OpenTransaction,
    ) -> Written:
        """Add the rows for one message to the session; `finish` completes them.

        Nothing is flushed on purpose (a look-up here may autoflush what is pending): the
        rows of a batch are inserted together at `finish`, each table in as few statements
        as the driver allows. A new ticket waits in `txn` for the id its number is made from.
        """
        decision = plan.decision
        verdict = decision.verdict
        inbound.reasons = [{"rule": r.rule, "detail": r.detail} for r in verdict.reasons]
        inbound.reasons += [
            {"rule": r.rule, "detail": r.detail, "kind": "no_answer"}
            for r in plan.answer_suppressions
        ]
        session.add(inbound)
        if verdict.action is Action.REJECT:
            inbound.outcome = Outcome.REJECTED.value
            if not plan.answer_suppressions:
                await self._answer_cc(session, inbound, decision, txn)
            return Written(Outcome.REJECTED, inbound)
        await self._store_attachments(decision.parsed)
        if decision.thread.ticket_number is not None:
            return await self._follow_up(session, inbound, decision)
        return await self._new_ticket(session, inbound, plan, txn)

    async def finish(self, session: AsyncSession, txn: OpenTransaction) -> None:
        """Insert what waits, then number the new tickets and queue their acknowledgements."""
        if not txn.waiting:
            return
        await session.flush()  # the ids are the ticket numbers' source
        for waiting in txn.waiting:
            ticket = waiting.ticket
            ticket.number = format_number(self.settings.tickets.number_format, ticket.id)
            if waiting.ack is not None:
                ack = self.render(replace(waiting.ack, ticket_number=ticket.number))
                session.add(
                    store.outbox_row(ack, ticket_id=ticket.id, inbound_id=waiting.inbound.id)
                )
        txn.waiting.clear()
        await session.flush()

    async def _answer_cc(
        self,
        session: AsyncSession,
        inbound: InboundMessage,
        decision: Decision,
        txn: OpenTransaction,
    ) -> None:
        reply = self.render_cc_rejection(decision)
        # Its Message-ID comes from theirs (or their content when they sent none): a copy
        # that differs only in its routing headers was answered already.
        if await store.outbox_has(session, reply.message_id):
            inbound.reasons = [
                *inbound.reasons,
                {"rule": "already_answered", "detail": reply.message_id, "kind": "no_answer"},
            ]
            return
        row = store.outbox_row(reply, ticket_id=None, inbound_id=None)
        row.inbound = inbound
        session.add(row)
        txn.queued(reply.rcpt_to)

    async def _store_attachments(self, parsed: ParsedMail) -> None:
        # Bytes first, rows after: a crash leaves an orphan file, never a row without bytes.
        for attachment in parsed.attachments:
            await asyncio.to_thread(self.blobs.put, attachment.data)

    async def _follow_up(
        self, session: AsyncSession, inbound: InboundMessage, decision: Decision
    ) -> Written:
        number = decision.thread.ticket_number or ""
        ticket = await store.ticket_by_number(session, number)
        if ticket is None:
            raise PermanentError("thread", f"ticket {number} vanished while joining it")
        parsed = decision.parsed
        ticket.updated_at = utcnow()
        if ticket.status != "open":
            ticket.status = "open"  # a customer writing again reopens a solved ticket
        inbound.ticket_id = ticket.id
        inbound.outcome = Outcome.FOLLOW_UP.value
        message = store.new_message(ticket.id, None, parsed, strip_quoted(parsed.body_text))
        message.inbound = inbound
        session.add(message)
        return Written(Outcome.FOLLOW_UP, inbound, number=ticket.number)

    async def _new_ticket(
        self, session: AsyncSession, inbound: InboundMessage, plan: Plan, txn: OpenTransaction
    ) -> Written:
        decision = plan.decision
        parsed, verdict = decision.parsed, decision.verdict
        classification = decision.classification
        assert classification is not None
        requester = parsed.requester
        linked_id = None
        if decision.thread.linked_number:
            linked = await store.ticket_by_number(session, decision.thread.linked_number)
            linked_id = linked.id if linked else None
        flagged = verdict.action is Action.FLAG
        cc = [a.key for a in verdict.cc_addresses] if flagged else []
        ticket = store.new_ticket(
            parsed,
            classification,
            requester_email=requester.key if requester else "",
            requester_name=requester.name if requester else "",
            language=decision.language,
            cc_flag=flagged,
            cc_addresses=cc,
            linked_ticket_id=linked_id,
        )
        participants = {ticket.requester_email: "requester"} if ticket.requester_email else {}
        for address in ticket.cc_addresses:
            participants.setdefault(address, "cc")
        for email, role in participants.items():
            ticket.participants.append(TicketParticipant(email=email, role=role))
        message = store.new_message(None, None, parsed, parsed.body_text)
        message.inbound = inbound
        ticket.messages.append(message)
        inbound.ticket = ticket
        inbound.outcome = Outcome.TICKET_CREATED.value
        session.add(ticket)
        answered = not plan.answer_suppressions
        # The acknowledgement's words, not the message: its attachments need not wait too.
        ack = self.ack_context(decision, "") if answered else None
        txn.waiting.append(WaitingTicket(ticket, inbound, ack))
        if answered and parsed.reply_address is not None:
            txn.queued([recipient_key(parsed.reply_address)])
        return Written(Outcome.TICKET_CREATED, inbound, ticket=ticket)

    def render_ack(self, decision: Decision, number: str) -> OutgoingMail:
        return self.render(self.ack_context(decision, number))

    def render(self, context: AckContext) -> OutgoingMail:
        return render_ack(context, self.settings.ack, templates_dir=self.settings.ack.templates_dir)

    def ack_context(self, decision: Decision, number: str) -> AckContext:
        """What the acknowledgement says, taken from the message (none of its attachments)."""
        parsed = decision.parsed
        classification = decision.classification
        requester = parsed.reply_address
        assert requester is not None
        assert classification is not None
        received = self.clock()
        return AckContext(
            ticket_number=number,
            subject=parsed.subject,
            requester=requester,
            language=self._script_language(decision),
            received_at=received,
            next_opening=next_opening(received, self.settings.hours),
            urgent=classification.priority is Priority.URGENT,
            emergency_phone=self.settings.ack.emergency_phone,
            ask_for_screenshot=classification.ticket_type is TicketType.BUG
            and not any(a.is_image for a in parsed.attachments),
            in_reply_to=parsed.message_id,
            references=parsed.references,
            company=self.settings.ack.company,
            hours_text_inputs=self.settings.hours,
            omitted=parsed.omitted,
        )

    def render_cc_rejection(self, decision: Decision) -> OutgoingMail:
        return render_cc_rejection(
            parsed=decision.parsed,
            cc=decision.verdict.cc_addresses,
            language=self._script_language(decision),
            ack=self.settings.ack,
            support_address=self.settings.ack.from_address,
            templates_dir=self.settings.ack.templates_dir,
        )

    @staticmethod
    def _script_language(decision: Decision) -> str:
        """The template variant: Serbian writers in Cyrillic are answered in Cyrillic."""
        parsed = decision.parsed
        return template_language(
            decision.language,
            text=f"{parsed.subject}\n{parsed.body_text[:2000]}",
            tag=parsed.header("Content-Language"),
        )
