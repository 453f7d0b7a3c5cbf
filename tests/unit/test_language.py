"""Language choice: customer record, Content-Language, the text, the default."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.pipeline.language import (
    _WORD,
    _word_counts,
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


def test_every_word_counts_each_time_it_occurs() -> None:
    assert guess_language("Хвала, hvala! thanks thanks") is None  # 2 : 2
    assert guess_language("Хвала, hvala! thanks thanks thanks") == "en"
    assert guess_language("site-ul nu-mi merge") == "ro"  # hyphenated words are not split


@pytest.mark.parametrize(
    "text",
    [
        "bună ziua, site-ul nu merge!",
        "a--b -c d- 2fa x_y ½ ⅷ ²x",
        "hvala.\u00a0pozdrav\u2028поштовани,\x1cхвала\r\nok",
        "e\u0301 ǅ ﬁ ß",
    ],
)
def test_word_counts_split_like_the_word_pattern(text: str) -> None:
    assert _word_counts(text) == Counter(_WORD.findall(text))


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet=st.characters(codec="utf-8")) | st.text("ab ж-é,.\n\u00a0_2"))
def test_word_counts_agree_with_the_word_pattern(text: str) -> None:
    # The split on white space is a shortcut only: the words must be the ones `_WORD` finds.
    assert _word_counts(text) == Counter(_WORD.findall(text))


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
