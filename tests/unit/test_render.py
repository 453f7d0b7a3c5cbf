"""Acknowledgements and CC rejections, read back header by header from their bytes."""

from __future__ import annotations

import dataclasses
import email
import email.errors
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import mailbridge.pipeline.render as render
from mailbridge.pipeline.mailsafe import (
    MAX_REFERENCES,
    header_safe,
    normalise_mailbox,
    strict_message_id,
)
from mailbridge.pipeline.render import (
    AckContext,
    TemplateError,
    UnsendableAddressError,
    ack_message_id,
    check_templates,
    render_ack,
    render_cc_rejection,
)
from mailbridge.records import Address, OutgoingMail, ParsedMail
from mailbridge.settings import AckSettings, HoursSettings

BUCHAREST = ZoneInfo("Europe/Bucharest")
IN_HOURS = datetime(2026, 9, 10, 12, 0, tzinfo=BUCHAREST)  # Thursday
FRIDAY_EVENING = datetime(2026, 9, 11, 18, 0, tzinfo=BUCHAREST)
MONDAY_OPENING = datetime(2026, 9, 14, 8, 0, tzinfo=BUCHAREST)
ACK = AckSettings(
    from_address="support@example.com",
    from_name="Acme Support",
    message_id_domain="mb.example.com",
    loop_header_value="mailbridge-prod",
)
CUSTOMER_ID = "<CAF=abc+123@mail.gmail.com>"

# Every header an acknowledgement carries, and nothing else.
ACK_HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "auto-submitted",
    "x-auto-response-suppress",
    "precedence",
    "x-autoreply",
    "x-mailbridge-loop",
    "content-type",
    "content-transfer-encoding",
    "mime-version",
    "content-language",
}


def context(**overrides: Any) -> AckContext:
    fields: dict[str, Any] = {
        "ticket_number": "MB-000123",
        "subject": "Problem with the site",
        "requester": Address("Ana Pop", "ana@customer.ro"),
        "language": "en",
        "received_at": IN_HOURS,
        "next_opening": None,
        "urgent": False,
        "emergency_phone": "",
        "ask_for_screenshot": False,
        "in_reply_to": CUSTOMER_ID,
        "references": ("<first@customer.ro>",),
        "company": "Acme",
        "hours_text_inputs": HoursSettings(),
    }
    fields.update(overrides)
    return AckContext(**fields)


def parsed_mail(**overrides: Any) -> ParsedMail:
    fields: dict[str, Any] = {
        "message_id": CUSTOMER_ID,
        "subject": "Comandă nouă",
        "sender": Address("Ana Pop", "ana@customer.ro"),
        "reply_to": (),
        "to": (Address("", "support@example.com"),),
        "cc": (Address("Bob", "bob@other.ro"),),
        "date": None,
        "in_reply_to": (),
        "references": ("<first@customer.ro>",),
        "headers": (),
        "body_text": "text",
        "body_html": None,
        "attachments": (),
        "defects": (),
        "size": 100,
    }
    fields.update(overrides)
    return ParsedMail(**fields)


def read(mail: OutgoingMail) -> EmailMessage:
    message = email.message_from_bytes(mail.data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    return message


def raw_headers(mail: OutgoingMail) -> bytes:
    return mail.data.split(b"\r\n\r\n", 1)[0]


def body(mail: OutgoingMail) -> str:
    content = read(mail).get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")  # the SMTP bytes have CRLF line ends


def header_names(mail: OutgoingMail) -> set[str]:
    return {name.lower() for name in read(mail)}


# --- headers -----------------------------------------------------------------------------


def test_every_loop_header_is_set() -> None:
    message = read(render_ack(context(), ACK))
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["X-Auto-Response-Suppress"] == "All"
    assert message["X-Mailbridge-Loop"] == "mailbridge-prod"
    assert message["Precedence"] == "auto_reply"
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"


def test_addresses_subject_and_language() -> None:
    mail = render_ack(context(language="ro"), ACK)
    message = read(mail)
    assert message["From"] == "Acme Support <support@example.com>"
    assert message["To"] == "Ana Pop <ana@customer.ro>"
    assert message["Subject"] == "[#MB-000123] Problem with the site"
    assert message["Content-Language"] == "ro"
    assert header_names(mail) == ACK_HEADERS


def test_threading_headers_point_at_the_customer_message() -> None:
    message = read(render_ack(context(), ACK))
    assert message["In-Reply-To"] == CUSTOMER_ID
    assert message["References"].split() == ["<first@customer.ro>", CUSTOMER_ID]


def test_long_message_ids_are_not_turned_into_encoded_words() -> None:
    outlook = (
        "<AM9PR07MB7891A1B2C3D4E5F6A7B8C9D0E1F2A3B4C5D6E7F8"
        "@AM9PR07MB7891.eurprd07.prod.outlook.com>"
    )
    mail = render_ack(context(in_reply_to=outlook, references=(outlook,)), ACK)
    assert b"=?" not in raw_headers(mail).split(b"Subject:")[0]
    message = read(mail)
    assert message["In-Reply-To"] == outlook
    assert message["References"].split() == [outlook]


def test_references_are_capped_keeping_the_first_and_the_latest() -> None:
    refs = tuple(f"<r{i}@customer.ro>" for i in range(50))
    ids = read(render_ack(context(references=refs), ACK))["References"].split()
    assert len(ids) == MAX_REFERENCES
    assert ids[0] == "<r0@customer.ro>"
    assert ids[-1] == CUSTOMER_ID
    assert ids[-2] == "<r49@customer.ro>"


def test_message_id_is_stable_and_date_is_present() -> None:
    first = render_ack(context(), ACK)
    second = render_ack(context(), ACK)
    assert first.message_id == second.message_id
    assert first.data == second.data
    message = read(first)
    assert message["Message-ID"] == first.message_id
    assert first.message_id.startswith("<ack.MB-000123.")
    assert first.message_id.endswith("@mb.example.com>")
    assert parsedate_to_datetime(message["Date"]) == IN_HOURS
    other = render_ack(context(ticket_number="MB-000124"), ACK)
    assert other.message_id != first.message_id


def test_now_sets_the_date() -> None:
    now = datetime(2026, 9, 10, 9, 30, 5, tzinfo=UTC)
    assert parsedate_to_datetime(read(render_ack(context(), ACK, now=now))["Date"]) == now
    with pytest.raises(ValueError, match="aware"):
        render_ack(context(), ACK, now=datetime(2026, 9, 10, 9, 30))
    with pytest.raises(ValueError, match="aware"):
        render_ack(context(received_at=datetime(2026, 9, 10, 9, 30)), ACK)


def test_ack_message_id() -> None:
    assert ack_message_id("ack", "MB-1", "mb.example.com") == ack_message_id(
        "ack", "MB-1", "MB.example.com"
    )
    assert ack_message_id("ack", "MB-1", "d.ro") != ack_message_id("ack", "MB-2", "d.ro")
    assert ack_message_id("ack", "MB-1", "d.ro") != ack_message_id("cc-rejected", "MB-1", "d.ro")
    hashed = ack_message_id("cc-rejected", "<x@y>\r\nBcc: a@b", "d.ro")
    assert strict_message_id(hashed) == hashed
    assert "Bcc" not in hashed
    with pytest.raises(ValueError, match="domain"):
        ack_message_id("ack", "MB-1", "bad domain\r\n")


@pytest.mark.parametrize(
    ("subject", "expected_raw", "decoded"),
    [
        ("Problemă cu site-ul", b"=?utf-8?", "[#MB-000123] Problemă cu site-ul"),
        ("Сајт не ради", b"=?utf-8?", "[#MB-000123] Сајт не ради"),
    ],
)
def test_non_ascii_subjects_are_rfc2047_encoded(
    subject: str, expected_raw: bytes, decoded: str
) -> None:
    mail = render_ack(context(subject=subject), ACK)
    subject_line = raw_headers(mail).split(b"\r\nSubject: ", 1)[1].split(b"\r\nDate:")[0]
    assert expected_raw in subject_line
    assert all(byte < 128 for byte in mail.data)
    assert read(mail)["Subject"] == decoded


def test_an_empty_subject_is_localized_and_the_tag_not_doubled() -> None:
    assert read(render_ack(context(subject=""), ACK))["Subject"] == "[#MB-000123] (no subject)"
    ro = read(render_ack(context(subject="  ", language="ro"), ACK))
    assert ro["Subject"] == "[#MB-000123] (fără subiect)"
    again = read(render_ack(context(subject="Re: [#mb-000123] Site down"), ACK))
    assert again["Subject"] == "[#MB-000123] Re: Site down"


def test_envelope() -> None:
    mail = render_ack(context(requester=Address("", "Ana@Customer.RO")), ACK)
    assert mail.kind == "ack"
    assert mail.mail_from == "support@example.com"
    assert mail.rcpt_to == ("Ana@Customer.RO",)
    null = render_ack(context(), ACK.model_copy(update={"envelope_sender": ""}))
    assert null.mail_from == ""
    bounces = render_ack(context(), ACK.model_copy(update={"envelope_sender": "b@example.com"}))
    assert bounces.mail_from == "b@example.com"


def test_an_idn_recipient_is_sent_to_its_ascii_form() -> None:
    mail = render_ack(context(requester=Address("", "pera@пример.срб")), ACK)
    assert mail.rcpt_to == ("pera@xn--e1afmkfd.xn--90a3ac",)


# --- hostile input -----------------------------------------------------------------------

HOSTILE = [
    "Hi\r\nBcc: victim@x",
    "Hi\nBcc: victim@x",
    "Hi\rBcc: victim@x",
    "Hi\x00there\x1b[31m",
    "Hi\u2028Bcc: victim@x\u0085X: y",
    "Hi =?utf-8?q?=0D=0ABcc:_victim@x?=",
    "\udcff broken bytes \u202e evil",
    "Hi " + "A" * 10_000,
    "x" * 5000 + "\r\n\r\nbody injection",
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_subjects_and_names_add_no_header(hostile: str) -> None:
    mail = render_ack(
        context(
            subject=hostile,
            requester=Address(hostile, "ana@customer.ro"),
            in_reply_to=hostile,
            references=(hostile, "<ok@customer.ro>\r\nBcc: victim@x", "<ok@customer.ro>"),
            company=hostile,
        ),
        ACK,
    )
    assert header_names(mail) == ACK_HEADERS - {"in-reply-to"}
    head = raw_headers(mail)
    assert b"\r\nBcc" not in head
    assert b"\r\nX:" not in head
    assert all(len(line) <= 998 for line in mail.data.split(b"\r\n"))
    message = read(mail)
    assert message["To"].addresses[0].addr_spec == "ana@customer.ro"
    assert len(message["Subject"]) < 300
    assert "\n" not in message["Subject"]
    assert "\x00" not in message["Subject"]
    assert message["References"] == "<ok@customer.ro>"


def test_header_safe() -> None:
    assert header_safe("a\r\nb\tc\x00d\u2028e") == "a b c d e"
    assert header_safe("x" * 300, 10) == "x" * 9 + "…"
    assert header_safe("\u202eevil\u202c") == "evil"
    # Left-over encoded words are decoded, then cleaned; anything still like one is broken.
    assert header_safe("=?utf-8?q?Problem=C4=83?= cu site-ul") == "Problemă cu site-ul"
    assert header_safe("Hi =?utf-8?q?=0D=0ABcc:_victim@x?=") == "Hi Bcc: victim@x"
    assert "=?" not in header_safe("=?utf-8?b?PT91dGYtOD9xP0hpPz0=?=")  # doubly encoded
    assert header_safe("a =?broken") == "a = ?broken"


def test_the_generated_headers_are_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the sanitiser, the stdlib itself (before 3.11.10) would write a Bcc header:
    # the composed bytes are read back and refused. Newer Pythons refuse while writing.
    monkeypatch.setattr(render, "header_safe", lambda text, limit=200: " ".join(text.split()))
    with pytest.raises((ValueError, email.errors.MessageError)):
        render_ack(context(subject="Hi =?utf-8?q?=0D=0ABcc:_victim@x?="), ACK)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<a.b+c=d@mail.example.com>", "<a.b+c=d@mail.example.com>"),
        ("a@b.ro", "<a@b.ro>"),
        ("  <a@[127.0.0.1]>  ", "<a@[127.0.0.1]>"),
        ("<a@b.ro>\r\nBcc: x@y", None),
        ("<a b@c.ro>", None),
        ("<a@b.ro> <c@d.ro>", None),
        ("<no-at-sign>", None),
        ("<" + "a" * 500 + "@b.ro>", None),
        ("", None),
        (None, None),
    ],
)
def test_strict_message_id(value: str | None, expected: str | None) -> None:
    assert strict_message_id(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ana@customer.ro", "ana@customer.ro"),
        (" ana.pop+x@customer.ro ", "ana.pop+x@customer.ro"),
        ("ana@customer.ro\r\nBcc: x@y", None),
        ('"ana pop"@customer.ro', None),
        ("ana@@customer.ro", None),
        ("ana@-bad-.ro", None),
        ("ana", None),
        ("", None),
    ],
)
def test_normalise_mailbox(value: str, expected: str | None) -> None:
    assert normalise_mailbox(value) == expected


def test_an_unusable_recipient_raises() -> None:
    with pytest.raises(UnsendableAddressError):
        render_ack(context(requester=Address("", "ana@customer.ro\r\nBcc: x@y")), ACK)
    with pytest.raises(UnsendableAddressError):
        render_cc_rejection(
            parsed=parsed_mail(sender=None),
            cc=(),
            language="en",
            ack=ACK,
            support_address="support@example.com",
        )


# --- body --------------------------------------------------------------------------------


def test_body_in_hours() -> None:
    text = body(render_ack(context(), ACK))
    assert "[#MB-000123]" in text
    assert "Problem with the site" in text
    assert "Monday to Friday, 08:00–17:00 (Europe/Bucharest time)" in text
    assert "outside our working hours" not in text
    assert "screenshot" not in text
    assert "do\nnot add other addresses in CC" in text or "not add other addresses in CC" in text
    assert all(len(line) <= 76 for line in text.splitlines() if not line.startswith(" "))


def test_body_outside_hours_says_when_the_team_picks_it_up() -> None:
    ctx = context(received_at=FRIDAY_EVENING, next_opening=MONDAY_OPENING)
    assert "Monday 14 September 2026 at 08:00" in " ".join(body(render_ack(ctx, ACK)).split())
    ro = body(render_ack(dataclasses.replace(ctx, language="ro"), ACK))
    assert "luni, 14 septembrie 2026, ora 08:00" in " ".join(ro.split())
    assert "de luni până vineri" in ro
    sr = body(render_ack(dataclasses.replace(ctx, language="sr"), ACK))
    assert "ponedeljak, 14. septembra 2026. u 08:00" in " ".join(sr.split())
    assert "od ponedeljka do petka" in sr
    cyrl = read(render_ack(dataclasses.replace(ctx, language="sr-Cyrl"), ACK))
    assert cyrl["Content-Language"] == "sr-Cyrl"
    cyrl_text = " ".join(str(cyrl.get_content()).split())  # split() also drops the CRs
    assert "понедељак, 14. септембра 2026. у 08:00" in cyrl_text


def test_urgent_mail_gets_the_emergency_line() -> None:
    text = body(render_ack(context(urgent=True, emergency_phone="+40 21 555 0100"), ACK))
    assert "+40 21 555 0100" in text
    assert "urgent" in text


def test_no_phone_line_without_a_number() -> None:
    text = body(render_ack(context(urgent=True, emergency_phone=""), ACK))
    assert "emergency" not in text


def test_non_urgent_mail_mentions_the_emergency_line_briefly() -> None:
    text = body(render_ack(context(urgent=False, emergency_phone="+40 21 555 0100"), ACK))
    assert "In an emergency (your site is down), call +40 21 555 0100." in text
    assert "looks urgent" not in text


def test_screenshot_request() -> None:
    assert "screenshot" in body(render_ack(context(ask_for_screenshot=True), ACK))
    assert "captură de ecran" in body(
        render_ack(context(ask_for_screenshot=True, language="ro"), ACK)
    )


def test_unknown_language_falls_back_to_english() -> None:
    message = read(render_ack(context(language="de"), ACK))
    assert message["Content-Language"] == "en"
    assert "Thank you" in str(message.get_content())


# --- templates ---------------------------------------------------------------------------


def test_packaged_templates_are_complete() -> None:
    assert check_templates() == []


def test_templates_can_be_overridden(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "ack.txt").write_text("Ticket $ticket_number: $subject\n$screenshot")
    text = body(render_ack(context(ask_for_screenshot=True), ACK, templates_dir=tmp_path))
    assert text.startswith("Ticket MB-000123: Problem with the site\n")
    assert "screenshot" in text  # the block itself is still the packaged one
    ro = body(render_ack(context(language="ro"), ACK, templates_dir=tmp_path))
    assert ro.startswith("Bună ziua")


def test_a_bad_override_is_reported(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "ack.txt").write_text("Ticket $tiket_number")
    with pytest.raises(TemplateError, match="tiket_number"):
        render_ack(context(), ACK, templates_dir=tmp_path)
    assert any("tiket_number" in problem for problem in check_templates(tmp_path))


# --- CC rejection ------------------------------------------------------------------------


def reject(parsed: ParsedMail, language: str = "en") -> OutgoingMail:
    return render_cc_rejection(
        parsed=parsed,
        cc=parsed.cc,
        language=language,
        ack=ACK,
        support_address="support@example.com",
        now=IN_HOURS,
    )


def test_cc_rejection_headers_and_body() -> None:
    mail = reject(parsed_mail())
    assert mail.kind == "cc_rejected"
    assert mail.rcpt_to == ("ana@customer.ro",)
    message = read(mail)
    assert message["Subject"] == "Not registered as a ticket: Comandă nouă"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["In-Reply-To"] == CUSTOMER_ID
    assert message["References"].split() == ["<first@customer.ro>", CUSTOMER_ID]
    assert message["Message-ID"] == mail.message_id
    assert "Cc" not in message
    text = str(message.get_content())
    assert "Comandă nouă" in text
    assert "bob@other.ro" in text
    assert "support@example.com" in text
    assert "third parties" in text
    assert "#MB-" not in text
    assert "#MB-" not in message["Subject"]


def test_cc_rejection_goes_to_reply_to_and_is_stable() -> None:
    parsed = parsed_mail(reply_to=(Address("", "ana.private@customer.ro"),))
    assert reject(parsed).rcpt_to == ("ana.private@customer.ro",)
    assert reject(parsed).data == reject(parsed).data


def test_cc_rejection_without_a_usable_message_id_hashes_the_message() -> None:
    hostile = parsed_mail(message_id="<x@y>\r\nBcc: victim@x", subject="Hi\r\nBcc: victim@x")
    mail = reject(hostile)
    assert strict_message_id(mail.message_id) == mail.message_id
    assert "In-Reply-To" not in read(mail)
    assert b"\r\nBcc" not in raw_headers(mail)
    assert reject(hostile).message_id == mail.message_id
    assert reject(dataclasses.replace(hostile, body_text="other")).message_id != mail.message_id


@pytest.mark.parametrize(
    ("language", "words", "tag"),
    [
        ("ro", "nu l-am înregistrat ca tichet", "ro"),
        ("sr", "nismo zaveli kao zahtev", "sr-Latn"),
        ("sr-Cyrl", "нисмо завели као захтев", "sr-Cyrl"),
    ],
)
def test_cc_rejection_is_localized(language: str, words: str, tag: str) -> None:
    message = read(reject(parsed_mail(), language))
    assert words in " ".join(str(message.get_content()).split())
    assert message["Content-Language"] == tag
