"""A fetched batch of messages in one transaction, falling back to one at a time on any error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mailbridge.adapters.db import store
from mailbridge.errors import PermanentError, TransientError
from mailbridge.logs import bound_contextvars, get_logger
from mailbridge.pipeline.dedupe import dedupe_key, distinct_keys
from mailbridge.pipeline.mailsafe import recipient_key
from mailbridge.pipeline.process import (
    Processor,
    StageTracker,
    advance_checkpoint,
    held_results,
    log_result,
)
from mailbridge.pipeline.transaction import OpenTransaction, Written
from mailbridge.records import CustomerView, Intake, ParsedMail, ProcessResult

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Handled:
    """One message of a batch and what became of it, committed."""

    intake: Intake
    result: ProcessResult
    seconds: float


async def process_batch(
    processor: Processor,
    intakes: Sequence[Intake],
    *,
    stop: asyncio.Event | None = None,
    beat: Callable[[], None] = lambda: None,
) -> list[Handled]:
    """Process messages in order until done or `stop` is set; everything returned is committed.

    One transaction (and one checkpoint write) for the whole batch is what makes a backlog
    drain fast; per message it saves a commit, a session and the dedupe look-up's round trip.
    A message that fails inside it (a quarantine case, a lost race, a full disk) rolls the
    batch back, and the batch is run again through `Processor.process` one message at a time,
    so each message still ends exactly as it would alone.
    """
    try:
        return await _in_one_transaction(processor, intakes, stop, beat)
    except Exception as error:  # each failure is met again, alone, one by one below
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        # The expected failures are one message's (a quarantine case, a lost race, a
        # deferral); anything else may be a bug of the batch path itself: say so loudly.
        expected = isinstance(error, PermanentError | TransientError | IntegrityError)
        (log.info if expected else log.warning)(
            "batch_split", messages=len(intakes), error_class=type(error).__name__,
            error=first_line, exc_info=None if expected else error,
        )  # fmt: skip
    handled: list[Handled] = []
    for intake in intakes:
        if stop is not None and stop.is_set():
            break
        began = time.perf_counter()
        result = await processor.process(intake)
        handled.append(Handled(intake, result, time.perf_counter() - began))
        beat()
    return handled


class BatchTransaction(OpenTransaction):
    """The plan's sender reads for a whole batch: one query each, for every sender at once.

    Counts of automatic mail are those of the first look plus what this batch has decided to
    send since, which is what asking again would give (another worker queueing to the same
    recipient meanwhile is not seen, as it would not be between a count and its insert).
    """

    def __init__(self, senders: Iterable[str], recipients: Iterable[str]) -> None:
        super().__init__()
        self.senders = {email.lower() for email in senders}
        self.recipients = {rcpt.lower() for rcpt in recipients}
        self.customers: dict[str, CustomerView] | None = None
        self.counts: dict[str, list[int]] | None = None
        self.windows = 0  # how many moments each count list has

    async def customer(self, session: AsyncSession, email: str | None) -> CustomerView | None:
        if not email or email.strip().lower() not in self.senders:
            return await super().customer(session, email)
        if self.customers is None:
            self.customers = await store.customers_by_email(session, self.senders)
        return self.customers.get(email.strip().lower())

    async def sent_counts(
        self, session: AsyncSession, rcpt: str, moments: Sequence[datetime]
    ) -> list[int]:
        if rcpt.lower() not in self.recipients:
            return await super().sent_counts(session, rcpt, moments)
        if self.counts is None:
            self.counts = await store.outgoing_counts_by_rcpt(session, self.recipients, moments)
            self.windows = len(moments)
        return list(self.counts.get(rcpt.lower(), [0] * self.windows))

    def queued(self, recipients: Iterable[str]) -> None:
        if self.counts is None:
            return  # not looked yet: the first look will count it
        for rcpt in recipients:
            key = rcpt.lower()
            if key in self.recipients:
                counts = self.counts.get(key, [0] * self.windows)
                self.counts[key] = [count + 1 for count in counts]


@dataclass(frozen=True, slots=True)
class _Step:
    """One message's place in the open batch: what was written, or what was held already."""

    intake: Intake
    key: str
    message_id: str | None
    outcome: Written | ProcessResult
    seconds: float


async def _in_one_transaction(
    processor: Processor,
    intakes: Sequence[Intake],
    stop: asyncio.Event | None,
    beat: Callable[[], None],
) -> list[Handled]:
    keys = [dedupe_key(intake.data) for intake in intakes]
    async with processor.sessions() as session:
        known = await held_results(session, [key for key, _message_id in keys])
        # A Message-ID reused by another message (held, or earlier in this batch) gets a
        # key of its own: a re-fetch is a duplicate, a different message is not.
        distinct = await distinct_keys(
            session,
            processor.blobs,
            [(key, intake.data) for (key, _id), intake in zip(keys, intakes, strict=True)],
            set(known),
        )
        renamed = [new for new, (old, _id) in zip(distinct, keys, strict=True) if new != old]
        if renamed:
            known |= await held_results(session, renamed)
        keys = [(new, message_id) for new, (_old, message_id) in zip(distinct, keys, strict=True)]
    # Parsed outside the transaction (no connection held idle meanwhile) and before it, so
    # that one query per batch answers the plan's questions about every sender.
    parsed, parse_seconds = await _parse_all(processor, intakes, keys, known, stop, beat)
    async with processor.sessions.begin() as session:
        txn = BatchTransaction(
            (mail.requester.key for mail in parsed.values() if mail.requester),
            (recipient_key(mail.reply_address) for mail in parsed.values() if mail.reply_address),
        )
        # A stop asked for while parsing ends the batch at the messages parsed so far: those
        # are written (milliseconds), committed and settled; the rest wait for the next start.
        steps: list[_Step] = []
        written: dict[str, Written] = {}  # a second copy later in this batch is a duplicate
        for index, (intake, (key, message_id)) in enumerate(zip(intakes, keys, strict=True)):
            began = time.perf_counter()
            outcome: Written | ProcessResult
            if key in known:
                outcome = replace(known[key], duplicate=True)
            elif key in written:
                outcome = written[key]
            elif index not in parsed:
                break
            else:
                with bound_contextvars(
                    mailbox=intake.mailbox, uid=intake.uid, message_id=message_id
                ):
                    outcome = written[key] = await processor.write_one(
                        session, intake, key, parsed.pop(index), StageTracker("screen"), None, txn
                    )
            seconds = time.perf_counter() - began + parse_seconds.get(index, 0.0)
            steps.append(_Step(intake, key, message_id, outcome, seconds))
            beat()
        await processor.writer.finish(session, txn)
        await advance_checkpoint(session, (step.intake for step in steps))
        await session.flush()
        handled = _results(steps)
    for step, item in zip(steps, handled, strict=True):
        with bound_contextvars(
            mailbox=step.intake.mailbox, uid=step.intake.uid, message_id=step.message_id
        ):
            if item.result.duplicate:
                log.info("message_already_held", inbound_id=item.result.inbound_id)
            else:
                log_result(item.result)
    return handled


async def _parse_all(
    processor: Processor,
    intakes: Sequence[Intake],
    keys: Sequence[tuple[str, str | None]],
    known: Mapping[str, ProcessResult],
    stop: asyncio.Event | None,
    beat: Callable[[], None],
) -> tuple[dict[int, ParsedMail], dict[int, float]]:
    """The batch's new messages parsed, by index, until a stop is asked for; and how long
    each took. A second copy of a message in the batch is not parsed: it will be a duplicate
    of the first."""
    parsed: dict[int, ParsedMail] = {}
    seconds: dict[int, float] = {}
    seen: set[str] = set(known)
    for index, (intake, (key, _message_id)) in enumerate(zip(intakes, keys, strict=True)):
        if stop is not None and stop.is_set():
            break
        if key not in seen:
            seen.add(key)
            began = time.perf_counter()
            parsed[index] = await processor.parse(intake.data)
            seconds[index] = time.perf_counter() - began
            beat()
    return parsed, seconds


def _results(steps: Sequence[_Step]) -> list[Handled]:
    """Each step's result, now that its rows are flushed and have their ids and numbers."""
    handled: list[Handled] = []
    resolved: set[str] = set()
    for step in steps:
        if isinstance(step.outcome, Written):
            result = step.outcome.result()
            if step.key in resolved:
                result = replace(result, duplicate=True)
            resolved.add(step.key)
        else:
            result = step.outcome
        handled.append(Handled(step.intake, result, step.seconds))
    return handled
