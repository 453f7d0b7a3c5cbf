"""Threading: replies join their ticket only when the sender takes part in it."""

from __future__ import annotations

from mailbridge.pipeline.thread import choose_thread, number_pattern, thread_hint
from mailbridge.records import TicketView
from tests.unit.records_factory import parsed

TICKET = TicketView("MB-000123", frozenset({"ana@customer.test", "boss@customer.test"}))


def test_number_pattern_follows_the_format() -> None:
    assert number_pattern("MB-{id:06d}").fullmatch("MB-000123")
    assert number_pattern("T{id}/x").fullmatch("T77/x")
    assert not number_pattern("MB-{id:06d}").fullmatch("XX-000123")


def test_hint_reads_tags_and_references() -> None:
    mail = parsed(
        subject="Re: [#mb-000123] and [# MB-000124 ]",
        in_reply_to=("<a@x>",),
        references=("<root@x>", "<a@x>"),
    )
    hint = thread_hint(mail, "MB-{id:06d}")
    assert hint.ticket_numbers == ("MB-000123", "MB-000124")
    assert hint.referenced_ids == ("<a@x>", "<root@x>")


def test_reply_from_a_participant_joins() -> None:
    hint = thread_hint(parsed(in_reply_to=("<ack@us>",)), "MB-{id:06d}")
    match = choose_thread(
        hint, by_reference={"<ack@us>": TICKET}, by_number={}, sender="Ana@Customer.test"
    )
    assert (match.ticket_number, match.how) == ("MB-000123", "references")


def test_subject_tag_from_a_recorded_cc_joins() -> None:
    hint = thread_hint(parsed(subject="[#MB-000123] more"), "MB-{id:06d}")
    match = choose_thread(
        hint, by_reference={}, by_number={"MB-000123": TICKET}, sender="boss@customer.test"
    )
    assert (match.ticket_number, match.how) == ("MB-000123", "subject_tag")


def test_stranger_gets_a_new_ticket_linked_to_the_old_one() -> None:
    hint = thread_hint(parsed(subject="[#MB-000123] give me access"), "MB-{id:06d}")
    match = choose_thread(
        hint, by_reference={}, by_number={"MB-000123": TICKET}, sender="eve@evil.test"
    )
    assert match.ticket_number is None
    assert match.linked_number == "MB-000123"


def test_unknown_number_is_a_new_ticket() -> None:
    hint = thread_hint(parsed(subject="[#MB-999999] hi"), "MB-{id:06d}")
    match = choose_thread(hint, by_reference={}, by_number={}, sender="ana@customer.test")
    assert (match.ticket_number, match.linked_number, match.how) == (None, None, "new")
