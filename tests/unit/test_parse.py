"""parse_message on one realistic .eml per class: what a user would notice."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from mailbridge.pipeline.parse import parse_message, parse_with_stdlib
from mailbridge.records import Address, ParsedMail
from tests.fixtures import make_fixtures as fx

MAIL = Path(__file__).parent.parent / "fixtures" / "mail"
ALL = sorted(p.name for p in MAIL.glob("*.eml"))


def load(name: str) -> ParsedMail:
    return parse_message((MAIL / name).read_bytes())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def has_defect(parsed: ParsedMail, prefix: str) -> bool:
    return any(d.startswith(prefix) for d in parsed.defects)


def test_fixtures_are_the_generated_bytes() -> None:
    for name, data in fx.build().items():
        assert (MAIL / name).read_bytes() == data, f"{name}: run tests/fixtures/make_fixtures.py"


@pytest.mark.parametrize("name", ALL)
def test_every_fixture_parses_and_is_repeatable(name: str) -> None:
    data = (MAIL / name).read_bytes()
    first, second = parse_message(data), parse_message(data)
    assert first == second  # idempotent: same names, same bytes, same defects
    assert first.size == len(data)
    assert first.headers
    assert first.headers[0][0] in ("From", "Reply-To")


# Where the stdlib tree is worse: it raises on bad_rfc2231, cannot recover a lost boundary.
STDLIB_WORSE = {"bad_rfc2231.eml", "no_boundary.eml"}


@pytest.mark.parametrize("name", [n for n in ALL if n not in STDLIB_WORSE])
def test_stdlib_path_agrees_on_what_users_see(name: str) -> None:
    data = (MAIL / name).read_bytes()
    fast, slow = parse_message(data), parse_with_stdlib(data)
    assert fast.subject == slow.subject
    assert fast.sender == slow.sender
    assert fast.body_text.split() == slow.body_text.split()
    # message/* parts: the stdlib re-serialises them; the splitter keeps the bytes as sent.
    fast_files = {
        (a.filename, a.sha256) for a in fast.attachments if "message/" not in a.content_type
    }
    slow_files = {
        (a.filename, a.sha256) for a in slow.attachments if "message/" not in a.content_type
    }
    assert fast_files == slow_files


def test_romanian_iso_8859_2() -> None:
    mail = load("ro_iso8859_2.eml")
    assert mail.subject == "Factură neplătită şi întârziere la plată"
    assert mail.sender == Address("Ştefan Ţăranu", "stefan@example.ro")
    assert "Vă rog să verificaţi factura nr. 2024-117" in mail.body_text
    assert "\r" not in mail.body_text
    assert mail.date == datetime(2024, 6, 4, 10, 15, tzinfo=timezone(timedelta(hours=3)))
    assert mail.message_id == "<ro1@example.net>"
    assert mail.defects == ()


def test_romanian_windows_1250() -> None:
    mail = load("ro_windows1250.eml")
    assert mail.subject == "Cerere de ofertă „Proiect Braşov”"
    assert mail.sender is not None
    assert mail.sender.name == "Ioana Bălănescu"
    assert "„Proiect Braşov”. Aştept răspunsul" in mail.body_text
    assert mail.defects == ()


def test_windows_1250_labelled_iso_8859_2_falls_back_with_a_defect() -> None:
    mail = load("ro_mislabelled_1250.eml")
    assert mail.subject == "Ofertă „urgentă”"
    assert "„Proiect Braşov”" in mail.body_text
    assert "charset_fallback: declared=iso-8859-2 used=cp1250 part=1" in mail.defects
    assert "charset_fallback: declared=iso-8859-2 used=cp1250 header=Subject" in mail.defects


def test_serbian_cyrillic_windows_1251() -> None:
    mail = load("sr_cyrillic_1251.eml")
    assert mail.subject == "Проблем са пријавом на портал"
    assert mail.sender == Address("Петар Петровић", "petar@example.rs")
    assert "не могу да се пријавим на портал" in mail.body_text


def test_serbian_utf8_both_scripts_and_a_subject_split_mid_character() -> None:
    mail = load("sr_utf8_mixed.eml")
    assert mail.subject == "Hitno: greška u izveštaju / Хитно: грешка"
    assert mail.sender is not None
    assert mail.sender.name == "Đorđe Šćepanović"
    assert "greška u izveštaju za maj" in mail.body_text
    assert "Хитно молим одговор" in mail.body_text
    assert mail.body_html is not None
    assert "<p>Хитно молим одговор.</p>" in mail.body_html
    assert "<p>" not in mail.body_text  # the text alternative, not the HTML
    assert mail.defects == ()


def test_iso_2022_jp_and_shift_jis_mislabelled_as_iso_2022_jp() -> None:
    mail = load("ja_iso2022jp.eml")
    assert mail.subject == "お問い合わせ：請求書について"
    assert "請求書の件でご連絡いたします" in mail.body_text
    assert mail.to == (Address("山田太郎", "yamada@example.com"),)
    assert "charset_fallback: declared=iso-2022-jp used=cp932 header=To" in mail.defects


def test_gb2312_label_with_gbk_characters_reads_as_gb18030() -> None:
    mail = load("zh_gb2312_gbk.eml")
    assert mail.subject == "关于朱镕基的报告"
    assert "附件是朱镕基的报告" in mail.body_text
    assert "charset_fallback: declared=gb2312 used=gb18030 part=1" in mail.defects


def test_raw_8bit_headers_utf8_then_body_charset() -> None:
    mail = load("raw_8bit_headers.eml")
    assert mail.subject == "Ajutor: nu pot să mă conectez"
    assert mail.to == (Address("Служба подршке", "podrska@example.com"),)
    assert mail.sender == Address("Bălan Ştefan", "stefan.balan@example.ro")
    assert has_defect(mail, "charset_fallback: declared=none used=cp1250 header=From")
    assert "aplicaţie" in mail.body_text


def test_multipart_without_boundary_parameter_is_recovered() -> None:
    mail = load("no_boundary.eml")
    assert mail.body_text.strip() == "Vedeti raportul atasat."
    assert [a.filename for a in mail.attachments] == ["raport.txt"]
    assert mail.attachments[0].data == b"Raport: 12 cereri deschise, 3 inchise.\r\n"
    assert "multipart_without_boundary: part=0 (guessed)" in mail.defects


def test_missing_end_boundary_keeps_the_attachment_intact() -> None:
    mail = load("missing_end_boundary.eml")
    assert "Factura e atașată." in mail.body_text
    (pdf,) = mail.attachments
    assert (pdf.filename, pdf.content_type) == ("factura.pdf", "application/pdf")
    assert pdf.sha256 == sha(fx.pdf_bytes())
    assert "missing_end_boundary: part=0" in mail.defects


def test_size_limit_lists_what_was_left_out() -> None:
    mail = parse_message((MAIL / "missing_end_boundary.eml").read_bytes(), max_attachment_bytes=100)
    assert mail.attachments == ()
    assert mail.omitted == (f"factura.pdf (application/pdf, {len(fx.pdf_bytes())} bytes)",)


def test_bad_rfc2231_boundary_that_crashes_the_stdlib() -> None:
    data = (MAIL / "bad_rfc2231.eml").read_bytes()
    mail = parse_message(data)
    assert mail.body_text.strip() == "Izveštaj u prilogu."
    (pdf,) = mail.attachments
    assert pdf.filename == "izveštaj maj.pdf"
    assert pdf.sha256 == sha(fx.pdf_bytes())
    assert "bad_mime_parameter: boundary part=0" in mail.defects
    assert "charset_fallback: declared=x-bogus used=utf-8 part=2" in mail.defects
    slow = parse_with_stdlib(data)  # the alternative path: raw text, but no exception
    assert has_defect(slow, "unparseable: ValueError")


def test_unknown_charset_and_bad_base64() -> None:
    mail = load("unknown_charset_bad_base64.eml")
    assert "Când salvez documentul apare o eroare" in mail.body_text
    assert "se închide" in mail.body_text
    assert has_defect(mail, "charset_fallback: declared=x-unknown used=")
    assert "bad_base64: part=2" in mail.defects
    assert mail.attachments[0].data.startswith(b"Log line 1\nLog line 2")


def test_missing_from_uses_reply_to_as_requester() -> None:
    mail = load("missing_from.eml")
    assert mail.sender is None
    assert mail.requester == Address("Marija Jovanović", "marija@example.rs")
    assert mail.reply_address == mail.requester


def test_uuencoded_attachment_is_decoded_and_cut_from_the_text() -> None:
    mail = load("uuencode.eml")
    (item,) = mail.attachments
    assert item.filename == "spisak.txt"
    assert item.data == fx.UU_PAYLOAD
    assert "begin 644" not in mail.body_text
    assert "end" not in mail.body_text.split()
    assert "saljem spisak opreme." in mail.body_text
    assert "Pozdrav," in mail.body_text


def test_attached_message_is_kept_as_eml_with_its_bytes() -> None:
    mail = load("nested_rfc822.eml")
    assert mail.body_text.strip() == "Prosleđujem poruku od prodaje."
    (eml,) = mail.attachments
    assert (eml.filename, eml.content_type) == ("Ponuda za 2024.eml", "message/rfc822")
    raw = (MAIL / "nested_rfc822.eml").read_bytes()
    assert raw.count(eml.data) == 1
    assert eml.data.startswith(b"From: Prodaja")
    assert eml.data.endswith(b"--inner--\r\n")
    inner = parse_message(eml.data)
    assert inner.attachments[0].sha256 == sha(fx.NESTED_PDF)


def test_apple_inline_images_get_deterministic_names() -> None:
    mail = load("apple_inline_image.eml")
    names = [(a.filename, a.content_type, a.inline) for a in mail.attachments]
    assert names == [("image-1.png", "image/png", True), ("image-2.jpg", "image/jpeg", True)]
    assert mail.attachments[0].sha256 == sha(fx.png_bytes(seed=11))
    assert mail.attachments[1].sha256 == sha(fx.jpeg_like_bytes())
    assert mail.body_text.split() == ["Pogledajte", "sliku:", "I", "još", "jedna:", "Hvala"]


def test_delivery_status_report() -> None:
    mail = load("dsn.eml")
    assert mail.sender == Address("Mail Delivery System", "MAILER-DAEMON@mx.example.com")
    assert "could not\nbe delivered" in mail.body_text
    types = [a.content_type for a in mail.attachments]
    assert types == ["message/delivery-status", "text/rfc822-headers"]
    assert b"Status: 5.1.1" in mail.attachments[0].data
    assert b"<ack-1001@mailbridge.invalid>" in mail.attachments[1].data
    assert mail.header("Auto-Submitted") == "auto-replied"


def test_winmail_dat_is_unpacked() -> None:
    mail = load("tnef_winmail.eml")
    got = [(a.filename, a.sha256) for a in mail.attachments]
    assert got == [(name, sha(data)) for name, data in fx.TNEF_FILES]
    assert mail.attachments[1].content_type == "image/png"
    assert "Găsiţi raportul" in mail.body_text


def test_broken_winmail_dat_is_kept_with_a_defect() -> None:
    data = (MAIL / "tnef_winmail.eml").read_bytes()
    blob = fx.b64(fx.tnef_bytes(fx.TNEF_FILES))
    broken = data.replace(blob, fx.b64(b"not tnef at all"))
    mail = parse_message(broken)
    assert [(a.filename, a.data) for a in mail.attachments] == [("winmail.dat", b"not tnef at all")]
    assert has_defect(mail, "tnef_unpack_failed: ValueError part=2")


def test_html_only_mail_with_cid_screenshot() -> None:
    mail = load("html_cid_screenshot.eml")
    assert mail.body_html is not None
    assert 'src="cid:image001.png@01DAB6F1.5E2C7A40"' in mail.body_html
    assert "pri štampi izveštaja dobijam grešku" in mail.body_text
    assert "<p>" not in mail.body_text
    (shot,) = mail.attachments
    assert (shot.filename, shot.inline, shot.content_id) == (
        "image001.png",
        True,
        "image001.png@01DAB6F1.5E2C7A40",
    )
    assert shot.sha256 == sha(fx.png_bytes(120, 80, seed=3))


def test_plain_english_with_cc_and_a_quoted_comma_name() -> None:
    mail = load("plain_english.eml")
    assert mail.sender == Address("Smith, John", "john.smith@example.com")
    assert mail.cc == (Address("Jane Doe", "jane@example.com"), Address("", "ops@example.com"))
    assert "fails with error 0x80070005" in mail.body_text
    assert mail.defects == ()
    assert mail.attachments == ()


def test_outlook_reply_threading_headers() -> None:
    mail = load("outlook_reply.eml")
    assert mail.in_reply_to == ("<ack-1001@mailbridge.invalid>",)
    assert mail.references == ("<en1@example.net>", "<ack-1001@mailbridge.invalid>")
    assert mail.header("thread-index") == "AQHatm1vX1Y2"
    assert "From: Support" in mail.body_text  # parse keeps history; quotes.py strips it


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff\xfe garbage",
        b"Subject: only headers",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n",
        b'Content-Type: text/plain; charset="\r\n\r\n\xff\xfe',
        b"Date: not a date\r\nFrom: <>\r\nTo: undisclosed-recipients:;\r\n\r\nhi",
        b"Content-Type: multipart/mixed; boundary=a\r\n\r\n"
        + b"--a\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n" * 200,
    ],
    ids=["empty", "binary", "headers-only", "open-multipart", "open-quote", "bad-values", "deep"],
)
def test_garbage_never_raises(data: bytes) -> None:
    mail = parse_message(data)
    assert mail.size == len(data)


def test_naive_date_becomes_utc() -> None:
    mail = parse_message(b"Date: Tue, 04 Jun 2024 10:15:00 -0000\r\n\r\nx")
    assert mail.date == datetime(2024, 6, 4, 10, 15, tzinfo=UTC)


def test_filename_is_never_a_path() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b'Content-Type: application/pdf; name="x"\r\n'
        b'Content-Disposition: attachment; filename="..\\\\..\\\\evil\x07/../../etc/passwd"\r\n'
        b"\r\nPDF\r\n--b--\r\n"
    )
    (item,) = parse_message(data).attachments
    assert item.filename == "passwd"


@pytest.mark.parametrize(
    ("data", "declared", "text", "used"),
    [
        ("Café – ok".encode("cp1252"), "iso-8859-1", "Café – ok", "cp1252"),
        ("Café ok".encode(), "iso-8859-1", "Café ok", "utf-8"),
        ("Ştefan".encode(), "us-ascii", "Ştefan", "utf-8"),
        ("Ştefan".encode(), None, "Ştefan", None),
        ("Поштовани".encode("cp1251"), "windows-1251", "Поштовани", None),
        ("お問い合わせ".encode("cp932"), "x-sjis", "お問い合わせ", None),
        (
            ("Поздрав " * 40).encode() + b"\xff",
            "utf-8",
            ("Поздрав " * 40) + "\ufffd",
            "utf-8/replace",
        ),
    ],
)
def test_charset_chain(data: bytes, declared: str | None, text: str, used: str | None) -> None:
    from mailbridge.pipeline.mime_text import decode_bytes

    decoded, defects = decode_bytes(data, declared, "part=1")
    assert decoded == text
    if used is None:
        assert defects == []
    else:
        assert defects == [f"charset_fallback: declared={declared} used={used} part=1"]


def test_unnamed_text_attachment_and_rfc2047_filename() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
        b"body\r\n--b\r\nContent-Type: text/csv\r\nContent-Disposition: attachment\r\n\r\na,b\r\n"
        b'--b\r\nContent-Type: application/pdf; name="=?utf-8?B?0JjQt9Cy0LXRiNGC0LDRmC5wZGY=?="\r\n'
        b"\r\nPDF\r\n--b--\r\n"
    )
    mail = parse_message(data)
    assert [a.filename for a in mail.attachments] == ["attachment-1.csv", "Извештај.pdf"]
    assert mail.body_text == "body"
