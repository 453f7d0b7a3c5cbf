"""Telling a copy of a message from another message that reuses its Message-ID."""

from __future__ import annotations

import pytest

from mailbridge.pipeline.dedupe import dedupe_key, same_message, variant_key

ORIGINAL = (
    b"Received: from mx.customer.test by mx.example.test\r\n"
    b"From: Alice <alice@customer.test>\r\nTo: support@example.test\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nSubject: Caf\xc3\xa9 order\r\n"
    b"Message-ID: <m1@customer.test>\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"My caf\xc3\xa9 order is late.\r\n"
)
QUOTED_PRINTABLE = ORIGINAL.replace(b"8bit", b"quoted-printable").replace(
    b"caf\xc3\xa9 order is", b"caf=C3=A9 order is"
)

COPIES = {
    "signatures added on the way": b"ARC-Seal: i=1; a=rsa\r\nDKIM-Signature: v=1;\r\n b=x\r\n"
    + ORIGINAL,
    "a header folded again": ORIGINAL.replace(b"\xa9 order\r\n", b"\xa9\r\n order\r\n"),
    "LF line ends": ORIGINAL.replace(b"\r\n", b"\n"),
    "8bit downgraded to quoted-printable by a relay": QUOTED_PRINTABLE,
    "the subject re-encoded": QUOTED_PRINTABLE.replace(
        b"Subject: Caf\xc3\xa9 order", b"Subject: =?UTF-8?Q?Caf=C3=A9_order?="
    ),
    "a list's footer": ORIGINAL + b"____\r\nsupport-l mailing list\r\n",
    "a list's subject tag": ORIGINAL.replace(b"Subject: ", b"Subject: [support-l] "),
    "From rewritten by a list (DMARC)": ORIGINAL.replace(
        b"From: Alice <alice@customer.test>", b"From: Alice via support-l <support-l@example.test>"
    ),
    "a gateway's [EXTERNAL] tag": ORIGINAL.replace(b"Subject: ", b"Subject: [EXTERNAL] "),
}


@pytest.mark.parametrize("copy", COPIES.values(), ids=COPIES.keys())
def test_a_copy_that_took_another_route_is_the_same_message(copy: bytes) -> None:
    assert dedupe_key(copy) == dedupe_key(ORIGINAL)
    assert same_message(ORIGINAL, copy)
    assert same_message(copy, ORIGINAL)


def _text(body: bytes, *, date: bytes = b"", files: tuple[bytes, ...] = ()) -> bytes:
    """A message under the same Message-ID: this body, this Date line, these attachments."""
    head = b"From: scanner@customer.test\r\nMessage-ID: <reused@customer.test>\r\n" + date
    if not files:
        return head + b"Content-Type: text/plain\r\n\r\n" + body + b"\r\n"
    parts = [b"--b\r\nContent-Type: text/plain\r\n\r\n" + body + b"\r\n"]
    for n, data in enumerate(files):
        parts.append(
            b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; "
            b"filename=scan%d.pdf\r\n\r\n" % n + data + b"\r\n"
        )
    kind = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    return head + kind + b"".join(parts) + b"--b--\r\n"


OTHERS = {
    "sent at another time": ORIGINAL.replace(b"10:00:00", b"10:00:01"),
    "other text at the same second": ORIGINAL.replace(
        b"My caf\xc3\xa9 order is late.", b"Please cancel my subscription."
    ),
}
SAME_SECOND = b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
PAIRS = {
    "the same text, other files": (
        _text(b"Scan attached.", date=SAME_SECOND, files=(b"%PDF one",)),
        _text(b"Scan attached.", date=SAME_SECOND, files=(b"%PDF other page",)),
    ),
    "no text against a complaint": (_text(b""), _text(b"Completely different complaint")),
    "a number one digit longer": (_text(b"Your code is 1234"), _text(b"Your code is 12345")),
    "a greeting against a request": (_text(b"Hi"), _text(b"Hi, my printer is broken")),
}


@pytest.mark.parametrize(("one", "other"), PAIRS.values(), ids=PAIRS.keys())
def test_two_messages_from_a_mailer_reusing_ids_within_a_second_stay_two(
    one: bytes, other: bytes
) -> None:
    assert dedupe_key(one) == dedupe_key(other)
    assert not same_message(one, other)


@pytest.mark.parametrize("other", OTHERS.values(), ids=OTHERS.keys())
def test_another_message_reusing_the_message_id_is_not_the_same(other: bytes) -> None:
    assert dedupe_key(other) == dedupe_key(ORIGINAL)
    assert not same_message(ORIGINAL, other)
    key, _message_id = dedupe_key(other)
    assert variant_key(key, other) != key
    assert variant_key(key, other) != variant_key(key, ORIGINAL)
    assert len(variant_key("mid:" + "x" * 500, other)) <= 512
