"""The daemon: one task per IMAP folder of every account (IDLE or polling), the outbox sender,
liveness for the systemd watchdog and the health checks, signals, and a bounded graceful stop.

Each loop shows that it makes progress by beating its `Liveness` (before every wait it says
how long the wait may take); a loop that misses its deadline is *stuck*: the watchdog pings
stop and /healthz says which loop. A mailbox that cannot log in is not stuck — it retries with
backoff, and health and metrics show it failing — so it never holds up the other mailboxes.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typing_extensions import override

from mailbridge.adapters.db.models import Outbox
from mailbridge.adapters.systemd import Notifier, watchdog_interval
from mailbridge.delivery import DrainReport, OutboxWorker, outbox_stats
from mailbridge.errors import TransientError
from mailbridge.logs import get_logger
from mailbridge.mailbox_worker import MailboxWorker
from mailbridge.metrics import Metrics
from mailbridge.settings import DaemonSettings, SmtpSettings

log = get_logger(__name__)

SUPERVISE_TICK_SECONDS = 5.0
CLOSE_BOUND_SECONDS = 5.0


class ServiceOutbox(OutboxWorker):
    """The outbox worker of a running daemon: counts results, and on stop finishes only the
    send in flight (the rows not yet started stay pending for the next start)."""

    def __init__(
        self,
        settings: SmtpSettings,
        sessions: async_sessionmaker[AsyncSession],
        *,
        metrics: Metrics | None = None,
        **options: Any,
    ) -> None:
        super().__init__(settings, sessions, **options)
        self.metrics = metrics or Metrics()
        self.halt = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        self.halt = stop
        await super().run(stop)

    @override
    async def _due(self, include_not_due: bool, after: int) -> list[Outbox]:
        if self.halt.is_set():
            return []
        return await super()._due(include_not_due, after)

    @override
    async def _send_one(self, row: Outbox) -> DrainReport:
        if self.halt.is_set():
            return DrainReport()
        report = await super()._send_one(row)
        self.metrics.ack_result("sent", report.sent)
        self.metrics.ack_result("retry", report.retried)
        self.metrics.ack_result("failed", report.failed)
        return report


@dataclass(frozen=True, slots=True)
class LoopState:
    name: str
    alive: bool
    overdue_seconds: float


class Daemon:
    """All mailbox workers and the outbox worker of one process, and their supervision."""

    def __init__(
        self,
        workers: list[MailboxWorker],
        outbox: OutboxWorker,
        *,
        settings: DaemonSettings | None = None,
        notifier: Notifier | None = None,
        on_reload: Callable[[], None] | None = None,
    ) -> None:
        self.workers = workers
        self.outbox = outbox
        self.settings = settings or DaemonSettings()
        self.notifier = notifier or Notifier(None)
        self.on_reload = on_reload
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.stuck: frozenset[str] = frozenset()
        for worker in workers:
            worker.on_committed = outbox.kick.set

    # --- signals -----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _request_stop(self, sig: signal.Signals) -> None:
        if self.stop.is_set():
            log.info("stop_already_requested", signal=sig.name)
            return
        log.info("stop_requested", signal=sig.name)
        self.stop.set()

    def reload(self) -> None:
        """SIGHUP: reopen the log file and reload the templates; the loops go on untouched."""
        self.notifier.reloading()
        try:
            if self.on_reload is not None:
                self.on_reload()
            log.info("reloaded")
        except Exception:
            log.exception("reload_failed")
        self.notifier.ready(self.status_line())

    # --- state ------------------------------------------------------------------------------

    def outbox_alive(self) -> LoopState:
        since = (self.outbox.clock() - self.outbox.last_progress).total_seconds()
        limit = self.outbox.settings.poll_seconds + self.settings.stall_seconds
        return LoopState("outbox", since <= limit, max(0.0, since - limit))

    def loops(self) -> list[LoopState]:
        states = [
            LoopState(w.key, w.liveness.alive, w.liveness.overdue_seconds) for w in self.workers
        ]
        states.append(self.outbox_alive())
        return states

    def status_line(self) -> str:
        """One line for `systemctl status`: connections, handled mail, trouble."""
        up = sum(1 for w in self.workers if w.status.connected)
        handled = sum(sum(w.status.processed.values()) for w in self.workers)
        parts = [f"{up}/{len(self.workers)} mailboxes connected", f"{handled} messages handled"]
        failing = [w.key for w in self.workers if w.status.last_error and not w.status.connected]
        if failing:
            parts.append("failing: " + ", ".join(failing))
        if self.stuck:
            parts.append("STUCK: " + ", ".join(sorted(self.stuck)))
        return "; ".join(parts)

    # --- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Until stopped: each worker finishes the messages in hand, then everything closes,
        within `shutdown_timeout_seconds` (what is still running then is cancelled)."""
        tasks = [asyncio.create_task(w.run(self.stop), name=w.key) for w in self.workers]
        tasks.append(asyncio.create_task(self.outbox.run(self.stop), name="outbox"))
        helpers = [
            asyncio.create_task(self._announce_ready(), name="ready"),
            asyncio.create_task(self._supervise(), name="supervise"),
        ]
        stopping = asyncio.create_task(self.stop.wait())
        failure: BaseException | None = None
        try:
            done, _ = await asyncio.wait({*tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopping}:
                if task.exception() is None and self.stop.is_set():
                    continue  # stopped: the loop saw the stop before our own waiter woke
                # Workers only end when stopped; one that ended by itself is a bug: restart us.
                failure = task.exception() or RuntimeError(f"{task.get_name()} ended by itself")
                log.error("loop_ended", loop=task.get_name(), error=repr(failure))
                self.stop.set()
            self.notifier.stopping("stopping: finishing the messages in hand")
            await self._finish(tasks)
        finally:
            for task in [*helpers, stopping, *tasks]:
                task.cancel()
            await asyncio.gather(*helpers, stopping, *tasks, return_exceptions=True)
            with suppress(Exception):
                await asyncio.wait_for(self.outbox.close(), CLOSE_BOUND_SECONDS)
            self.notifier.close()
            log.info("daemon_stopped")
        if failure is not None:
            raise failure

    async def _finish(self, tasks: list[asyncio.Task[None]]) -> None:
        """Give the loops `shutdown_timeout_seconds` to finish what they hold, then cancel."""
        bound = self.settings.shutdown_timeout_seconds
        _done, pending = await asyncio.wait(tasks, timeout=bound)
        if pending:
            names = sorted(task.get_name() for task in pending)
            log.warning("shutdown_timeout", seconds=bound, cancelled=names)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _announce_ready(self) -> None:
        """READY=1 once every mailbox has tried its first login (a failed login still counts:
        one broken account must not hold up the others, and health shows it)."""
        waits = [asyncio.create_task(w.first_attempt.wait()) for w in self.workers]
        try:
            if waits:
                await asyncio.wait(waits)
        finally:
            for wait in waits:
                wait.cancel()
        if self.stop.is_set():
            return
        self.ready.set()
        status = self.status_line()
        self.notifier.ready(status)
        log.info("daemon_ready", status=status)

    async def _supervise(self) -> None:
        """WATCHDOG=1 every half $WATCHDOG_USEC while every loop is alive; STATUS= updates."""
        interval = watchdog_interval()
        tick = min(interval, SUPERVISE_TICK_SECONDS) if interval else SUPERVISE_TICK_SECONDS
        last_ping = float("-inf")
        last_status = ""
        while not self.stop.is_set():
            stuck = frozenset(state.name for state in self.loops() if not state.alive)
            if stuck != self.stuck:
                if stuck:
                    log.error("loops_stuck", loops=sorted(stuck), watchdog=interval is not None)
                else:
                    log.info("loops_recovered")
                self.stuck = stuck
            now = time.monotonic()
            if interval and self.ready.is_set() and not stuck and now - last_ping >= interval:
                self.notifier.watchdog()
                last_ping = now
            status = self.status_line()
            if self.ready.is_set() and status != last_status:
                self.notifier.status(status)
                last_status = status
            with suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), tick)

    async def run_once(self) -> tuple[int, int]:
        """Drain every folder and then the outbox (all pending rows), and return.

        A folder whose server fails transiently does not keep the others from draining; the
        first such error is raised after the outbox has been drained.
        Returns (messages handled, outbox rows still pending).
        """
        trouble: TransientError | None = None
        for worker in self.workers:
            try:
                await worker.run(self.stop, once=True)
            except TransientError as error:
                worker.log.warning("mailbox_failed", error=str(error))
                worker.status.last_error = str(error)
                trouble = trouble or error
        try:
            report = await self.outbox.drain(include_not_due=True)
        finally:
            await self.outbox.close()
        handled = sum(sum(w.status.processed.values()) for w in self.workers)
        # Counted, not taken from the report: rows another process is sending are pending too.
        try:
            pending, _oldest_age = await outbox_stats(self.outbox.sessions)
        except Exception as error:  # the database gone meanwhile: the report is what we know
            log.warning("outbox_count_failed", error=(str(error).splitlines() or ["?"])[0])
            pending = report.retried
        log.info("run_once_done", handled=handled, sent=report.sent, pending=pending)
        if trouble is not None:
            raise trouble
        return handled, pending
