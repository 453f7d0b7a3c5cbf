"""Stage 7: writes one decided message (ticket or follow-up, attachments, outbox) in a session."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from mailbridge.adapters.blobs import BlobStore
from mailbridge.adapters.db import store
from mailbridge.adapters.db.models import InboundMessage, TicketParticipant, utcnow
from mailbridge.errors import PermanentError
from mailbridge.pipeline.hours import next_opening
from mailbridge.pipeline.language import template_language
from mailbridge.pipeline.quotes import strip_quoted
from mailbridge.pipeline.render import AckContext, render_ack, render_cc_rejection
from mailbridge.pipeline.thread import format_number
from mailbridge.records import (
    Action,
    Decision,
    Outcome,
    OutgoingMail,
    ParsedMail,
    Plan,
    Priority,
    ProcessResult,
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
        self, session: AsyncSession, inbound: InboundMessage, plan: Plan
    ) -> tuple[ProcessResult, OutgoingMail | None]:
        """The rows for one message, and the mail it queued if any; the caller commits.

        `inbound` may be new (not yet in the session): it is inserted once its outcome is set,
        so it costs one INSERT and no UPDATE.
        """
        decision = plan.decision
        verdict = decision.verdict
        inbound.reasons = [{"rule": r.rule, "detail": r.detail} for r in verdict.reasons]
        inbound.reasons += [
            {"rule": r.rule, "detail": r.detail, "kind": "no_answer"}
            for r in plan.answer_suppressions
        ]
        if verdict.action is Action.REJECT:
            inbound.outcome = Outcome.REJECTED.value
            if not plan.answer_suppressions:
                reply = self.render_cc_rejection(decision)
                # Its Message-ID comes from theirs (or their content when they sent none): a
                # copy that differs only in its routing headers was answered already.
                if await store.outbox_has(session, reply.message_id):
                    inbound.reasons = [
                        *inbound.reasons,
                        {
                            "rule": "already_answered",
                            "detail": reply.message_id,
                            "kind": "no_answer",
                        },
                    ]
                else:
                    inbound_id = await self._inbound_id(session, inbound)
                    self._queue(session, reply, None, inbound_id)
                    return ProcessResult(Outcome.REJECTED, inbound_id), reply
            return ProcessResult(Outcome.REJECTED, await self._inbound_id(session, inbound)), None
        await self._store_attachments(decision.parsed)
        if decision.thread.ticket_number is not None:
            return await self._follow_up(session, inbound, decision), None
        return await self._new_ticket(session, inbound, plan)

    @staticmethod
    async def _inbound_id(session: AsyncSession, inbound: InboundMessage) -> int:
        """Insert (or update) the inbound row now that its outcome is known; its id."""
        session.add(inbound)
        await session.flush()
        return inbound.id

    async def _store_attachments(self, parsed: ParsedMail) -> None:
        # Bytes first, rows after: a crash leaves an orphan file, never a row without bytes.
        for attachment in parsed.attachments:
            await asyncio.to_thread(self.blobs.put, attachment.data)

    async def _follow_up(
        self, session: AsyncSession, inbound: InboundMessage, decision: Decision
    ) -> ProcessResult:
        number = decision.thread.ticket_number or ""
        ticket = await store.ticket_by_number(session, number)
        if ticket is None:
            raise PermanentError("thread", f"ticket {number} vanished while joining it")
        parsed = decision.parsed
        display = strip_quoted(parsed.body_text)
        ticket.updated_at = utcnow()
        if ticket.status != "open":
            ticket.status = "open"  # a customer writing again reopens a solved ticket
        inbound.ticket_id = ticket.id
        inbound.outcome = Outcome.FOLLOW_UP.value
        inbound_id = await self._inbound_id(session, inbound)
        session.add(store.new_message(ticket.id, inbound_id, parsed, display))
        return ProcessResult(Outcome.FOLLOW_UP, inbound_id, ticket.number)

    async def _new_ticket(
        self, session: AsyncSession, inbound: InboundMessage, plan: Plan
    ) -> tuple[ProcessResult, OutgoingMail | None]:
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
        session.add(ticket)
        await session.flush()  # the id is the ticket number's source
        ticket.number = format_number(self.settings.tickets.number_format, ticket.id)
        participants = {ticket.requester_email: "requester"} if ticket.requester_email else {}
        for address in ticket.cc_addresses:
            participants.setdefault(address, "cc")
        for email, role in participants.items():
            session.add(TicketParticipant(ticket_id=ticket.id, email=email, role=role))
        inbound.ticket_id = ticket.id
        inbound.outcome = Outcome.TICKET_CREATED.value
        inbound_id = await self._inbound_id(session, inbound)
        session.add(store.new_message(ticket.id, inbound_id, parsed, parsed.body_text))
        result = ProcessResult(Outcome.TICKET_CREATED, inbound_id, ticket.number)
        if plan.answer_suppressions:
            return result, None
        ack = self.render_ack(decision, ticket.number)
        self._queue(session, ack, ticket.id, inbound_id)
        return result, ack

    def render_ack(self, decision: Decision, number: str) -> OutgoingMail:
        parsed = decision.parsed
        classification = decision.classification
        requester = parsed.reply_address
        assert requester is not None
        assert classification is not None
        received = self.clock()
        context = AckContext(
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
        return render_ack(context, self.settings.ack, templates_dir=self.settings.ack.templates_dir)

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

    @staticmethod
    def _queue(
        session: AsyncSession, mail: OutgoingMail, ticket_id: int | None, inbound_id: int
    ) -> None:
        session.add(store.outbox_row(mail, ticket_id=ticket_id, inbound_id=inbound_id))
