"""Language choice: customer record, Content-Language, the text, the default."""

from __future__ import annotations

import pytest

from mailbridge.pipeline.language import (
    choose_language,
    guess_language,
    normalise_tag,
    template_language,
)


def choose(
    text: str = "",
    *,
    customer: str | None = None,
    header: str | None = None,
    default: str = "en",
) -> str:
    return choose_language(
        customer_language=customer, content_language=header, text=text, default=default
    )


def test_the_customer_record_wins() -> None:
    assert choose("Hello, the site is down", customer="ro-RO", header="en") == "ro"


def test_content_language_comes_next() -> None:
    assert choose("Hello, the site is down", header="sr-Latn-RS") == "sr"


def test_an_unsupported_customer_language_falls_through() -> None:
    assert choose("Bună ziua, site-ul nu funcționează.", customer="de", header="fr") == "ro"


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("ro", "ro"),
        ("RO_ro", "ro"),
        ("mo", "ro"),
        ("sr-Cyrl", "sr"),
        ("en-GB", "en"),
        ("de, en;q=0.5", "en"),
        ("de", None),
        ("", None),
        (None, None),
    ],
)
def test_normalise_tag(tag: str | None, expected: str | None) -> None:
    assert normalise_tag(tag) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bună ziua, site-ul nu funcționează de azi. Mulțumesc!", "ro"),
        ("Buna ziua, site-ul nu merge. Va rog sa verificati. Multumesc", "ro"),
        ("Poštovani, sajt ne radi od jutros. Hvala, pozdrav", "sr"),
        ("Postovani, sajt ne radi. Molim vas, hvala", "sr"),
        ("Поштовани, сајт не ради. Хвала", "sr"),
        ("Сајт не ради", "sr"),
        ("Hello, the site is not working since this morning. Thanks", "en"),
    ],
)
def test_the_text_decides_when_nothing_else_does(text: str, expected: str) -> None:
    assert choose(text, default="xx") == expected


def test_the_default_when_the_text_says_nothing() -> None:
    assert choose("12345 ???", default="ro") == "ro"
    assert choose("", default="sr") == "sr"


def test_a_tie_goes_to_the_default() -> None:
    assert guess_language("hvala thanks") is None
    assert choose("hvala thanks", default="ro") == "ro"


def test_quoted_lines_are_ignored() -> None:
    text = "Hello, the site is down again.\n> Bună ziua, vă mulțumim că ne-ați scris.\n> Știm."
    assert choose(text, default="ro") == "en"


@pytest.mark.parametrize(
    ("language", "text", "tag", "expected"),
    [
        ("sr", "Сајт не ради", None, "sr-Cyrl"),
        ("sr", "Sajt ne radi", None, "sr"),
        ("sr", "Sajt ne radi", "sr-Cyrl-RS", "sr-Cyrl"),
        ("sr", "Сајт не ради", "sr-Latn", "sr"),
        ("ro", "Сајт не ради", None, "ro"),
        ("en", "", "sr-Cyrl", "en"),
    ],
)
def test_template_language(language: str, text: str, tag: str | None, expected: str) -> None:
    assert template_language(language, text=text, tag=tag) == expected
