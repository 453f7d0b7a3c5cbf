"""strip_quoted: the new text of a follow-up, in Romanian, Serbian and English mail clients."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailbridge.pipeline.parse import parse_message
from mailbridge.pipeline.quotes import strip_quoted

MAIL = Path(__file__).parent.parent / "fixtures" / "mail"

CASES = {
    "gmail-en": (
        "Thanks, that fixed it.\n"
        "\nOn Tue, Jun 4, 2024 at 10:15 AM Support <podrska@example.com> wrote:\n"
        "> Please restart the service.\n> Regards\n",
        "Thanks, that fixed it.",
    ),
    "gmail-en-wrapped": (
        "Works now.\n\n"
        "On Tue, Jun 4, 2024 at 10:15 AM Support Team <podrska@example.com>\nwrote:\n\n"
        "> Please restart.\n",
        "Works now.",
    ),
    "gmail-ro": (
        "Mulţumesc, merge acum.\n"
        "\nPe mar., 4 iun. 2024 la 10:15, Suport <podrska@example.com> a scris:\n"
        "> Vă rugăm să reporniţi aplicaţia.\n",
        "Mulţumesc, merge acum.",
    ),
    "gmail-ro-wrapped": (
        "Da, funcţionează.\n"
        "\nPe mar., 4 iun. 2024 la 10:15, Echipa de suport <podrska@example.com>\n"
        "a scris:\n> text vechi\n",
        "Da, funcţionează.",
    ),
    "serbian-latin": (
        "Hvala, sada radi.\n\nPetar Petrović je napisao:\n> Probajte ponovo.\n",
        "Hvala, sada radi.",
    ),
    "serbian-latin-female-wrapped": (
        "U redu.\n\nDana 4. jun 2024. u 10:15, Marija Jovanović <marija@example.rs>\n"
        "je napisala:\n> Pozdrav\n",
        "U redu.",
    ),
    "serbian-cyrillic": (
        "Хвала, ради.\n\nПетар Петровић је написао:\n> Покушајте поново.\n",
        "Хвала, ради.",
    ),
    "serbian-cyrillic-female": (
        "Важи.\n\nМарија је написала:\n> Стари текст\n",
        "Важи.",
    ),
    "outlook-original-message": (
        "Approved.\n\n-----Original Message-----\n"
        "From: Ion <ion@example.ro>\nSent: Monday\n\nOld text\n",
        "Approved.",
    ),
    "outlook-underscore-block": (
        "See attached.\n\n________________________________\nFrom: Support <podrska@example.com>\n"
        "Sent: Tuesday, June 4, 2024 11:02 AM\nTo: John\nSubject: RE: x\n\nOld\n",
        "See attached.",
    ),
    "outlook-romanian": (
        "Am primit, mulţumesc.\n\n"
        "De la: Suport <podrska@example.com>\nTrimis: marţi, 4 iunie 2024 11:02\n"
        "Către: Ion\nSubiect: RE: factura\n\nText vechi\n",
        "Am primit, mulţumesc.",
    ),
    "outlook-serbian": (
        "Primljeno.\n\nOd: Podrška <podrska@example.rs>\nPoslato: utorak, 4. jun 2024. 11:02\n"
        "Za: Petar\nTema: RE: račun\n\nStari tekst\n",
        "Primljeno.",
    ),
    "outlook-one-line-header": (
        "Ok.\n\n"
        "From: Support [mailto:podrska@example.com] Sent: Tuesday, June 4, 2024 11:02 AM\nOld\n",
        "Ok.",
    ),
    "inline-quotes-kept-answers": (
        "> Which version?\n4.2\n> Which OS?\nWindows 11\n",
        "4.2\nWindows 11",
    ),
    "crlf": (
        "Merci.\r\n\r\nOn Tue, Jun 4, 2024 John wrote:\r\n> old\r\n",
        "Merci.",
    ),
}


@pytest.mark.parametrize(("text", "expected"), list(CASES.values()), ids=list(CASES))
def test_strip_quoted(text: str, expected: str) -> None:
    assert strip_quoted(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "> only a quote\n> nothing else\n",
        "On Tue, Jun 4, 2024 John wrote:\n> everything is history\n",
        "",
    ],
)
def test_all_quote_returns_the_original(text: str) -> None:
    assert strip_quoted(text) == text


def test_text_without_quotes_is_unchanged_but_trimmed() -> None:
    text = "Hello,\n\nplease reset my password.\nFrom: the accounting team\n"
    assert strip_quoted(text) == text.rstrip()


def test_outlook_reply_fixture() -> None:
    parsed = parse_message((MAIL / "outlook_reply.eml").read_bytes())
    assert strip_quoted(parsed.body_text) == "Hi,\n\nthe export works now, thank you!\n\nJohn"
