"""Acknowledgement delivery under SMTP faults, per-recipient caps, and no loops between robots."""

from __future__ import annotations

import asyncio
import os
import random
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from structlog.testing import capture_logs

from mailbridge import delivery
from mailbridge.adapters.db.engine import make_engine, upgrade
from mailbridge.adapters.db.models import InboundMessage, Outbox
from mailbridge.adapters.db.sender_lock import SenderLock
from mailbridge.adapters.smtp import SendResult, SendStatus
from mailbridge.app import open_app
from mailbridge.delivery import OutboxWorker, next_state
from mailbridge.records import Intake
from mailbridge.settings import (
    AckSettings,
    DatabaseSettings,
    Settings,
    SmtpSettings,
    StorageSettings,
)
from tests.integration.harness import make_mail, make_settings, run_once
from tests.servers.dovecot import Mailbox
from tests.servers.smtp import SmtpSink

pytestmark = pytest.mark.integration

SUPPORT = "support@example.test"


def settings_for(database_url: str, data_dir: Path, sink: SmtpSink, **ack: object) -> Settings:
    return Settings(
        smtp=sink.settings(backoff_base_seconds=0.01, backoff_max_seconds=0.05, max_attempts=4),
        database=DatabaseSettings(url=database_url),
        storage=StorageSettings(data_dir=data_dir),
        ack=AckSettings(from_address=SUPPORT, **ack),  # type: ignore[arg-type]
    )


async def ingest(settings: Settings, *mails: bytes) -> None:
    async with open_app(settings) as app:
        for mail in mails:
            await app.processor.process(Intake(mail, "pipe"))


async def drain(settings: Settings, at: datetime | None = None) -> list[Outbox]:
    async with open_app(settings) as app:
        clock = {} if at is None else {"clock": lambda: at}
        worker = OutboxWorker(settings.smtp, app.sessions, **clock)
        try:
            await worker.drain(include_not_due=True)
        finally:
            await worker.close()
        async with app.sessions() as session:
            return list((await session.scalars(select(Outbox).order_by(Outbox.id))).all())


async def test_4xx_is_retried_until_sent(
    database_url: str, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    settings = settings_for(database_url, tmp_path, smtp_sink)
    await ingest(settings, make_mail(to=SUPPORT))
    smtp_sink.reply(451, "4.3.0 Try again later", stage="rcpt")

    (row,) = await drain(settings)
    assert (row.state, row.attempts) == ("pending", 1)
    assert "451" in (row.last_error or "")

    smtp_sink.accept()
    (row,) = await drain(settings)
    assert (row.state, row.attempts) == ("sent", 2)
    assert [m.message["Message-ID"] for m in smtp_sink.messages] == [row.message_id]


async def test_one_pass_tries_every_row_once_beyond_a_page_of_rows(
    database_url: str, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    settings = settings_for(database_url, tmp_path, smtp_sink)
    async with open_app(settings) as app, app.sessions.begin() as session:
        for n in range(120):  # more than one page of due rows
            session.add(
                Outbox(
                    kind="ack",
                    message_id=f"<ack{n}@mailbridge.test>",
                    mail_from=SUPPORT,
                    rcpt_to=f"c{n}@customer.test",
                    data=f"Subject: ack {n}\r\n\r\nhello\r\n".encode(),
                )
            )
    smtp_sink.reply(451, "4.3.0 Try again later", stage="rcpt")

    async with open_app(settings) as app:
        worker = OutboxWorker(settings.smtp, app.sessions)
        try:
            report = await worker.drain(include_not_due=True)  # retried rows stay pending
        finally:
            await worker.close()
        async with app.sessions() as session:
            rows = (await session.scalars(select(Outbox))).all()

    assert report.retried == 120
    assert {(row.state, row.attempts) for row in rows} == {("pending", 1)}


async def test_5xx_is_final_with_the_servers_reply(
    database_url: str, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    settings = settings_for(database_url, tmp_path, smtp_sink)
    await ingest(settings, make_mail(to=SUPPORT))
    smtp_sink.reply(550, "5.1.1 No such user here", stage="rcpt")

    (row,) = await drain(settings)
    assert row.state == "failed"
    assert "5.1.1 No such user here" in (row.last_error or "")
    smtp_sink.accept()
    (row,) = await drain(settings)
    assert row.state == "failed"  # never resent by itself
    assert smtp_sink.messages == []


async def test_a_sent_ack_logs_one_info_line_with_the_servers_reply(
    database_url: str, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    settings = settings_for(database_url, tmp_path, smtp_sink)
    await ingest(settings, make_mail(to=SUPPORT))

    with capture_logs() as logs:
        (row,) = await drain(settings)

    assert row.state == "sent"
    info = [e["event"] for e in logs if e["log_level"] == "info"]
    assert [e for e in info if e.startswith(("outbox_", "smtp_"))] == ["outbox_sent"]
    [line] = [e for e in logs if e["event"] == "outbox_sent"]
    assert (line["message_id"], line["outbox_id"]) == (row.message_id, row.id)
    assert line["detail"].startswith("250 ")
    assert [e["log_level"] for e in logs if e["event"] == "smtp_sent"] == ["debug"]


def utc(moment: datetime | None) -> datetime | None:
    """SQLite gives back naive datetimes for UTC ones; PostgreSQL keeps the zone."""
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


async def test_each_outcome_records_its_own_time_and_leaves_the_others(
    database_url: str, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    settings = settings_for(database_url, tmp_path, smtp_sink)
    await ingest(settings, make_mail(to=SUPPORT), make_mail(to=SUPPORT, sender="bo@example.org"))
    first = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    smtp_sink.reply(451, "4.3.0 Try again later", stage="rcpt")

    rows = await drain(settings, at=first)
    assert [(r.state, r.attempts, r.sent_at) for r in rows] == [("pending", 1, None)] * 2
    due = [utc(r.next_attempt_at) for r in rows]
    window = (first + timedelta(seconds=0.01), first + timedelta(seconds=0.05))
    assert all(moment is not None and window[0] <= moment <= window[1] for moment in due)

    smtp_sink.reply(550, "5.1.1 No such user here", stage="rcpt", recipients={"bo@example.org"})
    later = first + timedelta(minutes=1)
    sent, failed = await drain(settings, at=later)
    assert (sent.state, sent.attempts, sent.uncertain, sent.last_error) == ("sent", 2, False, None)
    assert utc(sent.sent_at) == later
    assert (failed.state, failed.attempts, failed.uncertain) == ("failed", 2, False)
    assert "5.1.1 No such user here" in (failed.last_error or "")
    assert failed.sent_at is None
    assert [utc(sent.next_attempt_at), utc(failed.next_attempt_at)] == due  # left as they were


async def test_drop_after_the_final_dot_is_retried_once_only(
    database_url: str, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    settings = settings_for(database_url, tmp_path, smtp_sink)
    await ingest(settings, make_mail(to=SUPPORT))
    smtp_sink.drop_after_data()

    (row,) = await drain(settings)
    assert (row.state, row.uncertain) == ("pending", True)
    (row,) = await drain(settings)
    assert row.state == "failed"
    assert len(smtp_sink.seen) == 2  # first try and the single retry, same Message-ID
    assert len({m.message["Message-ID"] for m in smtp_sink.seen}) == 1


def test_retry_rules_are_capped() -> None:
    smtp = SmtpSettings(max_attempts=3, backoff_base_seconds=10, backoff_max_seconds=60)
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    rng = random.Random(1)
    retry = SendResult(SendStatus.RETRY, "421 busy")
    state, when, _ = next_state(0, False, retry, smtp, now, rng)
    assert state == "pending"
    assert when is not None
    assert now < when <= now + timedelta(seconds=60)
    assert next_state(2, False, retry, smtp, now, rng)[0] == "failed"  # third attempt was last
    assert next_state(0, False, SendResult(SendStatus.FAILED, "550"), smtp, now, rng)[0] == "failed"


async def test_per_recipient_cap_stops_a_flood(
    database_url: str, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    settings = settings_for(
        database_url, tmp_path, smtp_sink, max_per_recipient_hour=3, max_per_recipient_day=5
    )
    flood = [make_mail(to=SUPPORT, subject=f"Problem {n}") for n in range(5)]

    await ingest(settings, *flood)

    async with open_app(settings) as app, app.sessions() as session:
        outbox = (await session.scalars(select(Outbox))).all()
        inbound = (await session.scalars(select(InboundMessage).order_by(InboundMessage.id))).all()
    assert len(outbox) == 3
    assert [i.outcome for i in inbound] == ["ticket_created"] * 5  # every message still a ticket
    capped = [r for i in inbound for r in i.reasons if r["rule"] == "rate_cap_hour"]
    assert len(capped) == 2


async def test_two_helpdesks_do_not_answer_each_other(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    """Helpdesk A and helpdesk B each run mailbridge; B's ack reaches A and stops there."""
    a = settings_for(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", tmp_path / "a", smtp_sink)
    b = Settings(
        smtp=a.smtp,
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"),
        storage=StorageSettings(data_dir=tmp_path / "b"),
        ack=AckSettings(from_address="help@vendor.test", message_id_domain="vendor.invalid"),
    )
    for side in (a, b):
        from mailbridge.adapters.db.engine import make_engine, upgrade

        engine = make_engine(side.database_url)
        await upgrade(engine, side.database_url)
        await engine.dispose()

    # Someone at A's customer writes to B's helpdesk with A's support address as sender.
    await ingest(b, make_mail(to="help@vendor.test", sender=SUPPORT))
    await drain(b)
    exchanged = 0
    for _ in range(4):  # let the robots talk as long as they want, bounded
        mails = smtp_sink.messages[exchanged:]
        if not mails:
            break
        exchanged += len(mails)
        for mail in mails:
            target = a if mail.rcpt_tos == (SUPPORT,) else b
            await ingest(target, mail.data)
            await drain(target)

    assert exchanged == 1  # B acknowledged once; A ticketed B's ack and said nothing back
    async with open_app(a) as app, app.sessions() as session:
        (row,) = (await session.scalars(select(InboundMessage))).all()
    rules = {r["rule"] for r in row.reasons}
    assert "auto_submitted" in rules


async def test_two_drains_at_once_send_each_ack_once(
    database_url: str, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    """Two senders on one database (a cron `run --once` beside the daemon, two daemons
    overlapping in a deploy) must not both send the rows they both read as pending."""
    settings = settings_for(database_url, tmp_path, smtp_sink)
    await ingest(settings, *(make_mail(to=SUPPORT, subject=f"Problem {n}") for n in range(5)))
    async with open_app(settings) as app:
        first = OutboxWorker(settings.smtp, app.sessions)
        second = OutboxWorker(settings.smtp, app.sessions)
        try:
            reports = await asyncio.gather(
                first.drain(include_not_due=True), second.drain(include_not_due=True)
            )
        finally:
            await first.close()
            await second.close()

    received = [mail.message["Message-ID"] for mail in smtp_sink.messages]
    assert len(received) == len(set(received)) == 5
    assert sum(report.sent for report in reports) == 5


async def test_a_drain_leaves_the_rows_to_the_sender_holding_the_lock(
    database_url: str, tmp_path: Path, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(database_url, tmp_path, smtp_sink)
    await ingest(settings, make_mail(to=SUPPORT))
    monkeypatch.setattr(delivery, "LOCK_WAIT_SECONDS", 0.3)
    # Another process's sender: its own engine, so its own file handle or connection.
    other_engine = make_engine(settings.database_url)
    other = SenderLock(other_engine)
    try:
        assert await other.acquire(wait=0)
        with capture_logs() as logs:
            (row,) = await drain(settings)
        assert row.state == "pending"
        assert smtp_sink.messages == []
        assert "outbox_busy_elsewhere" in [entry["event"] for entry in logs]
    finally:
        await other.release()
        await other_engine.dispose()

    (row,) = await drain(settings)
    assert row.state == "sent"
    assert len(smtp_sink.messages) == 1


async def test_a_sender_whose_postgresql_lock_session_ends_stops_sending(
    pg_database: str, tmp_path: Path, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL frees an advisory lock when its session ends under the holder (a failover,
    pg_terminate_backend, idle_session_timeout); another sender may then take it, so the
    holder must notice before it sends the next page of rows."""
    engine = make_engine(pg_database)
    await upgrade(engine, pg_database)
    settings = settings_for(pg_database, tmp_path, smtp_sink)
    await ingest(settings, *(make_mail(to=SUPPORT, subject=f"Problem {n}") for n in range(3)))
    monkeypatch.setattr(delivery, "_BATCH", 1)  # a page per row: the check comes between sends

    async def end_the_lock_session() -> None:
        async with engine.connect() as admin:
            pid = await admin.scalar(text("SELECT pid FROM pg_locks WHERE locktype = 'advisory'"))
            await admin.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    try:
        async with open_app(settings) as app:
            worker = OutboxWorker(settings.smtp, app.sessions)
            send_one = worker._send_one

            async def send_then_lose_the_lock(row: Outbox) -> delivery.DrainReport:
                report = await send_one(row)
                await end_the_lock_session()
                return report

            monkeypatch.setattr(worker, "_send_one", send_then_lose_the_lock)
            try:
                with capture_logs() as logs:
                    report = await worker.drain(include_not_due=True)
            finally:
                await worker.close()
    finally:
        await engine.dispose()

    assert report.sent == 1
    assert len(smtp_sink.messages) == 1
    assert "outbox_lock_lost" in [entry["event"] for entry in logs]
    rows = await drain(settings)  # a sender that holds the lock sends the rest, once each
    assert [row.state for row in rows] == ["sent"] * 3
    assert len(smtp_sink.messages) == 3


async def test_run_once_counts_the_acks_another_sender_still_holds(
    database_url: str,
    tmp_path: Path,
    mailbox: Mailbox,
    smtp_sink: SmtpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`run --once` beside a daemon that is sending: it reports the rows still pending, not 0."""
    settings = make_settings(mailbox, smtp_sink, database_url, tmp_path / "data")
    mailbox.append_many([make_mail(to=mailbox.user, subject=f"Problem {n}") for n in range(2)])
    monkeypatch.setattr(delivery, "LOCK_WAIT_SECONDS", 0.2)
    other_engine = make_engine(settings.database_url)
    other = SenderLock(other_engine)
    try:
        assert await other.acquire(wait=0)
        handled, pending = await run_once(settings)
    finally:
        await other.release()
        await other_engine.dispose()
    assert (handled, pending) == (2, 2)
    assert smtp_sink.messages == []


async def test_a_deleted_lock_file_is_noticed_by_the_sender_that_held_it(tmp_path: Path) -> None:
    """Deleting the lock file (a cleanup script) lets another process lock a new file at the
    same path: the first sender must see that its lock is no longer the one that counts."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'mailbridge.db'}"
    first_engine, second_engine = make_engine(url), make_engine(url)
    first, second = SenderLock(first_engine), SenderLock(second_engine)
    try:
        assert await first.acquire(wait=0)
        assert await first.still_held()
        (tmp_path / "mailbridge.db.outbox-lock").unlink()
        assert await second.acquire(wait=0)
        assert not await first.still_held()
        assert await second.still_held()
    finally:
        await first.release()
        await second.release()
        await first_engine.dispose()
        await second_engine.dispose()


async def test_the_lock_file_opens_for_every_user_whatever_the_umask(tmp_path: Path) -> None:
    """A CLI run as root (umask 077) that makes the lock file first must not lock the service
    user's daemon out of it: the daemon could then never send."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'mailbridge.db'}"
    engine = make_engine(url)
    lock = SenderLock(engine)
    umask = os.umask(0o077)
    try:
        assert await lock.acquire(wait=0)
    finally:
        os.umask(umask)
        await lock.release()
        await engine.dispose()
    mode = (tmp_path / "mailbridge.db.outbox-lock").stat().st_mode
    assert stat.S_IMODE(mode) == 0o644
