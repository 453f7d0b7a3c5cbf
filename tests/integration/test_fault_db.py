"""The database goes away under the running daemon, and the attachment disk fills up.

- PostgreSQL: a private cluster on its own port (tests/fault/pgcluster.py) is stopped while
  `mailbridge run` works, then started again. Mail that arrives meanwhile stays on the IMAP
  server (transient: not quarantined, not moved) and is handled exactly once afterwards.
  (SQLite is an embedded file: "the server is away" does not apply to it.)
- Disk full: the attachment store is a 1 MB tmpfs mounted by the test; a message with a
  larger attachment is deferred (ENOSPC is transient), not quarantined, and handled once
  after the filesystem is grown (`mount -o remount,size=...`). Where tmpfs cannot be mounted
  (not root, no CAP_SYS_ADMIN), ENOSPC is injected at the blob store's write instead
  (MB_ENOSPC_FLAG in tests/fault/crashrun.py).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailbridge.adapters.db.engine import make_engine, upgrade
from tests.fault import fixtures
from tests.fault.harness import (
    LONG,
    Injected,
    Rig,
    check_invariants,
    mixed_mail,
    norm,
    read_db,
    wait_until,
)
from tests.fault.pgcluster import ClusterUnavailable, PgCluster
from tests.fault.sink import KillingSink
from tests.integration.harness import png
from tests.servers.databases import missing
from tests.servers.dovecot import Mailbox

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600 if LONG else 180)]

# The fault fixtures, bound here so pytest finds them (tests/fault/fixtures.py).
killing_sink = fixtures.killing_sink
rig = fixtures.rig

SETTLE_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    try:
        server = PgCluster().init()
    except ClusterUnavailable as error:
        missing(str(error))
        raise
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


async def _fresh_database(cluster: PgCluster) -> str:
    import asyncpg

    name = f"mbfault_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(cluster.url(driver="postgresql"), timeout=10)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    url = cluster.url(name)
    engine = make_engine(url)
    try:
        await upgrade(engine, url)
    finally:
        await engine.dispose()
    return url


def handled(rig: Rig, mails: list[Injected]) -> bool:
    return len(rig.sink.messages) >= len(mails) and not rig.mailbox.uids("INBOX")


async def test_postgresql_stopped_and_started_under_the_running_daemon(
    cluster: PgCluster, mailbox: Mailbox, killing_sink: KillingSink, tmp_path: Path
) -> None:
    rig = Rig(mailbox, killing_sink, await _fresh_database(cluster), tmp_path)
    before = mixed_mail(mailbox, 3, tag="pg-before-")
    during = mixed_mail(mailbox, 8 if LONG else 4, tag="pg-during-", png=png(120, 90))
    mailbox.append_many([mail.data for mail in before])

    daemon = rig.start()
    try:
        wait_until(lambda: handled(rig, before), SETTLE_TIMEOUT, "the first mail handled")
        cluster.stop("fast")
        try:
            mailbox.append_many([mail.data for mail in during])
            # It tries, fails transiently and waits: nothing moved, nothing quarantined.
            wait_until(
                lambda: daemon.saw("mailbox_retry") + daemon.saw("message_deferred") >= 3,
                SETTLE_TIMEOUT,
                "the daemon retrying while the database is away",
            )
            assert len(mailbox.uids("INBOX")) == len(during)
            assert daemon.process.poll() is None, daemon.tail()  # still running
        finally:
            cluster.start()
        wait_until(lambda: handled(rig, before + during), SETTLE_TIMEOUT, "all mail handled")
    finally:
        code = daemon.terminate()

    assert code == 0, daemon.tail()
    assert daemon.saw("message_quarantined") == 0
    assert daemon.saw("mailbox_worker_failed") == 0  # "database away" is transient, not a bug
    counts = await check_invariants(rig, before + during)
    assert counts["acks"] == len(before + during)
    state = await read_db(rig.settings())
    assert {row.attempts for row in state.inbound} == {1}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, bool]]:
    """data/attachments as a 1 MB tmpfs: (path, True); or (path, False) when not mountable."""
    target = tmp_path / "data" / "attachments"
    target.mkdir(parents=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        yield target, mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def grow(store: Path) -> None:
    """Space returns: the tmpfs is remounted larger, with its files in place."""
    subprocess.run(["mount", "-o", "remount,size=64m", str(store)], check=True)


async def test_disk_full_in_the_attachment_store_defers_then_handles_once(
    mailbox: Mailbox,
    killing_sink: KillingSink,
    database_url: str,
    tmp_path: Path,
    small_disk: tuple[Path, bool],
) -> None:
    store, mounted = small_disk
    rig = Rig(mailbox, killing_sink, database_url, tmp_path)
    crash = {} if mounted else {"MB_ENOSPC_FLAG": str(tmp_path / "disk-full")}
    if not mounted:
        (tmp_path / "disk-full").touch()
    small = mixed_mail(mailbox, 2, tag="disk-a")
    big = mixed_mail(mailbox, 2, tag="disk-big", png=os.urandom(1_500_000))  # 2nd has the image
    later = mixed_mail(mailbox, 1, tag="disk-z")
    mails = small + big + later
    mailbox.append_many([mail.data for mail in mails])
    stuck = big[1].message_id

    daemon = rig.start(crash=crash)
    try:
        wait_until(lambda: daemon.saw("message_deferred") >= 2, SETTLE_TIMEOUT, "a deferral")
        held = await read_db(rig.settings())
        assert stuck not in {norm(row.message_id) for row in held.inbound}
        assert [row for row in held.inbound if row.state == "failed"] == []
        assert len(mailbox.uids("INBOX")) >= 1  # the big one waits on the server
        assert daemon.process.poll() is None
        if mounted:
            grow(store)
        else:
            (tmp_path / "disk-full").unlink()
        wait_until(lambda: handled(rig, mails), SETTLE_TIMEOUT, "all mail handled")
    finally:
        code = daemon.terminate()

    assert code == 0, daemon.tail()
    assert daemon.saw("message_quarantined") == 0
    await check_invariants(rig, mails)
