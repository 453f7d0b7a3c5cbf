"""Acknowledgement delivery under SMTP faults, per-recipient caps, and no loops between robots."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from mailbridge.adapters.db.models import InboundMessage, Outbox
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
from tests.integration.harness import make_mail
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


async def drain(settings: Settings) -> list[Outbox]:
    async with open_app(settings) as app:
        worker = OutboxWorker(settings.smtp, app.sessions)
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
