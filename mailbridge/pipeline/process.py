"""Stages 3–7 for one message: parse, screen, thread, classify, then persist in one transaction."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mailbridge.adapters.blobs import BlobStore
from mailbridge.adapters.db import store
from mailbridge.adapters.db.models import InboundMessage, utcnow
from mailbridge.adapters.db.store import clean
from mailbridge.errors import PermanentError, TransientError
from mailbridge.logs import bound_contextvars, get_logger
from mailbridge.pipeline.classify import classify
from mailbridge.pipeline.dedupe import dedupe_key, same_as_held, same_as_row, variant_key
from mailbridge.pipeline.language import choose_language
from mailbridge.pipeline.mailsafe import recipient_key
from mailbridge.pipeline.parse import parse_message
from mailbridge.pipeline.persist import TicketWriter
from mailbridge.pipeline.screen import ScreenPolicy, screen
from mailbridge.pipeline.thread import choose_thread, thread_hint
from mailbridge.pipeline.transaction import OpenTransaction, Written
from mailbridge.records import (
    Decision,
    Intake,
    Outcome,
    OutgoingMail,
    ParsedMail,
    Plan,
    ProcessResult,
    Reason,
    Verdict,
)
from mailbridge.settings import Settings

log = get_logger(__name__)

# Parsing a large message takes a while in pure Python; off the loop it cannot stall IDLE.
_PARSE_OFF_LOOP_BYTES = 256 * 1024


class StageTracker:
    """Which stage a message is in, so a failure is recorded against the stage that raised."""

    __slots__ = ("name",)

    def __init__(self, name: str = "parse") -> None:
        self.name = name


async def held_results(session: AsyncSession, keys: Sequence[str]) -> dict[str, ProcessResult]:
    """What messages already held under these dedupe keys became (marked as duplicates)."""
    found = await store.held_by_keys(session, keys)
    return {
        key: ProcessResult(
            Outcome(outcome) if outcome else Outcome.QUARANTINED,
            inbound_id,
            number,
            error,
            stage,
            duplicate=True,
        )
        for key, (inbound_id, outcome, number, error, stage) in found.items()
    }


async def advance_checkpoint(session: AsyncSession, intakes: Iterable[Intake]) -> None:
    """Move each IMAP folder's checkpoint to the highest UID among these messages."""
    highest: dict[tuple[str, int], int] = {}
    for intake in intakes:
        if intake.mailbox is not None and intake.uidvalidity is not None and intake.uid:
            where = (intake.mailbox, intake.uidvalidity)
            highest[where] = max(highest.get(where, 0), intake.uid)
    for (mailbox, uidvalidity), uid in highest.items():
        await store.advance_checkpoint(session, mailbox, uidvalidity, uid)


def log_result(result: ProcessResult) -> None:
    log.info(result.outcome.value, ticket=result.ticket_number, inbound_id=result.inbound_id)


class Processor:
    """Runs one message through the pipeline; the same code serves run, ingest, replay, inspect."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        blobs: BlobStore,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.blobs = blobs
        self.clock = clock
        self.policy = ScreenPolicy.from_settings(settings)
        self.writer = TicketWriter(settings, blobs, clock)

    async def parse(self, data: bytes) -> ParsedMail:
        limit = self.settings.storage.max_attachment_bytes
        if len(data) > self.settings.storage.max_message_bytes:
            limit = 0  # too large: keep the text, list every attachment as left out
        if len(data) >= _PARSE_OFF_LOOP_BYTES:
            return await asyncio.to_thread(parse_message, data, max_attachment_bytes=limit)
        return parse_message(data, max_attachment_bytes=limit)

    async def plan(
        self,
        session: AsyncSession,
        parsed: ParsedMail,
        stage: StageTracker | None = None,
        txn: OpenTransaction | None = None,
    ) -> Plan:
        """Every decision about a message, from what the database holds.

        It writes nothing of its own; a reply to a message of the same open transaction
        first has that transaction's pending rows flushed (and new tickets numbered), so the
        threading look-up sees them.
        """
        stage = stage or StageTracker()
        txn = txn or OpenTransaction()
        stage.name = "screen"
        verdict = screen(parsed, self.policy)
        stage.name = "thread"
        hint = thread_hint(parsed, self.settings.tickets.number_format)
        if hint.referenced_ids or hint.ticket_numbers:
            await self.writer.finish(session, txn)
            await session.flush()  # explicit: the look-up must not depend on autoflush
        requester = parsed.requester
        thread = choose_thread(
            hint,
            by_reference=await store.tickets_by_reference(session, hint.referenced_ids),
            by_number=await store.tickets_by_number(session, hint.ticket_numbers),
            sender=requester.key if requester else None,
        )
        stage.name = "classify"
        customer = await txn.customer(session, requester.key if requester else None)
        classification = classify(
            parsed,
            self.settings.classify,
            customer=customer,
            own_addresses=self.settings.own_addresses,
        )
        language = choose_language(
            customer_language=customer.language if customer else None,
            content_language=parsed.header("Content-Language"),
            text=f"{parsed.subject}\n{parsed.body_text[:2000]}",
            default=self.settings.ack.default_language,
        )
        decision = Decision(parsed, verdict, classification, thread, language)
        stage.name = "persist"
        suppressions = await self._answer_suppressions(session, parsed, verdict, txn)
        return Plan(decision, customer, suppressions)

    async def _answer_suppressions(
        self, session: AsyncSession, parsed: ParsedMail, verdict: Verdict, txn: OpenTransaction
    ) -> tuple[Reason, ...]:
        reasons = list(verdict.suppressions)
        if not self.settings.ack.enabled:
            reasons.append(Reason("acks_disabled", "ack.enabled is false"))
        address = parsed.reply_address
        if address is None:
            return tuple(reasons)  # the screen has recorded why: no_sender
        now = self.clock()
        caps = (
            ("rate_cap_hour", timedelta(hours=1), self.settings.ack.max_per_recipient_hour),
            ("rate_cap_day", timedelta(days=1), self.settings.ack.max_per_recipient_day),
        )
        counts = await txn.sent_counts(
            session, recipient_key(address), [now - window for _rule, window, _cap in caps]
        )
        for (rule, _window, cap), sent in zip(caps, counts, strict=True):
            if sent >= cap:
                reasons.append(Reason(rule, f"{sent} automatic answers to {address.key} already"))
        return tuple(reasons)

    async def process(self, intake: Intake) -> ProcessResult:
        """One message to exactly one end: ticket, follow-up, rejection, or quarantine.

        Raises TransientError when it should be tried again later unchanged.
        """
        key, message_id = dedupe_key(intake.data)
        # Context variables reach every log line made while this message is in hand, the
        # libraries' stdlib records included (logs.configure merges them).
        with bound_contextvars(mailbox=intake.mailbox, uid=intake.uid, message_id=message_id):
            existing = await self._existing(key)
            if existing is not None and not await self._same_as_held(key, intake.data):
                key = variant_key(key, intake.data)
                existing = await self._existing(key)
            if existing is not None:
                log.info("message_already_held", inbound_id=existing.inbound_id)
                return existing
            return await self._run(intake, key, message_id)

    async def record_unreadable(self, intake: Intake, reason: str) -> ProcessResult:
        """A message whose bytes never arrived: a quarantined record saying why, keyed by its
        IMAP location (there is no content to key it by), so it is settled and listed."""
        key = f"unreadable:{intake.mailbox}:{intake.uidvalidity}:{intake.uid}"
        with bound_contextvars(mailbox=intake.mailbox, uid=intake.uid):
            error = PermanentError("fetch", reason)
            return await self._quarantine(intake, key, None, "fetch", error)

    async def replay(self, inbound_id: int) -> ProcessResult:
        """Run a failed message again from its stored bytes, updating its record in place."""
        async with self.sessions() as session:
            row = await session.get(InboundMessage, inbound_id)
            if row is None:
                raise LookupError(f"no inbound message {inbound_id}")
            if row.state != "failed":
                raise ValueError(f"inbound message {inbound_id} is {row.state}, not failed")
            if row.size == 0:
                raise ValueError(f"inbound message {inbound_id} has no bytes to replay")
            intake = Intake(self.blobs.kept_raw(row.raw, row.sha256, row.size), "replay")
            key, message_id = row.dedupe_key, row.message_id
        with bound_contextvars(inbound_id=inbound_id, message_id=message_id, replay=True):
            return await self._run(intake, key, message_id, existing_id=inbound_id)

    async def preview(self, data: bytes) -> Plan:
        """What `process` would decide for these bytes, writing nothing (inspect, dry runs)."""
        parsed = await self.parse(data)
        async with self.sessions() as session:
            return await self.plan(session, parsed)

    async def _run(
        self,
        intake: Intake,
        key: str,
        message_id: str | None,
        *,
        existing_id: int | None = None,
    ) -> ProcessResult:
        stage = StageTracker("parse")
        try:
            parsed = await self.parse(intake.data)
            txn = OpenTransaction()
            async with self.sessions.begin() as session:
                written = await self.write_one(
                    session, intake, key, parsed, stage, existing_id, txn
                )
                await self.writer.finish(session, txn)
                await advance_checkpoint(session, [intake])
                await session.flush()
                result = written.result()
            log_result(result)
            return result
        except (TransientError, OperationalError, ConnectionError, TimeoutError) as error:
            first_line = (str(error).splitlines() or [type(error).__name__])[0]
            log.warning("message_deferred", stage=stage.name, error=first_line)
            raise TransientError(first_line) from error
        except IntegrityError as error:
            raced = await self._existing(key) if existing_id is None else None
            if raced is not None:
                if await self._same_as_held(key, intake.data):
                    return raced
                # Another message won the race for this Message-ID: this one gets its own key.
                variant = variant_key(key, intake.data)
                held = await self._existing(variant)
                return held if held is not None else await self._run(intake, variant, message_id)
            return await self._quarantine(intake, key, message_id, stage.name, error)
        except DBAPIError as error:
            if error.connection_invalidated:
                raise TransientError(str(error).splitlines()[0]) from error
            return await self._quarantine(intake, key, message_id, stage.name, error)
        except Exception as error:
            failed_stage = error.stage if isinstance(error, PermanentError) else stage.name
            return await self._quarantine(intake, key, message_id, failed_stage, error)

    async def write_one(
        self,
        session: AsyncSession,
        intake: Intake,
        key: str,
        parsed: ParsedMail,
        stage: StageTracker,
        existing_id: int | None,
        txn: OpenTransaction,
    ) -> Written:
        """Plan one parsed message and add its rows to the caller's transaction, which then
        calls `writer.finish` and flushes; errors propagate."""
        plan = await self.plan(session, parsed, stage, txn)
        if existing_id is None:
            raw = await self._raw_to_keep(intake.data)
            inbound = self._inbound_row(intake, key, parsed.message_id, raw, state="done")
        else:
            inbound = await self._reopen(session, existing_id)
        return await self.writer.write(session, inbound, plan, txn)

    async def _reopen(self, session: AsyncSession, inbound_id: int) -> InboundMessage:
        row = await session.get(InboundMessage, inbound_id, with_for_update=True)
        if row is None or row.state != "failed":
            raise TransientError(f"inbound message {inbound_id} changed while replaying it")
        row.state, row.attempts, row.updated_at = "done", row.attempts + 1, utcnow()
        row.stage = row.error_class = row.error = None
        return row

    async def _existing(self, key: str) -> ProcessResult | None:
        async with self.sessions() as session:
            return (await held_results(session, [key])).get(key)

    async def _same_as_held(self, key: str, data: bytes) -> bool:
        async with self.sessions() as session:
            return await same_as_held(session, self.blobs, key, data)

    async def _raw_to_keep(self, data: bytes, *, quarantine: bool = False) -> bytes:
        """What the inbound row keeps of the raw message: its bytes, or b"" once a large one
        is in the blob store (bytes first, row after, as for attachments).

        A quarantine record keeps the bytes in its row when the store refuses them: the
        failure being recorded may be the store's own.
        """
        if len(data) <= self.settings.storage.raw_inline_max_bytes:
            return data
        try:
            await asyncio.to_thread(self.blobs.put, data)
        except (TransientError, PermanentError):
            if quarantine:
                return data
            raise
        return b""

    def _inbound_row(
        self, intake: Intake, key: str, message_id: str | None, raw: bytes, *, state: str
    ) -> InboundMessage:
        return InboundMessage(
            dedupe_key=key,
            source=intake.source,
            mailbox=intake.mailbox,
            uidvalidity=intake.uidvalidity,
            uid=intake.uid,
            message_id=clean(message_id, 998) or None,
            sha256=hashlib.sha256(intake.data).hexdigest(),
            size=len(intake.data),
            raw=raw,
            state=state,
            attempts=1,
            reasons=[],
        )

    def render_ack(self, decision: Decision, number: str) -> OutgoingMail:
        """The acknowledgement a new ticket with this number would get (inspect shows it)."""
        return self.writer.render_ack(decision, number)

    async def _quarantine(
        self, intake: Intake, key: str, message_id: str | None, stage: str, error: Exception
    ) -> ProcessResult:
        """Keep the raw bytes with the error, so an admin can see why and replay it."""
        detail = clean(f"{error}", 4000) or type(error).__name__
        log.error(
            "message_quarantined",
            stage=stage,
            error_class=type(error).__name__,
            error=detail.splitlines()[0] if detail else "",
            exc_info=not isinstance(error, PermanentError),
        )
        try:
            # Under its key, or under a variant when another message holds the key (a reused
            # Message-ID): the variant is made from this message's own content.
            for held_as in (key, variant_key(key, intake.data)):
                found = await self._record_failure(
                    intake, held_as, message_id, stage=stage, error=error, detail=detail
                )
                if found is not None:
                    return found
        except (OperationalError, DBAPIError, OSError) as db_error:
            raise TransientError(f"cannot record the failure: {db_error}") from db_error
        raise TransientError(f"cannot record the failure: {key} and its variant are taken")

    async def _record_failure(
        self,
        intake: Intake,
        key: str,
        message_id: str | None,
        *,
        stage: str,
        error: Exception,
        detail: str,
    ) -> ProcessResult | None:
        """The failure recorded under `key`; None when a different message holds the key."""
        async with self.sessions.begin() as session:
            row = await store.inbound_by_key(session, key)
            if not await same_as_row(self.blobs, row, intake.data):
                return None
            if row is not None and row.state != "failed":
                # Another worker committed this message meanwhile (the same mail in two
                # folders): its record stands, and this copy is a duplicate of it.
                held = (await held_results(session, [key]))[key]
                log.info("message_already_held", inbound_id=held.inbound_id)
                return held
            if row is None:
                raw = await self._raw_to_keep(intake.data, quarantine=True)
                row = self._inbound_row(intake, key, message_id, raw, state="failed")
                session.add(row)
            else:
                row.attempts += 1
            row.state, row.outcome, row.stage = "failed", Outcome.QUARANTINED.value, stage
            row.error_class, row.error = type(error).__name__, detail
            row.updated_at = utcnow()
            await advance_checkpoint(session, [intake])
            await session.flush()
            return ProcessResult(Outcome.QUARANTINED, row.id, None, detail, stage)
