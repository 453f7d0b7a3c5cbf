"""Builds the running objects from Settings once: engine, stores, processor, workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mailbridge.adapters.blobs import BlobStore
from mailbridge.adapters.db.engine import check_schema, make_engine, make_sessionmaker, upgrade
from mailbridge.logs import get_logger
from mailbridge.pipeline import render
from mailbridge.pipeline.hours import public_holidays
from mailbridge.pipeline.process import Processor
from mailbridge.settings import (
    DEFAULT_ACCOUNT,
    ConfigError,
    ImapSettings,
    Settings,
    SmtpSettings,
)

if TYPE_CHECKING:
    # `ingest` and the admin commands build an App too: the daemon, the IMAP and SMTP
    # clients, the HTTP server, OAuth and Prometheus are imported where they are first used.
    from mailbridge.adapters.http import HttpServer
    from mailbridge.adapters.oauth import TokenSource
    from mailbridge.adapters.systemd import Notifier
    from mailbridge.daemon import Daemon
    from mailbridge.metrics import Metrics

log = get_logger(__name__)


def make_token_sources(settings: Settings) -> dict[tuple[str, str], TokenSource]:
    """One cached token source per OAuth-configured account, keyed (service, account).

    Raises ConfigError when a provider's library (the `oauth` extra) is missing.
    """
    from mailbridge.adapters.oauth import OAuthUnavailable, token_source

    sources: dict[tuple[str, str], TokenSource] = {}
    wanted: list[tuple[str, str, str, ImapSettings | SmtpSettings]] = [
        ("imap", name, "imap" if name == DEFAULT_ACCOUNT else f"accounts.{name}", account)
        for name, account in settings.imap_accounts.items()
    ]
    wanted.append(("smtp", "smtp", "smtp", settings.smtp))
    for service, name, key, group in wanted:
        try:
            source = token_source(
                group.oauth, user=group.user, name=f"{service}:{name}", service=service
            )
        except OAuthUnavailable as error:
            raise ConfigError(f"{key}.oauth.provider: {error}") from None
        if source is not None:
            sources[(service, name)] = source
    return sources


@dataclass
class App:
    """What every command works with; made by `open_app`, closed when it ends."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    blobs: BlobStore
    processor: Processor

    @cached_property
    def metrics(self) -> Metrics:
        """Made on first use (the daemon, the HTTP endpoint): one-shot commands never count."""
        from mailbridge.metrics import Metrics

        return Metrics()

    @cached_property
    def token_sources(self) -> dict[tuple[str, str], TokenSource]:
        """Built on first use, so commands that log in nowhere never need the oauth extra."""
        return make_token_sources(self.settings)

    def daemon(self, *, notifier: Notifier | None = None, **worker_options: Any) -> Daemon:
        """Every folder of every account in its own worker, and the outbox worker."""
        from mailbridge.adapters.smtp import SmtpSender
        from mailbridge.daemon import Daemon, ServiceOutbox
        from mailbridge.mailbox_worker import MailboxWorker

        stall = self.settings.daemon.stall_seconds
        workers = [
            MailboxWorker(
                account,
                folder,
                self.processor,
                account=name,
                token_source=self.token_sources.get(("imap", name)),
                metrics=self.metrics,
                stall_seconds=stall,
                **worker_options,
            )
            for name, account in self.settings.imap_accounts.items()
            for folder in account.folders
        ]
        # Under `run` the holiday table comes from a child interpreter (about 0.2 s): ask for
        # it now, not while the first acknowledgement is rendered and the mail waits.
        public_holidays(self.settings.hours.holidays_country, date.today().year)
        smtp = self.settings.smtp
        sender = SmtpSender(smtp, token_source=self.token_sources.get(("smtp", "smtp")))
        outbox = ServiceOutbox(smtp, self.sessions, metrics=self.metrics, sender=sender)
        return Daemon(workers, outbox, settings=self.settings.daemon, notifier=notifier)

    def reload(self) -> list[str]:
        """SIGHUP: forget cached templates and check the templates again; the problems found."""
        render._packaged.cache_clear()
        problems = render.check_templates(self.settings.ack.templates_dir)
        for problem in problems:
            log.error("template_problem", problem=problem)
        log.info("templates_reloaded", problems=len(problems))
        return problems

    @asynccontextmanager
    async def serving(self, daemon: Daemon) -> AsyncIterator[HttpServer | None]:
        """The /metrics, /healthz and /readyz endpoint while the block runs, when enabled."""
        http = self.settings.http
        if not http.enabled:
            yield None
            return
        from mailbridge.adapters.http import HttpServer
        from mailbridge.health import Endpoints

        endpoints = Endpoints(daemon, self.engine, self.sessions, self.metrics, self.token_sources)
        async with HttpServer(http.host, http.port, endpoints.routes()) as server:
            yield server


async def upgrade_schema(settings: Settings) -> None:
    """`database.upgrade_on_start`: apply the migrations before anything else opens the DB."""
    engine = make_engine(settings.database_url, echo=settings.database.echo)
    try:
        await upgrade(engine, settings.database_url)
    finally:
        await engine.dispose()
    log.info("database_upgraded")


@asynccontextmanager
async def open_app(settings: Settings, *, check: bool = True) -> AsyncIterator[App]:
    """Connect to the database (checking the schema is current) and build the pipeline."""
    engine = make_engine(settings.database_url, echo=settings.database.echo)
    try:
        if check:
            await check_schema(engine)
        sessions = make_sessionmaker(engine)
        blobs = BlobStore(settings.storage.data_dir / "attachments")
        processor = Processor(settings, sessions, blobs)
        yield App(
            settings,
            engine,
            sessions,
            blobs,
            processor,
        )
    finally:
        await engine.dispose()
