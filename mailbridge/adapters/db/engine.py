"""Database engine set-up, SQLite pragmas, and Alembic upgrade / schema-is-current checks."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from mailbridge.errors import MailbridgeError, TransientError


class SchemaError(MailbridgeError):
    """The database schema is not the one this version of mailbridge needs."""


class DatabaseUnavailable(TransientError):
    """No connection to the database could be made (server down, restarting, full): retry."""


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    try:
        from asyncpg import exceptions as pg  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        return tuple(errors)
    # "the database system is starting up / shutting down", "too many clients"
    errors += [pg.CannotConnectNowError, pg.TooManyConnectionsError]
    return tuple(errors)


_UNREACHABLE = _unreachable_errors()


def _connect_or_transient(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
    """Open a DBAPI connection; a server that cannot be reached is a TransientError.

    asyncpg raises the socket's own OSError (ConnectionRefusedError, …), which SQLAlchemy
    passes through unwrapped: without this, callers could not tell "the database is away"
    from a bug, and the daemon logged a traceback on every retry.
    """
    try:
        return dialect.connect(*cargs, **cparams)
    except _UNREACHABLE as error:
        detail = " ".join(str(error).split()) or type(error).__name__
        raise DatabaseUnavailable(f"database unreachable: {detail}") from error


def make_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine; for SQLite the file's folder is created and WAL mode switched on."""
    parsed = make_url(url)
    options: dict[str, Any] = {"echo": echo, "pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        options.pop("pool_pre_ping")
        options["connect_args"] = {"timeout": 30}
    engine = create_async_engine(url, **options)
    event.listen(engine.sync_engine, "do_connect", _connect_or_transient)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (the CLI) work while the daemon writes; NORMAL is durable in WAL mode
    # except for the last transactions on power loss, and IMAP still holds those messages.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _migrations_dir() -> Path:
    return Path(str(resources.files("mailbridge.migrations")))


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_migrations_dir()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


async def upgrade(engine: AsyncEngine, url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` on the engine's database."""
    config = alembic_config(url)

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def check_schema(engine: AsyncEngine, url: str) -> None:
    """Raise SchemaError unless the database is at the newest migration."""
    head = head_revision(url)
    current = await current_revision(engine)
    if current != head:
        found = current or "no schema"
        raise SchemaError(
            f"database schema is at {found}, this version needs {head}: run `mailbridge db upgrade`"
        )
