"""Builds the running objects from Settings once: engine, stores, processor, workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mailbridge.adapters.blobs import BlobStore
from mailbridge.adapters.db.engine import check_schema, make_engine, make_sessionmaker
from mailbridge.daemon import Daemon, MailboxWorker
from mailbridge.delivery import OutboxWorker
from mailbridge.pipeline.process import Processor
from mailbridge.settings import Settings


@dataclass
class App:
    """What every command works with; made by `open_app`, closed when it ends."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    blobs: BlobStore
    processor: Processor

    def daemon(self, **worker_options: Any) -> Daemon:
        workers = [
            MailboxWorker(self.settings.imap, folder, self.processor, **worker_options)
            for folder in self.settings.imap.folders
        ]
        return Daemon(workers, OutboxWorker(self.settings.smtp, self.sessions))


@asynccontextmanager
async def open_app(settings: Settings, *, check: bool = True) -> AsyncIterator[App]:
    """Connect to the database (checking the schema is current) and build the pipeline."""
    engine = make_engine(settings.database_url, echo=settings.database.echo)
    try:
        if check:
            await check_schema(engine, settings.database_url)
        sessions = make_sessionmaker(engine)
        blobs = BlobStore(settings.storage.data_dir / "attachments")
        processor = Processor(settings, sessions, blobs)
        yield App(settings, engine, sessions, blobs, processor)
    finally:
        await engine.dispose()
