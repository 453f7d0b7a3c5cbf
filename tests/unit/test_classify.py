"""Ticket type, department and priority as a support agent would expect them."""

from __future__ import annotations

import pytest

from mailbridge.pipeline.classify import classify, department_of, priority_of, ticket_type_of
from mailbridge.pipeline.textfold import fold
from mailbridge.records import CustomerView, Priority, TicketType
from mailbridge.settings import ClassifySettings
from tests.unit.records_factory import parsed

SETTINGS = ClassifySettings()


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("[Bug] checkout fails", TicketType.BUG),
        ("[Eroare] plata nu trece", TicketType.BUG),
        ("[Greška] forma", TicketType.BUG),
        ("[Грешка] форма", TicketType.BUG),
        ("[Question] invoices", TicketType.QUESTION),
        ("[Întrebare] facturi", TicketType.QUESTION),
        ("[Intrebare] facturi", TicketType.QUESTION),
        ("[Pitanje] račun", TicketType.QUESTION),
        ("[Питање] рачун", TicketType.QUESTION),
        ("[Configurare] DNS", TicketType.CONFIGURATION),
        ("[Razvoj] nova stranica", TicketType.DEVELOPMENT),
        ("[Modificare] logo", TicketType.MODIFICATION),
        ("[None] misc", TicketType.NONE),
    ],
)
def test_subject_tag_decides_the_type(subject: str, expected: TicketType) -> None:
    ticket_type, rule = ticket_type_of(parsed(subject=subject), SETTINGS)
    assert ticket_type is expected
    assert rule.startswith("subject_tag:")


def test_a_ticket_number_tag_is_not_a_type_tag() -> None:
    ticket_type, rule = ticket_type_of(parsed(subject="Re: [#MB-000001] thanks"), SETTINGS)
    assert (ticket_type, rule) == (TicketType.NONE, "no_match")


@pytest.mark.parametrize(
    ("subject", "body", "expected"),
    [
        ("Site-ul nu merge", "", TicketType.BUG),
        ("Сајт не ради", "", TicketType.BUG),
        ("hello", "I get an error when I pay", TicketType.BUG),
        ("DNS", "please check the MX record", TicketType.CONFIGURATION),
        ("Logo", "Vă rog să schimbati logo-ul", TicketType.MODIFICATION),
        ("Hello", "Thanks for everything", TicketType.NONE),
    ],
)
def test_keywords_decide_when_no_tag(subject: str, body: str, expected: TicketType) -> None:
    ticket_type, rule = ticket_type_of(parsed(subject=subject, body=body), SETTINGS)
    assert ticket_type is expected
    if expected is not TicketType.NONE:
        assert rule.startswith("keyword:")


@pytest.mark.parametrize(
    ("subject", "body", "rule"),
    [
        ("Hello", "Greška u izveštaju", "keyword:body:greska"),
        ("Грешка у извештају", "", "keyword:subject:greska"),
        ("Hello", "Plata nu funcționează.", "keyword:body:nu functioneaza"),
        ("Hello", "(eroare)", "keyword:body:eroare"),
        # Table order, not text order: the question comes first, the bug is still a bug.
        ("Hello", "How do I get past this error?", "keyword:body:error"),
        ("How do I pay?", "it crashes", "keyword:subject:how do i"),
        # Inside a longer word, also one whose neighbouring letter folding leaves alone.
        ("Hello", "exchange rates; debugger", "no_match"),
        ("Hello", "errorы øbug", "no_match"),
        ("Hello", "error_code bug2", "no_match"),
    ],
)
def test_keywords_match_whole_words_after_folding(subject: str, body: str, rule: str) -> None:
    assert ticket_type_of(parsed(subject=subject, body=body), SETTINGS)[1] == rule


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"Bug": ["nu merge bine"], "Question": ["nu merge"]}, "keyword:body:nu merge bine"),
        ({"Question": ["nu merge"], "Bug": ["nu merge bine"]}, "keyword:body:nu merge"),
        ({"Question": ["bine"], "Bug": ["nu merge"]}, "keyword:body:bine"),
    ],
)
def test_overlapping_keywords_follow_the_table(table: dict[str, list[str]], expected: str) -> None:
    settings = ClassifySettings(type_keywords=table)
    assert ticket_type_of(parsed(body="Nu merge bine."), settings)[1] == expected


def test_the_first_listed_urgent_word_is_the_reason() -> None:
    mail = parsed(subject="Site down")
    for words, reason in ((["down", "site down"], "down"), (["site down", "down"], "site down")):
        settings = ClassifySettings(urgent_words=words)
        assert priority_of(mail, settings, None)[1] == (f"urgent_word:{reason}",)


def test_keyword_table_from_settings_replaces_the_default() -> None:
    settings = ClassifySettings(type_keywords={"Development": ["plugin"]})
    assert ticket_type_of(parsed(body="a new plugin please"), settings)[0] is TicketType.DEVELOPMENT
    assert ticket_type_of(parsed(body="error everywhere"), settings)[0] is TicketType.NONE


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        ("support@example.com", "Support"),
        ("financiar@example.com", "Billing"),
        ("Office@Example.com", "Sales"),
        ("support+billing@example.com", "Billing"),
        ("support+unknown@example.com", "Support"),
        ("random@example.com", "Support"),
    ],
)
def test_department_by_the_address_written_to(to: str, expected: str) -> None:
    assert department_of(parsed(to=(to,)), SETTINGS, frozenset()) == expected


def test_delivered_to_wins_over_to() -> None:
    mail = parsed(to=("list@example.com",), headers=(("Delivered-To", "office@example.com"),))
    assert department_of(mail, SETTINGS, frozenset()) == "Sales"


def test_known_customer_outranks_unknown_and_urgent_words_win() -> None:
    vip = CustomerView("ana@customer.test", "Ana", "ro", Priority.HIGH)
    assert priority_of(parsed(), SETTINGS, None)[0] is Priority.NORMAL
    assert priority_of(parsed(), SETTINGS, vip)[0] is Priority.HIGH
    urgent, reasons = priority_of(parsed(subject="SITE DOWN!!"), SETTINGS, None)
    assert urgent is Priority.URGENT
    assert reasons == ("urgent_word:site down",)
    assert priority_of(parsed(subject="Sajt ne radi"), SETTINGS, None)[0] is Priority.URGENT


def test_importance_header_is_a_hint_not_a_command() -> None:
    mail = parsed(headers=(("X-Priority", "1 (Highest)"),))
    assert priority_of(mail, SETTINGS, None) == (Priority.HIGH, ("importance_header",))
    vip = CustomerView("ana@customer.test", "Ana", None, Priority.HIGH)
    assert priority_of(mail, SETTINGS, vip)[0] is Priority.HIGH  # never lifted to urgent


def test_classify_records_every_rule() -> None:
    result = classify(
        parsed(subject="[Bug] site down", to=("support@example.com",)),
        SETTINGS,
        customer=None,
        own_addresses=frozenset(),
    )
    assert (result.ticket_type, result.department, result.priority) == (
        TicketType.BUG,
        "Support",
        Priority.URGENT,
    )
    assert result.type_rule == "subject_tag:[Bug]"


def test_fold_joins_scripts_and_diacritics() -> None:
    assert fold("Грешка") == fold("Greška") == "greska"
    assert fold("Întrebare") == "intrebare"
    assert fold("Ђорђе") == "djordje"
