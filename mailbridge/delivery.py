"""The outbox worker: sends committed outbox rows over SMTP, with retries and a final state."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, Table, Update, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.util import greenlet_spawn

from mailbridge.adapters.db.models import Outbox
from mailbridge.adapters.db.sender_lock import SenderLock
from mailbridge.adapters.smtp import SendResult, SendStatus, SmtpSender, retry_delay
from mailbridge.errors import TransientError
from mailbridge.logs import get_logger
from mailbridge.records import OutgoingMail
from mailbridge.settings import SmtpSettings

log = get_logger(__name__)

_BATCH = 50
# How long a drain waits for another process's drain to end before leaving the rows to it.
LOCK_WAIT_SECONDS = 10.0


def _recording(*dated: str) -> Update:
    """The UPDATE recording one send's outcome; `dated` names the time column it also sets.

    Guarded by the state it was sent from: a row an admin discarded or retried meanwhile is
    left as they made it. Built once, on the table with bound parameters: building the ORM
    statement and its cache key for every send cost about a sixth of each send's CPU.
    """
    table: Table = Outbox.__table__  # type: ignore[assignment]
    values = {
        "attempts": table.c.attempts + 1,
        "state": bindparam("new_state", type_=table.c.state.type),
        "uncertain": bindparam("new_uncertain", type_=table.c.uncertain.type),
        "last_error": bindparam("new_last_error", type_=table.c.last_error.type),
    }
    for column in dated:
        values[column] = bindparam(f"new_{column}", type_=table.c[column].type)
    guard = (table.c.id == bindparam("row_id"), table.c.state == "pending")
    return update(table).where(*guard).values(values)


_RECORD = {
    "sent": _recording("sent_at"),
    "pending": _recording("next_attempt_at"),
    "failed": _recording(),
}


def _record(engine: Engine, state: str, params: dict[str, object]) -> int:
    """Commit one outcome on a pooled connection; the number of rows it changed (0 or 1).

    Run whole in one greenlet: through the asyncio API, connect, begin, execute, commit and
    close each switched greenlets, about a seventh of each send's CPU.
    """
    with engine.begin() as connection:
        return connection.execute(_RECORD[state], params).rowcount


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What one pass over the due outbox rows did."""

    sent: int = 0
    retried: int = 0
    failed: int = 0

    def __add__(self, other: DrainReport) -> DrainReport:
        return DrainReport(
            self.sent + other.sent, self.retried + other.retried, self.failed + other.failed
        )


def outgoing_of(row: Outbox) -> OutgoingMail:
    return OutgoingMail(
        kind=row.kind,
        message_id=row.message_id,
        mail_from=row.mail_from,
        rcpt_to=tuple(r for r in row.rcpt_to.split(",") if r),
        data=row.data,
    )


def next_state(
    row_attempts: int,
    row_uncertain: bool,
    result: SendResult,
    settings: SmtpSettings,
    now: datetime,
    rng: random.Random,
) -> tuple[str, datetime | None, bool]:
    """(state, next attempt, uncertain) after one send; pure so the rules are easy to test.

    4xx and network trouble retry with capped jittered backoff until `max_attempts`; 5xx is
    final; a send that may have arrived (timeout after the final dot) is retried only once,
    with the same Message-ID, so at worst the customer sees one duplicate they can recognise.
    """
    if result.status is SendStatus.SENT:
        return "sent", None, row_uncertain
    if result.status is SendStatus.FAILED:
        return "failed", None, row_uncertain
    attempts = row_attempts + 1
    if result.maybe_delivered and row_uncertain:
        return "failed", None, True
    if attempts >= settings.max_attempts:
        return "failed", None, row_uncertain or result.maybe_delivered
    delay = retry_delay(attempts, settings.backoff_base_seconds, settings.backoff_max_seconds, rng)
    return "pending", now + timedelta(seconds=delay), row_uncertain or result.maybe_delivered


def _last_error(result: SendResult) -> str | None:
    """What the admin sees: the server's own words, or who was refused of a delivered mail."""
    if result.status is not SendStatus.SENT:
        return result.detail
    if result.refused:
        return f"delivered, but refused for: {', '.join(result.refused)}"
    return None


async def outbox_stats(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, float | None]:
    """(pending rows, age in seconds of the oldest pending row or None)."""
    query = select(func.count(Outbox.id), func.min(Outbox.created_at)).where(
        Outbox.state == "pending"
    )
    async with sessions() as session:
        count, oldest = (await session.execute(query)).one()
    if oldest is None:
        return int(count), None
    if oldest.tzinfo is None:  # SQLite hands back naive UTC
        oldest = oldest.replace(tzinfo=UTC)
    return int(count), max(0.0, (datetime.now(UTC) - oldest).total_seconds())


class OutboxWorker:
    """Sends due outbox rows; one instance per process keeps one SMTP connection warm."""

    def __init__(
        self,
        settings: SmtpSettings,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sender: SmtpSender | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.clock = clock
        self.sender = sender or SmtpSender(settings)
        self.rng = rng or random.Random()
        self.kick = asyncio.Event()
        self.last_progress = clock()
        self.lock = SenderLock(sessions.kw["bind"])

    async def drain(self, *, include_not_due: bool = False) -> DrainReport:
        """Send every due row (every pending row when `include_not_due`), batch by batch.

        One pass visits each row at most once, in id order: a row retried for later is not
        picked up again by the same pass. Only one process drains a database at a time (see
        SenderLock): a pass that cannot have the lock within LOCK_WAIT_SECONDS sends nothing
        and leaves the rows to the process draining them.
        """
        if not await self.lock.acquire(LOCK_WAIT_SECONDS):
            log.info("outbox_busy_elsewhere", waited_seconds=LOCK_WAIT_SECONDS)
            return DrainReport()
        try:
            total = DrainReport()
            after = 0
            while True:
                if not await self.lock.still_held():  # see SenderLock.still_held
                    log.warning("outbox_lock_lost", sent_so_far=total.sent)
                    return total
                rows = await self._due(include_not_due, after)
                if not rows:
                    return total
                for row in rows:
                    after = row.id
                    total = total + await self._send_one(row)
        finally:
            await self.lock.release()

    async def _due(self, include_not_due: bool, after: int) -> list[Outbox]:
        # Keyset paging (id > the last one seen), not "id NOT IN (every id seen)": that list
        # grew with the backlog, and each length was a new prepared statement kept by the
        # driver (hundreds of MB after 20,000 acks, and SQLite's variable limit beyond).
        query = select(Outbox).where(Outbox.state == "pending", Outbox.id > after)
        if not include_not_due:
            query = query.where(Outbox.next_attempt_at <= self.clock())
        async with self.sessions() as session:
            return list((await session.scalars(query.order_by(Outbox.id).limit(_BATCH))).all())

    async def _send_one(self, row: Outbox) -> DrainReport:
        bound = log.bind(outbox_id=row.id, kind=row.kind, message_id=row.message_id)
        result = await self.sender.send(outgoing_of(row))
        now = self.clock()
        state, next_at, uncertain = next_state(
            row.attempts, row.uncertain, result, self.settings, now, self.rng
        )
        # Every outcome's parameters; each statement in _RECORD binds only those it names.
        params: dict[str, object] = {
            "row_id": row.id,
            "new_state": state,
            "new_uncertain": uncertain,
            "new_last_error": _last_error(result),
            "new_sent_at": now,
            "new_next_attempt_at": next_at,
        }
        # On a bare connection: an ORM session around one statement cost about an eighth of
        # each send's CPU.
        engine: AsyncEngine = self.sessions.kw["bind"]
        if not await greenlet_spawn(_record, engine.sync_engine, state, params):
            return DrainReport()
        self.last_progress = now
        if state == "sent":
            bound.info("outbox_sent", detail=result.detail, refused=list(result.refused) or None)
            return DrainReport(sent=1)
        if state == "failed":
            bound.error("outbox_failed", detail=result.detail, attempts=row.attempts + 1)
            return DrainReport(failed=1)
        bound.warning("outbox_retry_scheduled", detail=result.detail, next_attempt_at=next_at)
        return DrainReport(retried=1)

    async def run(self, stop: asyncio.Event) -> None:
        """Send as rows come due, woken early by `kick` after new rows are committed."""
        while not stop.is_set():
            # Cleared before draining, so a kick that comes in mid-drain is not lost.
            self.kick.clear()
            try:
                await self.drain()
            except TransientError as error:
                log.warning("outbox_drain_deferred", error=str(error))
            except Exception:
                log.exception("outbox_drain_failed")
            self.last_progress = self.clock()
            waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.kick.wait())}
            _done, pending = await asyncio.wait(
                waiters, timeout=self.settings.poll_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()

    async def close(self) -> None:
        await self.sender.close()
