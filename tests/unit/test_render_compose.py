"""The hand-built answer mail against the stdlib-built one it replaced, and what it refuses."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
import textwrap
import unicodedata
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.pipeline.compose import Draft, Mailbox, compose, encoded_words, tidy_body
from mailbridge.pipeline.mailsafe import LOOP_HEADER, _one_line, header_safe, verify_head

BOUNDED = settings(max_examples=300, deadline=None, database=None)
OUTLOOK_ID = (
    "<AM9PR07MB7891A1B2C3D4E5F6A7B8C9D0E1F2A3B4C5D6E7F8@AM9PR07MB7891.eurprd07.prod.outlook.com>"
)
BODY = tidy_body(
    "Bună ziua,\n\nVă mulțumim. Поштовани, хвала вам што сте нам писали. " * 4
    + "\n\n    indented = line with an equals sign\n.\nFrom here on\n\n\n\nKind regards,\n"
)
DRAFT = Draft(
    sender=Mailbox("Acme Support", "support@example.com"),
    to=Mailbox("Ana Pop", "ana@customer.ro"),
    subject="[#MB-000123] Problem with the site",
    date=datetime(2026, 9, 10, 9, 30, tzinfo=UTC),
    message_id="<ack.MB-000123.0123456789abcdef@mb.example.com>",
    in_reply_to="<CAF=abc+123@mail.gmail.com>",
    references=("<first@customer.ro>", "<CAF=abc+123@mail.gmail.com>"),
    loop_value="mailbridge-prod",
    content_language="en",
    body=BODY,
)


# --- the reference: the EmailMessage composition this replaced, kept only to compare ------


class _IdList(str):
    name: str

    def __new__(cls, name: str, ids: tuple[str, ...]) -> _IdList:
        header = super().__new__(cls, " ".join(ids))
        header.name = name
        return header

    def fold(self, *, policy: email.policy.Policy) -> str:
        return f"{self.name}: " + f"{policy.linesep} ".join(self.split()) + policy.linesep


def reference_compose(draft: Draft) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    sender, to = draft.sender, draft.to
    msg["From"] = HeaderAddress(display_name=sender.display_name, addr_spec=sender.addr_spec)
    msg["To"] = HeaderAddress(display_name=to.display_name, addr_spec=to.addr_spec)
    msg["Subject"] = draft.subject
    msg["Date"] = format_datetime(draft.date)
    msg["Message-ID"] = _IdList("Message-ID", (draft.message_id,))
    if draft.in_reply_to is not None:
        msg["In-Reply-To"] = _IdList("In-Reply-To", (draft.in_reply_to,))
    if draft.references:
        msg["References"] = _IdList("References", draft.references)
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["Precedence"] = "auto_reply"
    msg["X-Autoreply"] = "yes"
    msg[LOOP_HEADER] = draft.loop_value
    msg.set_content(draft.body, charset="utf-8", cte="quoted-printable")
    msg["Content-Language"] = draft.content_language
    return msg.as_bytes()


def reference_tidy(body: str) -> str:
    lines = []
    for line in body.strip().splitlines():
        text = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if len(line.rstrip()) <= 76:
            lines.append(line.rstrip())
            continue
        lines += textwrap.wrap(
            text,
            76,
            initial_indent=indent,
            subsequent_indent=indent,
            break_long_words=False,
            break_on_hyphens=False,
        )
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)) + "\n"


def reference_one_line(text: str) -> str:
    bidi = {chr(c) for c in (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))}
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Zl", "Zp"):
            kept.append(" ")
        elif category != "Cs" and char not in bidi:
            kept.append(char)
    return " ".join("".join(kept).split())


def semantics(data: bytes) -> tuple[Any, ...]:
    """What a reader gets: every header as Python's policy.default reads it, the mailboxes,
    the decoded body."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    assert not [name for name, value in message.items() if value.defects]
    headers = [(name, str(value)) for name, value in message.items()]
    boxes = [(a.display_name, a.addr_spec) for f in ("From", "To") for a in message[f].addresses]
    return headers, boxes, message.get_content()


def rfc2047_name(data: bytes, field: str) -> str:
    """The display name as RFC 2047 §6.2 reads it: white space between two encoded words
    dropped. (Python's address parser keeps it: a stdlib quirk, for old and new output.)"""
    unfolded = data.split(b"\r\n\r\n")[0].decode("ascii").replace("\r\n ", " ")
    value = next(line for line in unfolded.split("\r\n") if line.startswith(f"{field}: "))
    value = value.split(": ", 1)[1]
    return str(make_header(decode_header(value.rsplit(" <", 1)[0]))) if "<" in value else ""


# --- same mail as before ------------------------------------------------------------------

NAMES = [
    "",
    "Ana Pop",
    "Pop, Ana",
    'Ana "Ani" O\'Brien',
    "Ştefan Ţăranu",
    "Ana Maria Popescu-Ionescu",
    "Петар Петровић",
    "Jovanović, Marko (Acme d.o.o.)",
    "Acme Podrška",
    "support@example.com",
]
SUBJECTS = [
    "[#MB-000123] Problem with the site",
    "[#MB-000123] Problemă cu site-ul",
    "[#MB-000123] Сајт не ради",
    "Not registered as a ticket: Comandă nouă",
    "Порука није заведена као захтев: Re: Проблем са порталом од јуче ујутру, хитно!",
    "[#MB-000123] Re: Fwd:" + " problemă cu factura nr. 117" * 6,
    "[#MB-000123] " + "A" * 150,
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("subject", SUBJECTS)
def test_a_reader_gets_what_the_stdlib_built_mail_gave(name: str, subject: str) -> None:
    draft = dataclasses.replace(
        DRAFT, to=Mailbox(name, "ana@customer.ro"), subject=subject, references=(OUTLOOK_ID,)
    )
    assert semantics(compose(draft)) == semantics(reference_compose(draft))


@pytest.mark.parametrize("in_reply_to", [None, OUTLOOK_ID])
@pytest.mark.parametrize(
    "references", [(), (OUTLOOK_ID,), tuple(f"<r{i}@c.ro>" for i in range(20))]
)
def test_threading_headers_as_before(in_reply_to: str | None, references: tuple[str, ...]) -> None:
    draft = dataclasses.replace(DRAFT, in_reply_to=in_reply_to, references=references)
    data = compose(draft)
    assert semantics(data) == semantics(reference_compose(draft))
    threading = data.split(b"\r\nDate:")[1].split(b"\r\nAuto-Submitted:")[0]
    assert b"=?" not in threading


def test_the_header_block_is_the_same_text_for_plain_ascii() -> None:
    # Nothing to encode or fold: byte for byte what the stdlib wrote.
    new, old = compose(DRAFT), reference_compose(DRAFT)
    assert new.split(b"\r\n\r\n")[0] == old.split(b"\r\n\r\n")[0]


# --- faithful for any header-safe text ----------------------------------------------------

_PIECES = [
    "Problemă", "Сајт", "a", "Re:", "[#MB-1]", "(x)", '"q"', "\\", ",", "<a@b>", "Bcc:",
    "=?utf-8?q?=0D=0ABcc:_victim@x?=", "\u202e", "\u00a0", "é", "👍", "e\u0301", "\u200b",
    "x" * 90, "Ж" * 40, "\r\n", "\t", "\x00", "_", "=", "?", "日本語", "ﬁ", "İ", "…", ";",
]  # fmt: skip
hostile_text = st.lists(st.sampled_from(_PIECES) | st.text(max_size=8), max_size=25).map(" ".join)


@BOUNDED
@given(subject=hostile_text, name=hostile_text, sender=hostile_text, loop=hostile_text)
def test_any_header_safe_text_reads_back_exactly(
    subject: str, name: str, sender: str, loop: str
) -> None:
    draft = dataclasses.replace(
        DRAFT,
        sender=Mailbox(header_safe(sender, 100), "support@example.com"),
        to=Mailbox(header_safe(name, 100), "ana@customer.ro"),
        subject=header_safe(subject) or "(no subject)",
        loop_value=header_safe(loop, 100) or "mailbridge",
    )
    data = compose(draft)
    headers, boxes, body = semantics(data)
    assert [name for name, _ in headers] == [
        "From", "To", "Subject", "Date", "Message-ID", "In-Reply-To", "References",
        "Auto-Submitted", "X-Auto-Response-Suppress", "Precedence", "X-Autoreply",
        LOOP_HEADER, "Content-Type", "Content-Transfer-Encoding", "MIME-Version",
        "Content-Language",
    ]  # fmt: skip
    values = dict(headers)
    assert values["Subject"] == draft.subject
    assert values[LOOP_HEADER] == draft.loop_value
    assert [address for _, address in boxes] == ["support@example.com", "ana@customer.ro"]
    assert rfc2047_name(data, "From") == draft.sender.display_name
    assert rfc2047_name(data, "To") == draft.to.display_name
    assert body.replace("\r\n", "\n") == draft.body
    assert data.isascii()
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n"):
        tokens = line[1:] if line.startswith(b" ") else line.split(b": ", 1)[1]
        assert len(line) <= 78 or b" " not in tokens  # folded wherever there is a choice
        assert len(line) <= 76 or b"=?" not in line  # RFC 2047 §2, the first word included
    assert all(len(word) <= 75 for word in re.findall(rb"=\?utf-8\?[qb]\?[^?]*\?=", data))


@pytest.mark.parametrize("text", ["Problemă cu factura", "Ж" * 200, "a" + "é" * 100, "👍" * 30])
def test_encoded_words_are_short_and_whole_characters(text: str) -> None:
    words = encoded_words(text)
    assert all(len(word) <= 75 for word in words)
    assert "".join(str(make_header(decode_header(word))) for word in words) == text


# --- refusals -----------------------------------------------------------------------------

UNSAFE_TEXT = [
    "Hi\r\nBcc: victim@x",
    "Hi\nBcc: x",
    "Hi\x00",
    "Hi\u2028x",
    "Hi \udcff",
    "Hi =?utf-8?q?=0D=0ABcc:_victim@x?=",
    "two  spaces",
    " leading",
]


@pytest.mark.parametrize("text", UNSAFE_TEXT)
def test_text_that_is_not_header_safe_is_refused(text: str) -> None:
    for draft in (
        dataclasses.replace(DRAFT, subject=text),
        dataclasses.replace(DRAFT, to=Mailbox(text, "ana@customer.ro")),
        dataclasses.replace(DRAFT, sender=Mailbox(text, "support@example.com")),
        dataclasses.replace(DRAFT, loop_value=text),
    ):
        with pytest.raises(ValueError, match="header-safe"):
            compose(draft)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"subject": ""}, "needs some text"),
        ({"to": Mailbox("", "ana@customer.ro\r\nBcc: x@y")}, "address"),
        ({"to": Mailbox("", '"a b"@customer.ro')}, "address"),
        ({"message_id": "<a@b>\r\nBcc: x@y"}, "Message-ID"),
        ({"in_reply_to": "<a b@c>"}, "Message-ID"),
        ({"references": ("<ok@c.ro>", "<x@y> <z@w>")}, "Message-ID"),
        ({"date": datetime(2026, 9, 10, 9, 30)}, "aware"),
        ({"content_language": "en\r\nBcc: x@y"}, "Content-Language"),
        ({"body": "no final newline"}, "newline"),
        ({"body": "a bare\rCR\n"}, "newline"),
    ],
)
def test_other_unsafe_fields_are_refused(change: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        compose(dataclasses.replace(DRAFT, **change))


NAMES_SET = [
    "From", "To", "Subject", "Date", "Message-ID", "In-Reply-To", "References",
    "Auto-Submitted", "X-Auto-Response-Suppress", "Precedence", "X-Autoreply", LOOP_HEADER,
    "Content-Type", "Content-Transfer-Encoding", "MIME-Version", "Content-Language",
]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"\r\nDate:", b"\r\nBcc: victim@x\r\nDate:"),  # an extra field
        (b"Subject: ", b"Subject:"),  # not `Name: value`
        (b"\r\nDate:", b"\nDate:"),  # bare LF
        (b"\r\nDate:", b"\rDate:"),  # bare CR
        (b"\r\nDate:", b"\r\n\tDate:"),  # tab-folded: never what we write
        (b"Problem", "Problém".encode()),  # 8-bit
        (b"\r\n\r\n", b"\r\n"),  # no end to the header block
        (b"the site", b"the site" + b"x" * 990),  # over 998 octets
        (b"From: ", b" From: "),  # a continuation first
    ],
)
def test_generated_bytes_are_checked_strictly(old: bytes, new: bytes) -> None:
    data = compose(DRAFT)
    verify_head(data, NAMES_SET)
    assert old in data
    with pytest.raises(ValueError, match="generated"):
        verify_head(data.replace(old, new, 1), NAMES_SET)
    with pytest.raises(ValueError, match="differ"):
        verify_head(data, NAMES_SET[1:])


# --- the faster pieces do what the slower ones did ----------------------------------------


def test_one_line_treats_every_code_point_as_unicodedata_says() -> None:
    everything = "".join(map(chr, range(0x110000)))
    assert _one_line(everything) == reference_one_line(everything)


_WRAP_PIECES = ["a", "word", "x" * 80, "\u00a0", "\t", "", "-", "Ж" * 12, "«»", "\u3000", "é"]
wrap_text = st.lists(
    st.lists(st.sampled_from(_WRAP_PIECES) | st.text(max_size=6), max_size=40).map(" ".join),
    max_size=6,
).map(lambda lines: "\n".join(f"{' ' * (i % 3 * 4)}{line}" for i, line in enumerate(lines)))


@BOUNDED
@given(text=wrap_text)
def test_tidy_body_wraps_as_textwrap_did(text: str) -> None:
    assert tidy_body(text) == reference_tidy(text)
