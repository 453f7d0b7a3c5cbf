"""A fetched batch of messages in one transaction, falling back to one at a time on any error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import structlog

from mailbridge.pipeline.process import (
    Processor,
    StageTracker,
    advance_checkpoint,
    dedupe_key,
    held_results,
    log_result,
)
from mailbridge.records import Intake, ProcessResult

log = structlog.get_logger(__name__)


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
        log.info("batch_split", messages=len(intakes), error_class=type(error).__name__,
                 error=first_line)  # fmt: skip
    handled: list[Handled] = []
    for intake in intakes:
        if stop is not None and stop.is_set():
            break
        began = time.perf_counter()
        result = await processor.process(intake)
        handled.append(Handled(intake, result, time.perf_counter() - began))
        beat()
    return handled


async def _in_one_transaction(
    processor: Processor,
    intakes: Sequence[Intake],
    stop: asyncio.Event | None,
    beat: Callable[[], None],
) -> list[Handled]:
    keys = [dedupe_key(intake.data) for intake in intakes]
    handled: list[Handled] = []
    async with processor.sessions.begin() as session:
        known = await held_results(session, [key for key, _message_id in keys])
        for intake, (key, message_id) in zip(intakes, keys, strict=True):
            if stop is not None and stop.is_set():
                break
            began = time.perf_counter()
            if key in known:
                result = replace(known[key], duplicate=True)
            else:
                with structlog.contextvars.bound_contextvars(
                    mailbox=intake.mailbox, uid=intake.uid, message_id=message_id
                ):
                    parsed = await processor.parse(intake.data)
                    result = await processor.write_one(
                        session, intake, key, parsed, StageTracker("parse")
                    )
                known[key] = result  # a second copy later in this batch is a duplicate
            handled.append(Handled(intake, result, time.perf_counter() - began))
            beat()
        await advance_checkpoint(session, (item.intake for item in handled))
    for item, (_key, message_id) in zip(handled, keys, strict=False):
        intake = item.intake
        with structlog.contextvars.bound_contextvars(
            mailbox=intake.mailbox, uid=intake.uid, message_id=message_id
        ):
            if item.result.duplicate:
                log.info("message_already_held", inbound_id=item.result.inbound_id)
            else:
                log_result(item.result)
    return handled
