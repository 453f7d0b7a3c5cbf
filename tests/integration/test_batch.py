"""A fetched batch in one transaction ends each message as it would end alone (SQLite and PG)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from mailbridge.adapters.db import store
from mailbridge.adapters.db.models import Customer, InboundMessage
from mailbridge.app import App, open_app
from mailbridge.errors import TransientError
from mailbridge.pipeline.batch import process_batch
from mailbridge.pipeline.process import Processor
from mailbridge.records import Intake, Outcome, ParsedMail, ProcessResult
from mailbridge.settings import AckSettings, DatabaseSettings, Settings, StorageSettings
from tests.integration.harness import make_mail, png, read_db

pytestmark = pytest.mark.integration

SUPPORT = "support@example.test"
MAILBOX = "support@localhost/INBOX"


def settings_for(database_url: str, data_dir: Path, **ack: object) -> Settings:
    return Settings(
        database=DatabaseSettings(url=database_url),
        storage=StorageSettings(data_dir=data_dir),
        ack=AckSettings(from_address=SUPPORT, **ack),  # type: ignore[arg-type]
    )


def intakes(*mails: bytes, first_uid: int = 1) -> list[Intake]:
    return [Intake(mail, "imap", MAILBOX, 7, first_uid + n) for n, mail in enumerate(mails)]


async def run_batch(settings: Settings, *mails: bytes) -> list[Outcome]:
    async with open_app(settings) as app:
        handled = await process_batch(app.processor, intakes(*mails))
    return [item.result.outcome for item in handled]


async def test_a_flood_in_one_batch_is_capped_like_one_at_a_time(
    database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(
        database_url, tmp_path, max_per_recipient_hour=3, max_per_recipient_day=5
    )
    flood = [make_mail(to=SUPPORT, subject=f"Problem {n}") for n in range(5)]

    outcomes = await run_batch(settings, *flood)

    state = await read_db(settings)
    assert outcomes == [Outcome.TICKET_CREATED] * 5
    assert len(state.outbox) == 3
    capped = [r for i in state.inbound for r in i.reasons if r["rule"] == "rate_cap_hour"]
    assert len(capped) == 2


@pytest.mark.parametrize("together", [True, False], ids=["one-batch", "one-at-a-time"])
async def test_the_cap_counts_a_sender_with_an_international_domain(
    database_url: str, tmp_path: Path, together: bool
) -> None:
    # The outbox keeps the recipient in IDNA form: the count must look for that form.
    settings = settings_for(database_url, tmp_path, max_per_recipient_hour=2)
    flood = [  # an SMTPUTF8 message: the domain in UTF-8 in the header
        make_mail(to=SUPPORT, sender="Ana <ana@example.test>", subject=f"Problem {n}").replace(
            b"ana@example.test", "ana@bücher.test".encode()
        )
        for n in range(4)
    ]

    async with open_app(settings) as app:
        if together:
            await process_batch(app.processor, intakes(*flood))
        else:
            for intake in intakes(*flood):
                await app.processor.process(intake)

    state = await read_db(settings)
    assert [row.rcpt_to for row in state.outbox] == ["ana@xn--bcher-kva.test"] * 2
    capped = [r for i in state.inbound for r in i.reasons if r["rule"] == "rate_cap_hour"]
    assert len(capped) == 2


async def test_a_reply_in_the_same_batch_joins_the_ticket_it_answers(
    database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path)
    first = make_mail(to=SUPPORT, message_id="<first@customer.test>")
    more = make_mail(
        to=SUPPORT,
        subject="Re: Cannot log in to the admin panel",
        body="Also: the screenshot.",
        in_reply_to="<first@customer.test>",
        images=[("screen.png", png(40, 30))],
    )

    outcomes = await run_batch(settings, first, more)

    state = await read_db(settings)
    assert outcomes == [Outcome.TICKET_CREATED, Outcome.FOLLOW_UP]
    (ticket,) = state.tickets
    assert [len(m.attachments) for m in ticket.messages] == [0, 1]
    assert len(state.outbox) == 1  # one ack per ticket, none for the follow-up


async def test_the_same_message_twice_in_a_batch_makes_one_ticket(
    database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path)
    mail = make_mail(to=SUPPORT, message_id="<twice@customer.test>")

    async with open_app(settings) as app:
        handled = await process_batch(app.processor, intakes(mail, mail))

    first, second = (item.result for item in handled)
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.ticket_number == first.ticket_number is not None
    state = await read_db(settings)
    assert (len(state.tickets), len(state.inbound), len(state.outbox)) == (1, 1, 1)


async def test_a_known_customer_is_recognised_inside_a_batch(
    database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path)
    async with open_app(settings) as app, app.sessions.begin() as session:
        session.add(Customer(email="vip@client.test", name="VIP", language="ro", priority="high"))
    mails = [
        make_mail(to=SUPPORT, sender="Stranger <someone@else.test>"),
        make_mail(to=SUPPORT, sender="VIP <VIP@client.test>", subject="Question"),
    ]

    await run_batch(settings, *mails)

    state = await read_db(settings)
    assert [(t.requester_email, t.priority, t.language) for t in state.tickets] == [
        ("someone@else.test", "normal", "en"),
        ("vip@client.test", "high", "ro"),
    ]


async def test_a_failing_message_quarantines_alone_and_the_rest_of_the_batch_lands(
    database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path)
    (tmp_path / "attachments").write_text("a file where the attachment store should be")
    mails = [
        make_mail(to=SUPPORT, sender=f"c{n} <c{n}@customer.test>", subject=f"Problem {n}")
        for n in range(3)
    ]
    mails.insert(1, make_mail(to=SUPPORT, images=[("screen.png", png(40, 30))]))

    outcomes = await run_batch(settings, *mails)

    assert outcomes == [
        Outcome.TICKET_CREATED,
        Outcome.QUARANTINED,
        Outcome.TICKET_CREATED,
        Outcome.TICKET_CREATED,
    ]
    state = await read_db(settings)
    assert len(state.tickets) == len(state.outbox) == 3
    failed = [row for row in state.inbound if row.state == "failed"]
    assert [(row.stage, row.raw) for row in failed] == [("store", mails[1])]


async def test_the_checkpoint_moves_to_the_batch_s_highest_uid(
    database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path)
    mails = [make_mail(to=SUPPORT, subject=f"Problem {n}") for n in range(3)]

    async with open_app(settings) as app:
        await process_batch(app.processor, intakes(*mails, first_uid=40))
        async with app.sessions() as session:
            rows = (await session.execute(select(InboundMessage.uid))).scalars().all()
            point = await store.checkpoint(session, MAILBOX)
    assert sorted(rows) == [40, 41, 42]
    assert point is not None
    assert (point.uidvalidity, point.last_uid) == (7, 42)


REUSED = "<1700000000@mailer.test>"  # a broken mailer's Message-ID: the time, in seconds


def _ana_and_bob() -> tuple[bytes, bytes]:
    ana = make_mail(to=SUPPORT, sender="Ana <ana@customer.test>", message_id=REUSED)
    bob = make_mail(
        to=SUPPORT,
        sender="Bob <bob@other.test>",
        subject="The invoice total is wrong",
        body="Hello,\n\ninvoice 117 counts the hosting twice.\n\nBob",
        message_id=REUSED,
    )
    return ana, bob


async def _first_time(
    processor: Processor, path: str, ana: bytes, bob: bytes
) -> list[ProcessResult]:
    if path == "one-batch":
        return [item.result for item in await process_batch(processor, intakes(ana, bob))]
    results = [item.result for item in await process_batch(processor, intakes(ana))]
    if path == "two-batches":
        later = await process_batch(processor, intakes(bob, first_uid=2))
        return results + [item.result for item in later]
    return [*results, await processor.process(intakes(bob, first_uid=2)[0])]


@pytest.mark.parametrize("path", ["one-batch", "two-batches", "one-at-a-time"])
async def test_another_message_reusing_a_message_id_gets_its_own_ticket(
    database_url: str, tmp_path: Path, path: str
) -> None:
    settings = settings_for(database_url, tmp_path)
    ana, bob = _ana_and_bob()
    async with open_app(settings) as app:
        first = await _first_time(app.processor, path, ana, bob)
        again = await process_batch(app.processor, intakes(bob, ana, first_uid=3))
        alone = await app.processor.process(intakes(bob, first_uid=5)[0])

    state = await read_db(settings)
    assert [result.outcome for result in first] == [Outcome.TICKET_CREATED] * 2
    assert sorted(t.requester_email for t in state.tickets) == [
        "ana@customer.test",
        "bob@other.test",
    ]
    assert sorted(row.rcpt_to for row in state.outbox) == ["ana@customer.test", "bob@other.test"]
    assert len(state.inbound) == 2
    # A re-fetch of either is still the message held, not a third one.
    assert [h.result.duplicate for h in again] == [True, True]
    assert alone.duplicate
    bob_ticket = next(t.number for t in state.tickets if t.requester_email == "bob@other.test")
    assert again[0].result.ticket_number == alone.ticket_number == bob_ticket


async def test_a_copy_that_took_another_route_is_the_same_message(
    database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path)
    mail = make_mail(to=SUPPORT, message_id="<route@customer.test>")
    routed = (
        b"Received: from relay2.isp.test by mx.example.test; Sun, 22 Nov 2026 10:00:00 +0000\r\n"
        b"Delivered-To: office@example.test\r\nX-Spam-Score: 0.3\r\n" + mail
    )
    async with open_app(settings) as app:
        await process_batch(app.processor, intakes(mail))
        batched = await process_batch(app.processor, intakes(routed, routed, first_uid=2))
        alone = await app.processor.process(intakes(routed, first_uid=4)[0])

    state = await read_db(settings)
    assert (len(state.tickets), len(state.inbound), len(state.outbox)) == (1, 1, 1)
    assert [h.result.duplicate for h in batched] == [True, True]
    assert alone.duplicate


async def test_a_failure_after_another_worker_committed_the_message_leaves_its_ticket_alone(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same mail in two folders: worker B finds nothing held, worker A commits it, then
    B's write fails with a database error that is no integrity error (a deadlock, a statement
    timeout). B must not turn A's ticket into a quarantine that a replay would ticket again."""
    settings = settings_for(database_url, tmp_path)
    data = make_mail(to=SUPPORT, message_id="<two-folders@customer.test>")
    write_one = Processor.write_one
    async with open_app(settings) as app:
        worker_a = Processor(settings, app.sessions, app.blobs)

        async def interleaved(self: Processor, *args: object, **kwargs: object) -> object:
            if self is app.processor:  # only B's write is interleaved (the race is timing)
                await worker_a.process(Intake(data, "imap", "office@localhost/INBOX", 1, 9))
                raise DBAPIError("INSERT ...", {}, Exception("deadlock detected"))
            return await write_one(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Processor, "write_one", interleaved)
        result = await app.processor.process(intakes(data)[0])
        monkeypatch.setattr(Processor, "write_one", write_one)
        state = await read_db(settings)
        with pytest.raises(ValueError, match="not failed"):
            await app.processor.replay(state.inbound[0].id)

    state = await read_db(settings)
    assert result.duplicate
    assert result.outcome is Outcome.TICKET_CREATED
    assert [(row.state, row.outcome) for row in state.inbound] == [("done", "ticket_created")]
    assert len(state.tickets) == 1
    assert len(state.outbox) == 1


@pytest.mark.parametrize("then", ["writes", "fails"])
async def test_another_message_committed_under_its_message_id_meanwhile_is_not_taken_for_it(
    database_url: str, tmp_path: Path, then: str
) -> None:
    """B finds nothing held under the Message-ID, A commits a different message under it, then
    B's insert loses the race (or B's message fails): B's message must still get its own
    record, not be answered as a duplicate of A's."""
    settings = settings_for(database_url, tmp_path)
    ana, bob = _ana_and_bob()
    async with open_app(settings) as worker_a, open_app(settings) as worker_b:
        parse = worker_b.processor.parse

        async def interleaved(data: bytes) -> ParsedMail:  # the race is timing: forced here
            await worker_a.processor.process(Intake(ana, "imap", "office@localhost/INBOX", 1, 9))
            if then == "fails":
                raise ValueError("Bob's message cannot be parsed")
            return await parse(data)

        worker_b.processor.parse = interleaved  # type: ignore[method-assign]
        result = await worker_b.processor.process(intakes(bob)[0])

    state = await read_db(settings)
    assert not result.duplicate
    assert len(state.inbound) == 2
    bobs = [row for row in state.inbound if row.id == result.inbound_id]
    assert [row.sha256 for row in bobs] == [hashlib.sha256(bob).hexdigest()]
    if then == "writes":
        assert sorted(t.requester_email for t in state.tickets) == [
            "ana@customer.test",
            "bob@other.test",
        ]
    else:
        assert result.outcome is Outcome.QUARANTINED


@pytest.mark.parametrize("path", ["one-batch", "one-at-a-time"])
async def test_a_copy_of_a_message_whose_stored_raw_is_unreadable_waits_for_the_store(
    database_url: str, tmp_path: Path, path: str
) -> None:
    """The held raw is in the blob store (it is large) and cannot be read (the store is not
    mounted): the copy cannot be compared, and either guess could drop a message or answer one
    twice, so it is tried again later; once the store is back it is a duplicate."""
    settings = Settings(
        database=DatabaseSettings(url=database_url),
        storage=StorageSettings(data_dir=tmp_path, raw_inline_max_bytes=100),
        ack=AckSettings(from_address=SUPPORT),
    )
    mail = make_mail(to=SUPPORT, body="The site is down. " * 20, message_id="<big@customer.test>")
    routed = b"Received: from relay2.isp.test by mx.example.test\r\n" + mail

    async def handle(app: App) -> ProcessResult:
        if path == "one-batch":
            (item,) = await process_batch(app.processor, intakes(routed, first_uid=2))
            return item.result
        return await app.processor.process(intakes(routed, first_uid=2)[0])

    async with open_app(settings) as app:
        await app.processor.process(intakes(mail)[0])
        stored = app.blobs.path_for(hashlib.sha256(mail).hexdigest())
        away = stored.with_name("away")
        stored.rename(away)
        with pytest.raises(TransientError, match="cannot compare"):
            await handle(app)
        away.rename(stored)
        result = await handle(app)

    state = await read_db(settings)
    assert result.duplicate
    assert (len(state.tickets), len(state.inbound), len(state.outbox)) == (1, 1, 1)
