"""Database engine set-up, SQLite pragmas, and Alembic upgrade / schema-is-current checks."""

from __future__ import annotations

import ast
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from mailbridge.errors import MailbridgeError, TransientError

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic (about 10 MB and 0.2 s of imports) is loaded only to migrate: the daemon and the
# CLI check the schema by reading the scripts' revision variables and alembic_version.


class SchemaError(MailbridgeError):
    """The database schema is not the one this version of mailbridge needs."""


class DatabaseUnavailable(TransientError):
    """No connection to the database could be made (server down, restarting, full): retry."""


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    # Only when PostgreSQL is in use (its dialect has imported asyncpg): asyncpg costs about
    # 12 MB resident that a SQLite deployment should not carry.
    pg = getattr(sys.modules.get("asyncpg"), "exceptions", None)
    if pg is not None:
        # "the database system is starting up / shutting down", "too many clients"
        errors += [pg.CannotConnectNowError, pg.TooManyConnectionsError]
    return tuple(errors)


def _connect_or_transient(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
    """Open a DBAPI connection; a server that cannot be reached is a TransientError.

    asyncpg raises the socket's own OSError (ConnectionRefusedError, …), which SQLAlchemy
    passes through unwrapped: without this, callers could not tell "the database is away"
    from a bug, and the daemon logged a traceback on every retry.
    """
    try:
        return dialect.connect(*cargs, **cparams)
    except _unreachable_errors() as error:
        detail = " ".join(str(error).split()) or type(error).__name__
        raise DatabaseUnavailable(f"database unreachable: {detail}") from error


def make_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine; for SQLite the file's folder is created and WAL mode switched on."""
    parsed = make_url(url)
    options: dict[str, Any] = {"echo": echo, "pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            _make_folder(Path(database))
        options.pop("pool_pre_ping")
        options["connect_args"] = {"timeout": 30}
    engine = create_async_engine(url, **options)
    event.listen(engine.sync_engine, "do_connect", _connect_or_transient)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _make_folder(database: Path) -> None:
    """The SQLite file's folder; one that cannot be made is a setting to fix (exit 2)."""
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        from mailbridge.settings import ConfigError  # pydantic only on this failure path

        reason = error.strerror or str(error)
        raise ConfigError(
            f"database.url: cannot make the folder of the SQLite file {database} ({reason}); "
            "without database.url the file is in storage.data_dir"
        ) from None


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
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_migrations_dir()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _script_revisions(source: str) -> tuple[str | None, tuple[str, ...]]:
    """A migration script's `revision` and its `down_revision`(s), read without running it."""
    found: dict[str, object] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
            found[target.id] = ast.literal_eval(value)
    revision, down = found.get("revision"), found.get("down_revision")
    parents = down if isinstance(down, tuple | list) else (down,) if down else ()
    return (revision if isinstance(revision, str) else None), tuple(map(str, parents))


def head_revision() -> str | None:
    """The newest migration: the one revision no script names as its down_revision."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in sorted((_migrations_dir() / "versions").glob("*.py")):
        revision, down = _script_revisions(script.read_text(encoding="utf-8"))
        if revision:
            revisions.add(revision)
            parents.update(down)
    heads = revisions - parents
    if len(heads) > 1:
        raise SchemaError(f"the migrations have several heads: {sorted(heads)}")
    return next(iter(heads), None)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision recorded in the database's alembic_version table (None: no schema)."""

    def read(connection: Connection) -> str | None:
        if not inspect(connection).has_table("alembic_version"):
            return None
        rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        if len(rows) > 1:
            raise SchemaError(f"the database has several schema heads: {[r[0] for r in rows]}")
        return str(rows[0][0]) if rows else None

    async with engine.connect() as connection:
        return await connection.run_sync(read)


async def upgrade(engine: AsyncEngine, url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` on the engine's database."""
    from alembic import command

    config = alembic_config(url)

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def check_schema(engine: AsyncEngine) -> None:
    """Raise SchemaError unless the database is at the newest migration."""
    head = head_revision()
    current = await current_revision(engine)
    if current != head:
        found = current or "no schema"
        raise SchemaError(
            f"database schema is at {found}, this version needs {head}: run `mailbridge db upgrade`"
        )
