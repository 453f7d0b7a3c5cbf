"""The daemon: one task per IMAP folder (IDLE or polling), the outbox sender, a graceful stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from mailbridge.adapters.db import store
from mailbridge.adapters.imap import FolderState, ImapClient, backoff_delay
from mailbridge.delivery import OutboxWorker
from mailbridge.errors import TransientError
from mailbridge.pipeline.process import Processor
from mailbridge.records import Intake, Outcome, ProcessResult
from mailbridge.settings import ImapSettings

log = structlog.get_logger(__name__)


def folder_for(outcome: Outcome, imap: ImapSettings) -> str:
    """Where a message goes on the server once its outcome is committed."""
    if outcome in (Outcome.TICKET_CREATED, Outcome.FOLLOW_UP):
        return imap.processed_folder
    if outcome is Outcome.REJECTED:
        return imap.rejected_folder
    return imap.quarantine_folder


def mailbox_key(imap: ImapSettings, folder: str) -> str:
    """The checkpoint's name for one folder of one account."""
    return f"{imap.user}@{imap.host}/{folder}"


@dataclass
class MailboxStatus:
    """What health checks and metrics read about one folder's worker."""

    connected: bool = False
    last_poll: datetime | None = None
    last_error: str | None = None
    processed: dict[str, int] = field(default_factory=dict)


class MailboxWorker:
    """Drains one IMAP folder, then waits for news (IDLE) or polls, reconnecting on any error."""

    def __init__(
        self,
        imap: ImapSettings,
        folder: str,
        processor: Processor,
        *,
        on_committed: Callable[[], None] = lambda: None,
        client_factory: Callable[[ImapSettings], ImapClient] = ImapClient,
    ) -> None:
        self.imap = imap
        self.folder = folder
        self.processor = processor
        self.on_committed = on_committed
        self.client_factory = client_factory
        self.key = mailbox_key(imap, folder)
        self.status = MailboxStatus()
        self.log = log.bind(mailbox=self.key)

    async def run(self, stop: asyncio.Event, *, once: bool = False) -> None:
        attempt = 0
        while not stop.is_set():
            client = self.client_factory(self.imap)
            try:
                await client.connect()
                await client.ensure_folders(self._targets())
                state = await client.select(self.folder)
                self.status.connected, self.status.last_error = True, None
                attempt = 0
                self.log.info(
                    "mailbox_connected", uidvalidity=state.uidvalidity, idle=client.has_idle
                )
                while not stop.is_set():
                    await self.drain(client, state, stop)
                    self.status.last_poll = datetime.now(UTC)
                    if once:
                        return
                    await self._wait(client, stop)
            except TransientError as error:
                if once:
                    raise
                attempt += 1
                delay = backoff_delay(attempt, self.imap.backoff_max_seconds)
                self.status.connected, self.status.last_error = False, str(error)
                self.log.warning("mailbox_retry", error=str(error), delay_seconds=round(delay, 1))
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            finally:
                self.status.connected = False
                await client.close()

    def _targets(self) -> list[str]:
        return [self.imap.processed_folder, self.imap.rejected_folder, self.imap.quarantine_folder]

    async def _wait(self, client: ImapClient, stop: asyncio.Event) -> None:
        seconds = self.imap.idle_renew_seconds if client.has_idle and self.imap.idle else None
        news = asyncio.ensure_future(client.wait_for_news(seconds or self.imap.poll_seconds))
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
        """Process every unsettled message, settling each batch only after its commits."""
        await self._note_uidvalidity(state)
        uids = await client.search_unsettled(self.imap.done_keyword)
        handled = 0
        for start in range(0, len(uids), self.imap.fetch_batch):
            if stop.is_set():
                break
            batch = uids[start : start + self.imap.fetch_batch]
            settled = await self._known(state, batch)
            fresh = [uid for uid in batch if uid not in settled]
            for raw in await client.fetch(fresh) if fresh else []:
                result = await self.processor.process(
                    Intake(raw.data, "imap", self.key, raw.uidvalidity, raw.uid)
                )
                settled[raw.uid] = result.outcome
                self._count(result)
            if settled:
                self.on_committed()
                await self._settle(client, settled)
            handled += len(settled)
        return handled

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

    def _count(self, result: ProcessResult) -> None:
        name = "duplicate" if result.duplicate else result.outcome.value
        self.status.processed[name] = self.status.processed.get(name, 0) + 1


class Daemon:
    """All mailbox workers and the outbox worker of one process."""

    def __init__(self, workers: list[MailboxWorker], outbox: OutboxWorker) -> None:
        self.workers = workers
        self.outbox = outbox
        self.stop = asyncio.Event()
        for worker in workers:
            worker.on_committed = outbox.kick.set

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)

    def _request_stop(self, sig: signal.Signals) -> None:
        log.info("stop_requested", signal=sig.name)
        self.stop.set()

    async def run(self) -> None:
        """Until stopped: each worker finishes the message in hand, then everything closes."""
        tasks = [asyncio.create_task(w.run(self.stop), name=w.key) for w in self.workers]
        tasks.append(asyncio.create_task(self.outbox.run(self.stop), name="outbox"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.outbox.close()
            log.info("daemon_stopped")

    async def run_once(self) -> tuple[int, int]:
        """Drain every folder and then the outbox (all pending rows), and return.

        Returns (messages handled, outbox rows still pending).
        """
        for worker in self.workers:
            await worker.run(self.stop, once=True)
        try:
            report = await self.outbox.drain(include_not_due=True)
        finally:
            await self.outbox.close()
        handled = sum(sum(w.status.processed.values()) for w in self.workers)
        log.info("run_once_done", handled=handled, sent=report.sent, retried=report.retried)
        return handled, report.retried
