"""Mail in over real IMAP (Dovecot) → ticket in SQLite / PostgreSQL → acknowledgement over SMTP."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar

import pytest

from mailbridge import mailbox_worker
from mailbridge.adapters.blobs import BlobStore
from mailbridge.adapters.imap import ImapClient
from mailbridge.app import open_app
from tests.integration.harness import make_mail, make_settings, png, read_db, run_once
from tests.servers.dovecot import Mailbox
from tests.servers.smtp import SmtpSink

pytestmark = pytest.mark.integration


@pytest.fixture
def settings_for(mailbox: Mailbox, smtp_sink: SmtpSink, database_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    def build(**overrides):  # type: ignore[no-untyped-def]
        return make_settings(mailbox, smtp_sink, database_url, tmp_path / "data", **overrides)

    return build


async def test_plain_mail_becomes_one_ticket_and_one_ack(settings_for, mailbox, smtp_sink):  # type: ignore[no-untyped-def]
    settings = settings_for()
    original = make_mail(to=mailbox.user, message_id="<first@customer.test>")
    mailbox.append(original)

    await run_once(settings)

    state = await read_db(settings)
    assert [t.number for t in state.tickets] == ["MB-000001"]
    ticket = state.tickets[0]
    assert ticket.requester_email == "ana@customer.test"
    assert ticket.subject == "Cannot log in to the admin panel"
    assert len(ticket.messages) == 1
    assert [m.state for m in state.outbox] == ["sent"]

    (ack,) = smtp_sink.messages
    assert ack.rcpt_tos == ("ana@customer.test",)
    assert ack.message["Subject"] == "[#MB-000001] Cannot log in to the admin panel"
    assert "MB-000001" in ack.message.get_body(("plain",)).get_content()
    assert ack.message["In-Reply-To"] == "<first@customer.test>"
    assert ack.message["Auto-Submitted"] == "auto-replied"

    assert mailbox.uids("INBOX") == []
    assert mailbox.messages("Processed") == [original]


async def test_html_mail_with_screenshot_keeps_the_image_bytes(settings_for, mailbox, tmp_path):  # type: ignore[no-untyped-def]
    settings = settings_for()
    screenshot = png()
    mailbox.append(
        make_mail(
            to=mailbox.user,
            subject="Eroare la plată",
            body="Bună ziua, primesc o eroare la plată. Vedeți captura.",
            html="<p>Bună ziua, primesc o <b>eroare</b> la plată.</p>",
            images=[("captura.png", screenshot)],
        )
    )

    await run_once(settings)

    state = await read_db(settings)
    (ticket,) = state.tickets
    (attachment,) = ticket.messages[0].attachments
    assert attachment.filename == "captura.png"
    assert attachment.content_type == "image/png"
    assert attachment.size == len(screenshot)
    assert attachment.sha256 == hashlib.sha256(screenshot).hexdigest()
    stored = BlobStore(tmp_path / "data" / "attachments").get(attachment.sha256)
    assert stored == screenshot
    assert ticket.subject == "Eroare la plată"


async def test_cc_under_reject_makes_no_ticket_and_explains(settings_for, mailbox, smtp_sink):  # type: ignore[no-untyped-def]
    settings = settings_for(policy={"cc_mode": "reject"})
    mailbox.append(make_mail(to=mailbox.user, cc=["boss@customer.test"]))

    await run_once(settings)

    state = await read_db(settings)
    assert state.tickets == []
    assert [i.outcome for i in state.inbound] == ["rejected"]
    (reply,) = smtp_sink.messages
    assert reply.rcpt_tos == ("ana@customer.test",)
    assert "MB-" not in reply.message["Subject"]
    text = reply.message.get_body(("plain",)).get_content()
    assert mailbox.user in text  # tells them where to write again, alone
    assert "boss@customer.test" not in reply.rcpt_tos
    assert mailbox.uids("INBOX") == []
    assert len(mailbox.uids("Rejected")) == 1


async def test_cc_of_our_own_address_is_not_a_third_party(settings_for, mailbox, smtp_sink):  # type: ignore[no-untyped-def]
    settings = settings_for(policy={"cc_mode": "reject", "own_addresses": ["office@example.test"]})
    mailbox.append(make_mail(to=mailbox.user, cc=["Office <office@example.test>"]))

    await run_once(settings)

    state = await read_db(settings)
    assert len(state.tickets) == 1
    assert state.tickets[0].cc_flag is False


async def test_cc_under_flag_makes_a_flagged_ticket_with_the_cc_list(settings_for, mailbox):  # type: ignore[no-untyped-def]
    settings = settings_for(policy={"cc_mode": "flag"})
    mailbox.append(make_mail(to=mailbox.user, cc=["Boss <Boss@Customer.test>", "it@customer.test"]))

    await run_once(settings)

    state = await read_db(settings)
    (ticket,) = state.tickets
    assert ticket.cc_flag is True
    assert sorted(ticket.cc_addresses) == ["boss@customer.test", "it@customer.test"]
    assert {p.email for p in ticket.participants} == {
        "ana@customer.test",
        "boss@customer.test",
        "it@customer.test",
    }
    assert len(mailbox.uids("Processed")) == 1


class SimulatedCrash(Exception):
    """Stands for the process dying between the database commit and the IMAP MOVE."""


class CrashBeforeMove(ImapClient):
    async def settle(self, uids, folder, keyword):  # type: ignore[no-untyped-def]
        raise SimulatedCrash(f"died before moving {uids} to {folder}")


async def test_crash_between_commit_and_move_makes_no_second_ticket_or_ack(  # type: ignore[no-untyped-def]
    settings_for, mailbox, smtp_sink
):
    settings = settings_for()
    mailbox.append(make_mail(to=mailbox.user))

    with pytest.raises(SimulatedCrash):
        await run_once(settings, client_factory=CrashBeforeMove)
    assert len(mailbox.uids("INBOX")) == 1  # not moved: the crash came first
    assert len((await read_db(settings)).tickets) == 1

    await run_once(settings)

    state = await read_db(settings)
    assert len(state.tickets) == 1
    assert len(state.outbox) == 1
    assert len(smtp_sink.messages) == 1
    assert mailbox.uids("INBOX") == []
    assert len(mailbox.uids("Processed")) == 1


async def test_reply_to_the_ack_joins_the_same_ticket(settings_for, mailbox, smtp_sink):  # type: ignore[no-untyped-def]
    settings = settings_for()
    mailbox.append(make_mail(to=mailbox.user, message_id="<q1@customer.test>"))
    await run_once(settings)
    (ack,) = smtp_sink.messages

    reply = make_mail(
        to=mailbox.user,
        subject=f"Re: {ack.message['Subject']}",
        body="It works again after clearing the cache.\n\n> old quoted text",
        in_reply_to=ack.message["Message-ID"],
    )
    mailbox.append(reply)
    await run_once(settings)

    state = await read_db(settings)
    (ticket,) = state.tickets
    assert len(ticket.messages) == 2
    assert ticket.messages[1].display_text.strip() == "It works again after clearing the cache."
    assert len(smtp_sink.messages) == 1  # a follow-up gets no second acknowledgement


async def test_subject_tag_alone_threads_a_participant(settings_for, mailbox):  # type: ignore[no-untyped-def]
    settings = settings_for()
    mailbox.append(make_mail(to=mailbox.user))
    await run_once(settings)
    mailbox.append(make_mail(to=mailbox.user, subject="More details [#MB-000001]"))
    await run_once(settings)

    (ticket,) = (await read_db(settings)).tickets
    assert len(ticket.messages) == 2


async def test_stranger_quoting_a_ticket_gets_a_new_linked_ticket(settings_for, mailbox):  # type: ignore[no-untyped-def]
    settings = settings_for()
    mailbox.append(make_mail(to=mailbox.user))
    await run_once(settings)
    mailbox.append(
        make_mail(
            to=mailbox.user, sender="mallory@elsewhere.test", subject="Re: [#MB-000001] hello"
        )
    )
    await run_once(settings)

    state = await read_db(settings)
    first, second = state.tickets
    assert len(first.messages) == 1
    assert second.requester_email == "mallory@elsewhere.test"
    assert second.linked_ticket_id == first.id


async def test_smtp_down_keeps_the_ticket_and_sends_the_ack_later(settings_for, mailbox, smtp_sink):  # type: ignore[no-untyped-def]
    settings = settings_for()
    smtp_sink.stop()
    mailbox.append(make_mail(to=mailbox.user))

    handled, pending = await run_once(settings)

    assert (handled, pending) == (1, 1)
    state = await read_db(settings)
    assert len(state.tickets) == 1
    assert state.outbox[0].state == "pending"
    assert state.outbox[0].last_error

    smtp_sink.start()
    await run_once(settings)

    state = await read_db(settings)
    assert state.outbox[0].state == "sent"
    (ack,) = smtp_sink.messages
    assert ack.message["Message-ID"] == state.outbox[0].message_id


async def test_uidvalidity_change_does_not_duplicate_tickets(settings_for, mailbox):  # type: ignore[no-untyped-def]
    settings = settings_for(imap={"folders": ["Support"]})
    mailbox.create_folder("Support")
    mails = [make_mail(to=mailbox.user, subject=f"Problem {n}") for n in range(3)]
    for mail in mails:
        mailbox.append(mail, folder="Support")
    before = mailbox.uidvalidity("Support")
    await run_once(settings)
    assert len((await read_db(settings)).tickets) == 3

    # The folder is deleted and recreated, and the same mail appended again (a restore).
    mailbox.delete_folder("Support")
    mailbox.create_folder("Support")
    for mail in mails:
        mailbox.append(mail, folder="Support")
    assert mailbox.uidvalidity("Support") != before
    await run_once(settings)

    state = await read_db(settings)
    assert len(state.tickets) == 3
    assert len(state.outbox) == 3
    assert mailbox.uids("Support") == []


async def test_a_backlog_longer_than_a_size_window_drains_whole_and_in_order(  # type: ignore[no-untyped-def]
    settings_for, mailbox, smtp_sink, monkeypatch
):
    # Sizes are read a window of UIDs at a time (1,000 in production): windows of 2 and
    # batches of 2 here, so 5 messages cross both boundaries.
    monkeypatch.setattr(mailbox_worker, "SIZE_WINDOW", 2)
    asked: list[list[int]] = []
    real_sizes = ImapClient.sizes

    async def sizes(client, uids):  # type: ignore[no-untyped-def]
        asked.append(list(uids))
        return await real_sizes(client, uids)

    monkeypatch.setattr(ImapClient, "sizes", sizes)
    settings = settings_for(imap={"fetch_batch": 2})
    subjects = [f"problem {n}" for n in range(1, 6)]
    for subject in subjects:
        mailbox.append(make_mail(to=mailbox.user, subject=subject))

    await run_once(settings)

    state = await read_db(settings)
    by_number = sorted((t.number, t.subject) for t in state.tickets)
    assert by_number == [(f"MB-00000{n}", f"problem {n}") for n in range(1, 6)]
    assert len(smtp_sink.messages) == 5
    assert mailbox.uids("INBOX") == []
    assert len(mailbox.uids("Processed")) == 5
    assert [len(uids) for uids in asked] == [2, 2, 1]


async def test_memory_is_given_back_around_large_messages_once_between_two(  # type: ignore[no-untyped-def]
    settings_for, mailbox, monkeypatch
):
    calls: list[str] = []
    monkeypatch.setattr(mailbox_worker, "LARGE_MESSAGE_BYTES", 1_000)
    monkeypatch.setattr(mailbox_worker, "give_back_free_memory", lambda: calls.append("trim"))
    real_handle = mailbox_worker.MailboxWorker._handle_batch

    async def handle(worker, client, state, batch, stop):  # type: ignore[no-untyped-def]
        calls.append("batch")
        return await real_handle(worker, client, state, batch, stop)

    monkeypatch.setattr(mailbox_worker.MailboxWorker, "_handle_batch", handle)
    settings = settings_for(imap={"fetch_batch": 1})
    large = [("screen.png", png(200, 150))]  # 2.5 KB with it, 0.3 KB without: "large" here
    for subject, images in (("a", []), ("b", large), ("c", large), ("d", [])):
        mailbox.append(make_mail(to=mailbox.user, subject=subject, images=images))

    await run_once(settings)

    assert len((await read_db(settings)).tickets) == 4
    assert calls == ["batch", "trim", "batch", "trim", "batch", "trim", "batch"]


async def test_a_broken_message_is_quarantined_and_the_rest_flow(settings_for, mailbox):  # type: ignore[no-untyped-def]
    settings = settings_for()
    mailbox.append(make_mail(to=mailbox.user, subject="first"))
    mailbox.append(b"\x00\xff garbage that is not a mail at all \r\n\r\n\x00")
    mailbox.append(make_mail(to=mailbox.user, subject="third"))

    await run_once(settings)

    state = await read_db(settings)
    assert mailbox.uids("INBOX") == []
    outcomes = sorted(i.outcome or "" for i in state.inbound)
    # Whatever the parser makes of garbage, it ends somewhere visible, never dropped.
    assert len(outcomes) == 3
    assert {t.subject for t in state.tickets} >= {"first", "third"}


async def test_attachment_store_failure_quarantines_and_the_mailbox_moves_on(  # type: ignore[no-untyped-def]
    settings_for, mailbox, tmp_path
):
    settings = settings_for()
    (tmp_path / "data").mkdir(parents=True)
    (tmp_path / "data" / "attachments").write_text("not a directory")  # unwritable store
    mailbox.append(make_mail(to=mailbox.user, subject="with image", images=[("a.png", png())]))
    mailbox.append(make_mail(to=mailbox.user, subject="plain text"))

    await run_once(settings)

    state = await read_db(settings)
    assert [t.subject for t in state.tickets] == ["plain text"]
    failed = [i for i in state.inbound if i.state == "failed"]
    assert len(failed) == 1
    assert failed[0].stage == "store"
    assert "attachment store" in (failed[0].error or "")
    assert b"with image" in failed[0].raw
    assert len(mailbox.uids("Quarantine")) == 1
    assert len(mailbox.uids("Processed")) == 1


async def test_too_large_attachment_is_left_out_and_the_sender_is_told(  # type: ignore[no-untyped-def]
    settings_for, mailbox, smtp_sink
):
    settings = settings_for(storage={"max_attachment_bytes": 2000})
    big = png(width=400, height=300)
    assert len(big) > 2000
    mailbox.append(
        make_mail(to=mailbox.user, body="See the screenshot.", images=[("huge.png", big)])
    )

    await run_once(settings)

    (ticket,) = (await read_db(settings)).tickets
    (message,) = ticket.messages
    assert message.attachments == []
    assert len(message.omitted) == 1
    assert "huge.png" in message.omitted[0]
    assert "See the screenshot." in message.body_text
    (ack,) = smtp_sink.messages
    assert "huge.png" in ack.message.get_body(("plain",)).get_content()


class WithoutOneBody(ImapClient):
    """As a server whose store cannot read one message: SEARCH lists it, FETCH gives no body
    (Dovecot always can, so the reply is trimmed here; the rest is the real server)."""

    fetches: ClassVar[list[list[int]]] = []

    async def fetch(self, uids):  # type: ignore[no-untyped-def]
        WithoutOneBody.fetches.append(sorted(uids))
        return [m for m in await super().fetch(uids) if b"Subject: cannot be read" not in m.data]


async def test_a_message_the_server_never_gives_is_recorded_and_moved_not_fetched_for_ever(  # type: ignore[no-untyped-def]
    settings_for, mailbox, smtp_sink
):
    settings = settings_for()
    mailbox.append(make_mail(to=mailbox.user, subject="first"))
    mailbox.append(make_mail(to=mailbox.user, subject="cannot be read"))
    mailbox.append(make_mail(to=mailbox.user, subject="third"))
    WithoutOneBody.fetches = []

    handled, _pending = await run_once(settings, client_factory=WithoutOneBody)

    state = await read_db(settings)
    assert sorted(t.subject for t in state.tickets) == ["first", "third"]
    (unreadable,) = [i for i in state.inbound if i.state == "failed"]
    assert (unreadable.uid, unreadable.stage, unreadable.size) == (2, "fetch", 0)
    assert "returned no body in 3 fetches" in (unreadable.error or "")
    assert WithoutOneBody.fetches == [[1, 2, 3], [2], [2]]
    assert handled == 3  # the quarantine is counted (status, metrics) like any other
    assert mailbox.uids("INBOX") == []
    assert len(mailbox.uids("Quarantine")) == 1
    assert len(smtp_sink.messages) == 2

    await run_once(settings, client_factory=WithoutOneBody)  # nothing left to fetch
    assert WithoutOneBody.fetches == [[1, 2, 3], [2], [2]]
    async with open_app(settings) as app:
        with pytest.raises(ValueError, match="no bytes to replay"):
            await app.processor.replay(unreadable.id)
