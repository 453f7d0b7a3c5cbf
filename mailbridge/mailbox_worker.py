"""One IMAP folder's worker: drain unsettled mail, settle after commit, IDLE or poll, reconnect.

Each worker shows that it makes progress by beating its `Liveness` (before every wait it says
how long the wait may take); a worker that misses its deadline is *stuck*. A mailbox that
cannot log in is not stuck: it retries with backoff while health and metrics show it failing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mailbridge.adapters.allocator import give_back_free_memory
from mailbridge.adapters.db import store
from mailbridge.adapters.imap import (
    MAX_UIDS_PER_COMMAND,
    FolderState,
    ImapClient,
    backoff_delay,
)
from mailbridge.adapters.oauth import TokenSource
from mailbridge.errors import TransientError
from mailbridge.logs import get_logger
from mailbridge.metrics import Metrics
from mailbridge.pipeline.batch import process_batch
from mailbridge.pipeline.process import Processor
from mailbridge.records import Intake, Outcome, ProcessResult, RawMail
from mailbridge.settings import DEFAULT_ACCOUNT, DaemonSettings, ImapSettings

log = get_logger(__name__)

SIZE_WINDOW = MAX_UIDS_PER_COMMAND
# A batch holding a message this large is worth a garbage collection and a heap trim around it.
LARGE_MESSAGE_BYTES = 2 * 1024 * 1024
# A message the server lists but whose body it does not return (one its store cannot read)
# is recorded as quarantined after this many fetches in a row, and moved, not fetched for ever.
UNREADABLE_AFTER = 3
UNREADABLE_PAUSE_SECONDS = 1.0  # between those fetches: a server's passing hiccup is not this


def folder_for(outcome: Outcome, imap: ImapSettings) -> str:
    """Where a message goes on the server once its outcome is committed."""
    if outcome in (Outcome.TICKET_CREATED, Outcome.FOLLOW_UP):
        return imap.processed_folder
    if outcome is Outcome.REJECTED:
        return imap.rejected_folder
    return imap.quarantine_folder


def fetch_batches(
    uids: Sequence[int], sizes: Mapping[int, int], max_count: int, max_bytes: int
) -> list[list[int]]:
    """UIDs in order, cut into batches of at most `max_count` messages and `max_bytes` (a
    larger message goes alone): a batch is held in memory whole, raw and parsed."""
    batches: list[list[int]] = []
    batch: list[int] = []
    held = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if batch and (len(batch) >= max_count or held + size > max_bytes):
            batches.append(batch)
            batch, held = [], 0
        batch.append(uid)
        held += size
    return [*batches, batch] if batch else batches


def mailbox_key(imap: ImapSettings, folder: str) -> str:
    """The checkpoint's name for one folder of one account."""
    return f"{imap.user}@{imap.host}/{folder}"


class Liveness:
    """A loop's promise to show progress: alive until its deadline, which each beat moves.

    `beat(quiet_for)` says "the next beat may take `quiet_for` seconds" (an IDLE, a backoff
    sleep); on top of that, any step may take `stall_seconds` before the loop counts as stuck.
    """

    def __init__(
        self, name: str, stall_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.stall_seconds = stall_seconds
        self.clock = clock
        self.last_beat = clock()
        self.deadline = self.last_beat + stall_seconds

    def beat(self, quiet_for: float = 0.0) -> None:
        self.last_beat = self.clock()
        self.deadline = self.last_beat + quiet_for + self.stall_seconds

    @property
    def alive(self) -> bool:
        return self.clock() <= self.deadline

    @property
    def overdue_seconds(self) -> float:
        return max(0.0, self.clock() - self.deadline)


@dataclass
class MailboxStatus:
    """What health checks and metrics read about one folder's worker."""

    connected: bool = False
    last_poll: datetime | None = None
    last_error: str | None = None
    processed: dict[str, int] = field(default_factory=dict)
    failures: int = 0  # connection attempts that failed since the last success


class MailboxWorker:
    """Drains one IMAP folder, then waits for news (IDLE) or polls, reconnecting on any error."""

    def __init__(
        self,
        imap: ImapSettings,
        folder: str,
        processor: Processor,
        *,
        on_committed: Callable[[], None] = lambda: None,
        client_factory: Callable[..., ImapClient] = ImapClient,
        account: str = DEFAULT_ACCOUNT,
        token_source: TokenSource | None = None,
        metrics: Metrics | None = None,
        stall_seconds: float = DaemonSettings().stall_seconds,
    ) -> None:
        self.imap = imap
        self.folder = folder
        self.processor = processor
        self.on_committed = on_committed
        self.client_factory = client_factory
        self.account = account
        self.token_source = token_source
        self.metrics = metrics or Metrics()
        self.key = mailbox_key(imap, folder)
        self.status = MailboxStatus()
        self.liveness = Liveness(self.key, stall_seconds)
        self.first_attempt = asyncio.Event()  # set once the first login has succeeded or failed
        self.log = log.bind(mailbox=self.key, account=account)
        self.metrics.add_mailbox(self.key)

    @property
    def max_poll_age(self) -> float:
        """How old the last successful poll may be while this folder counts as healthy."""
        return self.imap.wait_seconds + 4 * self.imap.timeout_seconds + self.liveness.stall_seconds

    def _client(self) -> ImapClient:
        if self.token_source is not None:
            client = self.client_factory(self.imap, token_source=self.token_source)
        else:
            client = self.client_factory(self.imap)
        # A fetch that keeps receiving (a large message on a slow link) is progress: without
        # this beat it could outlast stall_seconds and the watchdog would restart the daemon.
        client.on_progress = self.liveness.beat
        return client

    async def run(self, stop: asyncio.Event, *, once: bool = False) -> None:
        attempt = 0
        while not stop.is_set():
            # Connecting is a few commands, each under the timeout (plus a token fetch).
            self.liveness.beat(6 * self.imap.timeout_seconds + self.imap.oauth.timeout_seconds)
            client = self._client()
            try:
                await client.connect()
                await client.ensure_folders(self._targets())
                state = await client.select(self.folder)
                self.status.connected, self.status.last_error = True, None
                self.status.failures = attempt = 0
                self.first_attempt.set()
                self.liveness.beat()
                self.log.info(
                    "mailbox_connected", uidvalidity=state.uidvalidity, idle=client.has_idle
                )
                while not stop.is_set():
                    await self.drain(client, state, stop)
                    self.status.last_poll = datetime.now(UTC)
                    self.liveness.beat()
                    if once:
                        return
                    await self._wait(client, stop)
                    self.liveness.beat()
            except Exception as caught:
                if once:
                    raise
                failed: Exception | None = caught
            else:
                failed = None
            finally:
                self.status.connected = False
                await client.close()
            if failed is not None:
                attempt += 1
                await self._retry_later(failed, attempt, stop)

    async def _retry_later(self, error: Exception, attempt: int, stop: asyncio.Event) -> None:
        """Back off after a failed connection (or a bug), still beating: failing is not stuck."""
        delay = backoff_delay(attempt, self.imap.backoff_max_seconds)
        self.status.connected = False
        self.status.last_error = str(error) or type(error).__name__
        self.status.failures = attempt
        self.metrics.connection_errors.labels(mailbox=self.key).inc()
        self.first_attempt.set()
        if isinstance(error, TransientError):
            self.log.warning("mailbox_retry", error=str(error), delay_seconds=round(delay, 1))
        else:
            self.log.error("mailbox_worker_failed", delay_seconds=round(delay, 1), exc_info=error)
        self.liveness.beat(delay)
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)

    def _targets(self) -> list[str]:
        return [self.imap.processed_folder, self.imap.rejected_folder, self.imap.quarantine_folder]

    async def _wait(self, client: ImapClient, stop: asyncio.Event) -> None:
        seconds = self.imap.idle_renew_seconds if client.has_idle and self.imap.idle else None
        wait_for = seconds or self.imap.poll_seconds
        self.liveness.beat(wait_for + 2 * self.imap.timeout_seconds)
        news = asyncio.ensure_future(client.wait_for_news(wait_for))
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({news, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if news not in done:
            # Stopping mid-IDLE: the connection is dropped by run()'s close, not reused.
            news.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await news
            return
        stopping.cancel()
        news.result()

    async def drain(self, client: ImapClient, state: FolderState, stop: asyncio.Event) -> int:
        """Process every unsettled message, settling each batch only after its commits.

        A stop request lets the messages in hand (those of the batch already parsed) finish;
        what was committed is settled, the rest stays in the folder for the next start.
        """
        await self._note_uidvalidity(state)
        uids = await client.search_unsettled(self.imap.done_keyword)
        self.liveness.beat()
        handled = 0
        trimmed = False  # just after a trim, the heap has nothing to give back
        # Sizes are asked for a window at a time, so a backlog of 20,000 holds one window's.
        for start in range(0, len(uids), SIZE_WINDOW):
            if stop.is_set():
                break
            window = uids[start : start + SIZE_WINDOW]
            sizes = await client.sizes(window)
            self.liveness.beat()
            limits = (self.imap.fetch_batch, self.imap.fetch_batch_bytes)
            for batch in fetch_batches(window, sizes, *limits):
                if stop.is_set():
                    break
                large = max(sizes.get(uid, 0) for uid in batch) >= LARGE_MESSAGE_BYTES
                if large and not trimmed:
                    give_back_free_memory()
                handled += await self._handle_batch(client, state, batch, stop)
                if large:
                    give_back_free_memory()
                trimmed = large
        return handled

    async def _handle_batch(
        self, client: ImapClient, state: FolderState, batch: list[int], stop: asyncio.Event
    ) -> int:
        """Fetch, process and settle one batch; the number of messages settled."""
        settled = await self._known(state, batch)
        fresh = [uid for uid in batch if uid not in settled]
        fetched = await self._fetch(client, state, fresh, settled) if fresh else []
        self.metrics.fetched.labels(mailbox=self.key).inc(len(fetched))
        self.liveness.beat()
        intakes = [Intake(r.data, "imap", self.key, r.uidvalidity, r.uid) for r in fetched]
        handled_now = await process_batch(
            self.processor, intakes, stop=stop, beat=self.liveness.beat
        ) if intakes else []  # fmt: skip
        for item in handled_now:
            assert item.intake.uid is not None
            settled[item.intake.uid] = item.result.outcome
            self._count(item.result, item.seconds)
        if settled:
            self.on_committed()
            await self._settle(client, settled)
            self.liveness.beat()
        return len(settled)

    async def _fetch(
        self, client: ImapClient, state: FolderState, uids: list[int], settled: dict[int, Outcome]
    ) -> list[RawMail]:
        """The messages' bytes, in UID order; one the server lists but will not give is asked
        for again, and after UNREADABLE_AFTER tries recorded (and added to `settled`)."""
        fetched = await client.fetch(uids)
        for _retry in range(UNREADABLE_AFTER - 1):
            arrived = {mail.uid for mail in fetched}
            missing = [uid for uid in uids if uid not in arrived]
            if not missing:
                return fetched
            await asyncio.sleep(UNREADABLE_PAUSE_SECONDS)
            fetched = sorted([*fetched, *await client.fetch(missing)], key=lambda mail: mail.uid)
        arrived = {mail.uid for mail in fetched}
        settled |= await self._record_bodiless(
            client, state, [uid for uid in uids if uid not in arrived]
        )
        return fetched

    async def _record_bodiless(
        self, client: ImapClient, state: FolderState, missing: Sequence[int]
    ) -> dict[int, Outcome]:
        """Messages still there but fetched UNREADABLE_AFTER times without a body: each
        recorded as quarantined (no bytes, and why), so it is settled and an admin sees it.
        A UID expunged since the search has no size: it is simply gone."""
        present = await client.sizes(missing) if missing else {}
        outcomes: dict[int, Outcome] = {}
        for uid in sorted(present):
            reason = (
                f"the IMAP server lists UID {uid} of {self.folder} but returned no body in "
                f"{UNREADABLE_AFTER} fetches; the message is moved to the quarantine folder"
            )
            intake = Intake(b"", "imap", self.key, state.uidvalidity, uid)
            result = await self.processor.record_unreadable(intake, reason)
            self._count(result, 0.0)
            outcomes[uid] = result.outcome
        return outcomes

    async def _note_uidvalidity(self, state: FolderState) -> None:
        async with self.processor.sessions() as session:
            point = await store.checkpoint(session, self.key)
        if point is not None and point.uidvalidity != state.uidvalidity:
            # The folder was recreated: UIDs mean new things now. Message-ID dedupe keeps the
            # re-appended copies from becoming second tickets; the checkpoint restarts.
            self.log.warning("uidvalidity_changed", old=point.uidvalidity, new=state.uidvalidity)

    async def _known(self, state: FolderState, uids: Sequence[int]) -> dict[int, Outcome]:
        """Messages committed before a crash kept them from being moved: settle, don't refetch."""
        async with self.processor.sessions() as session:
            found = await store.outcomes_at(session, self.key, state.uidvalidity, uids)
        return {uid: Outcome(outcome) for uid, outcome in found.items()}

    async def _settle(self, client: ImapClient, outcomes: dict[int, Outcome]) -> None:
        by_folder: dict[str, list[int]] = {}
        for uid, outcome in sorted(outcomes.items()):
            by_folder.setdefault(folder_for(outcome, self.imap), []).append(uid)
        for folder, uids in by_folder.items():
            await client.settle(uids, folder, self.imap.done_keyword)

    def _count(self, result: ProcessResult, seconds: float) -> None:
        name = "duplicate" if result.duplicate else result.outcome.value
        self.status.processed[name] = self.status.processed.get(name, 0) + 1
        self.metrics.message_processed(self.key, name, seconds)
