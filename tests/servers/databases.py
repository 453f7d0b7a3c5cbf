"""Database fixtures: every integration test runs on SQLite and on a fresh PostgreSQL database.

`database_url` is parametrised as `sqlite` and `postgresql`; each test gets an empty
database with the schema applied by the real Alembic migrations. PostgreSQL comes from
MAILBRIDGE_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test, trust auth); when it
is unreachable the PostgreSQL cases skip with the reason, or fail when CI=true.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailbridge.adapters.db.engine import make_engine, upgrade

PG_ADMIN_URL = os.environ.get("MAILBRIDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def missing(reason: str) -> None:
    """Skip on a developer's machine; under CI a missing service is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: required)")
    pytest.skip(reason)


async def pg_admin(statement: str, url: str = PG_ADMIN_URL) -> None:
    """One statement as the PostgreSQL admin, outside a transaction (CREATE DATABASE needs that)."""
    import asyncpg

    connection = await asyncpg.connect(url, timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        asyncio.run(pg_admin("SELECT 1"))
    except Exception as error:
        return f"PostgreSQL at {PG_ADMIN_URL} unreachable: {error}"
    return None


@pytest.fixture
def pg_database(postgres_available: str | None) -> Iterator[str]:
    """A fresh, empty PostgreSQL database; its async URL."""
    if postgres_available:
        missing(postgres_available)
    name = f"mbtest_{uuid.uuid4().hex[:12]}"
    asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind, no schema."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'mailbridge.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url


@pytest.fixture
async def database_url(empty_database_url: str) -> str:
    """A database of each kind with the schema applied by the migrations."""
    engine = make_engine(empty_database_url)
    try:
        await upgrade(engine, empty_database_url)
    finally:
        await engine.dispose()
    return empty_database_url
