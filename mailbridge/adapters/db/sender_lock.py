"""One outbox sender per database at a time: a lock its holder's death frees, on either database.

Outbox rows are read, sent, then marked sent; two processes draining at once (a cron
`run --once` beside the daemon, two daemons overlapping in a deploy) would both send every
row they both read. Claiming rows instead would leave a killed sender's claims to expire
before anyone could resend them; these locks go with the process or connection that holds
them, so a restarted daemon sends at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from contextlib import suppress
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mailbridge.errors import TransientError
from mailbridge.logs import get_logger

log = get_logger(__name__)

# pg_advisory_lock's key: "mboutbox" in ASCII, a constant every mailbridge process shares.
_ADVISORY_KEY = int.from_bytes(b"mboutbox", "big")
_POLL_SECONDS = 0.1
_HELD = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid())"
)


class SenderLock:
    """`acquire(wait)` / `release()`; on SQLite a flock on a file beside the database, on
    PostgreSQL a session advisory lock held on a connection of its own."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        url = make_url(engine.url)
        database = url.database or ""
        self._path: Path | None = None
        if url.get_backend_name() == "sqlite" and database and database != ":memory:":
            self._path = Path(f"{database}.outbox-lock")
        # An in-memory database is its connection's alone: no other process can see it.
        self._in_memory = url.get_backend_name() == "sqlite" and self._path is None
        self._fd: int | None = None
        self._connection: AsyncConnection | None = None

    async def acquire(self, wait: float) -> bool:
        """Whether the lock was taken within `wait` seconds (False: another sender has it)."""
        deadline = time.monotonic() + wait
        while True:
            if await self._try():
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL_SECONDS)

    async def still_held(self) -> bool:
        """Whether the lock is still this process's. A PostgreSQL session can end under its
        holder (idle_session_timeout, pg_terminate_backend, a failover): the server then
        frees the lock, and another sender may take it."""
        if self._connection is None:
            return self._in_memory or self._file_still_locked()
        try:
            held = await self._connection.scalar(_HELD)
            await self._connection.commit()
        except Exception:  # the session is gone, and the lock with it
            return False
        return bool(held)

    async def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the file drops the flock
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                await connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_KEY}
                )
                await connection.commit()
            except Exception as error:  # a lost session has no lock left to free
                log.warning("outbox_lock_release_failed", error=str(error).splitlines()[0])
            finally:
                with suppress(Exception):
                    await connection.close()

    async def _try(self) -> bool:
        if self._in_memory:
            return True
        if self._path is not None:
            return self._try_file(self._path)
        return await self._try_advisory()

    def _file_still_locked(self) -> bool:
        """Whether the locked file is still the one at the path: a deleted (or replaced) lock
        file would let another process lock a new one while this one still sends."""
        if self._fd is None or self._path is None:
            return False
        try:
            held, named = os.fstat(self._fd), os.stat(self._path)
        except OSError:
            return False
        return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)

    def _try_file(self, path: Path) -> bool:
        try:
            # Read-only and readable by all: the CLI run as root and the daemon as its service
            # user must both be able to open the file that the first of them made.
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError as error:
            raise TransientError(f"outbox lock {path}: {error.strerror or error}") from error
        try:
            if os.fstat(fd).st_uid == os.geteuid():
                os.fchmod(fd, 0o644)  # the umask (077 for root, say) must not lock others out
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as error:
            os.close(fd)
            raise TransientError(f"outbox lock {path}: {error.strerror or error}") from error
        self._fd = fd
        return True

    async def _try_advisory(self) -> bool:
        connection = await self._engine.connect()
        try:
            taken = await connection.scalar(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": _ADVISORY_KEY}
            )
            await connection.commit()  # the lock is the session's: no transaction left open
        except BaseException:
            await connection.close()
            raise
        if not taken:
            await connection.close()
            return False
        self._connection = connection
        return True
