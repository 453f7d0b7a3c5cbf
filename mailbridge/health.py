"""Health, readiness and metrics of a running daemon, and the same checks for `mailbridge health`.

- liveness (/healthz): every loop makes progress, and every folder was drained recently;
- readiness (/readyz): the database answers, and every folder's IMAP connection is up.

Each check has a name (`loop:outbox`, `mailbox:user@host/INBOX`, `database`, `imap:…`), a
verdict and one line of detail; the HTTP answer is 200 or 503 with them as JSON.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mailbridge.adapters.db.engine import check_schema
from mailbridge.adapters.http import Handler, Response
from mailbridge.adapters.imap import ImapClient
from mailbridge.adapters.oauth import TokenSource
from mailbridge.daemon import Daemon
from mailbridge.delivery import outbox_stats
from mailbridge.metrics import CONTENT_TYPE, Metrics
from mailbridge.settings import ImapSettings

DATABASE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


def summary(checks: Iterable[Check]) -> dict[str, Any]:
    """The JSON body: overall status, the failed checks' names, and every check."""
    items = list(checks)
    failed = [c.name for c in items if not c.ok]
    return {
        "status": "fail" if failed else "ok",
        "failed": failed,
        "checks": [asdict(c) for c in items],
    }


def liveness_checks(daemon: Daemon, now: datetime | None = None) -> list[Check]:
    """Every loop alive, and every folder drained within its allowed age."""
    now = now or datetime.now(UTC)
    checks = []
    for loop in daemon.loops():
        detail = (
            "making progress"
            if loop.alive
            else (f"stuck: no progress, {loop.overdue_seconds:.0f}s past its deadline")
        )
        checks.append(Check(f"loop:{loop.name}", loop.alive, detail))
    for worker in daemon.workers:
        status = worker.status
        age = (now - status.last_poll).total_seconds() if status.last_poll else None
        ok = age is not None and age <= worker.max_poll_age
        if age is None:
            detail = "no successful poll yet"
        else:
            detail = f"last poll {age:.0f}s ago"
            if not ok:
                detail += f" (more than {worker.max_poll_age:.0f}s)"
        if status.last_error and not status.connected:
            detail += f"; {status.failures} failed attempt(s), last: {status.last_error}"
        checks.append(Check(f"mailbox:{worker.key}", ok, detail))
    return checks


async def database_check(engine: AsyncEngine, *, schema: bool = False) -> Check:
    """The database answers a query (and, when asked, has the current schema)."""
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS):
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            if schema:
                await check_schema(engine)
    except Exception as error:
        first = (str(error).splitlines() or [type(error).__name__])[0][:300]
        return Check("database", False, f"{type(error).__name__}: {first}")
    return Check("database", True, "reachable" + (", schema current" if schema else ""))


async def readiness_checks(daemon: Daemon, engine: AsyncEngine) -> list[Check]:
    checks = [await database_check(engine)]
    for worker in daemon.workers:
        status = worker.status
        detail = "connected" if status.connected else (status.last_error or "not connected yet")
        checks.append(Check(f"imap:{worker.key}", status.connected, detail))
    return checks


async def imap_login_check(name: str, settings: ImapSettings, client: ImapClient) -> Check:
    """Log in (password or XOAUTH2) and out again: for `mailbridge health` without a daemon."""
    label = f"imap:{name}:{settings.user}@{settings.host}"
    try:
        await client.connect()
    except Exception as error:
        return Check(label, False, str(error) or type(error).__name__)
    finally:
        await client.close()
    return Check(label, True, "login ok")


class Endpoints:
    """The routes the HTTP server serves for one running daemon."""

    def __init__(
        self,
        daemon: Daemon,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        metrics: Metrics,
        token_sources: Mapping[tuple[str, str], TokenSource],
    ) -> None:
        self.daemon = daemon
        self.engine = engine
        self.sessions = sessions
        self.metrics = metrics
        self.token_sources = token_sources

    def routes(self) -> dict[str, Handler]:
        return {"/metrics": self.scrape, "/healthz": self.healthz, "/readyz": self.readyz}

    async def refresh(self) -> None:
        """Set the state gauges from what the loops report now (and the outbox table)."""
        now = datetime.now(UTC)
        metrics = self.metrics
        metrics.set_loops((loop.name, loop.alive) for loop in self.daemon.loops())
        for worker in self.daemon.workers:
            last = worker.status.last_poll
            since = (now - last).total_seconds() if last else None
            metrics.set_mailbox_state(
                worker.key, connected=worker.status.connected, since_poll=since
            )
        for (service, account), source in self.token_sources.items():
            metrics.set_token_expiry(account, service, source.expires_at)
        try:
            async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS):
                pending, oldest = await outbox_stats(self.sessions)
        except Exception:  # the database is away: /readyz says so; keep the last values
            return
        metrics.set_outbox(pending, oldest)

    async def scrape(self) -> Response:
        await self.refresh()
        return Response(HTTPStatus.OK, self.metrics.render(), CONTENT_TYPE)

    async def healthz(self) -> Response:
        return _answer(liveness_checks(self.daemon))

    async def readyz(self) -> Response:
        return _answer(await readiness_checks(self.daemon, self.engine))


def _answer(checks: list[Check]) -> Response:
    body = summary(checks)
    status = HTTPStatus.OK if body["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
    return Response.json(status, body)
