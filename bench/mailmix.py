"""The benchmark's mail: a deterministic mix like a support mailbox's, as raw RFC 5322 bytes.

- ~70 % plain text in Romanian, Serbian (Latin and Cyrillic) and English;
- ~25 % HTML with a ~200 KB PNG screenshot (each one different: no store-level dedupe);
- ~5 % with a third party in Cc (`policy.cc_mode = "flag"` makes them tickets too);
- one message with a 10 MB attachment per 1,000.

Every message has its own sender (no per-recipient ack cap applies) and Message-ID.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass

from tests.fixtures.make_fixtures import encode_png

TEXTS = [
    ("ro", "Bună ziua,\n\nnu pot să mă conectez la aplicație de ieri. Vă rog să verificați.\n"),
    ("ro", "Bună ziua,\n\nfactura nr. 117 nu a fost încă plătită. Mulțumesc, Ștefan\n"),
    ("sr", "Poštovani,\n\ngreška u izveštaju za maj, iznos je pogrešan. Hvala, Đorđe\n"),
    ("sr", "Поштовани,\n\nне могу да се пријавим на портал од јуче. Хвала.\n"),
    ("en", "Hello,\n\nexporting the monthly report to PDF fails with error 0x80070005.\n"),
    ("en", "Hi team,\n\nhow do I add a second user to our account? Thanks, Mary\n"),
]
SUBJECTS = {
    "ro": "Problemă cu factura {n}",
    "sr": "Проблем са пријавом {n}",
    "en": "Report export fails ({n})",
}


@dataclass(frozen=True)
class Mail:
    message_id: str  # without <>
    kind: str  # plain | html_png | cc | big
    data: bytes


def png(rng: random.Random, size: int) -> bytes:
    """A valid PNG of about `size` bytes that does not compress (like a real screenshot)."""
    width = 256
    height = max(1, size // (width * 3))
    rows = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))
    return encode_png(width, height, rows, level=1)


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _words(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


def make(n: int, *, to: str, seed: int = 1, tag: str = "b") -> Mail:
    """Message number `n` of the mix (built by hand: the stdlib's MIME writer is too slow)."""
    rng = random.Random(seed * 1_000_003 + n)
    language, text = rng.choice(TEXTS)
    message_id = f"{tag}{n}.{seed}@customer{n % 97}.test"
    if n % 1000 == 999:
        kind = "big"
    else:
        roll = rng.random()
        kind = "html_png" if roll < 0.25 else "cc" if roll < 0.30 else "plain"
    headers = [
        f"From: Customer {n} <c{n}@customer{n % 97}.test>",
        f"To: {to}",
        f"Subject: {_words(SUBJECTS[language].format(n=n))}",
        "Date: Tue, 04 Jun 2024 10:15:00 +0300",
        f"Message-ID: <{message_id}>",
        "MIME-Version: 1.0",
    ]
    if kind == "cc":
        headers.append(f"Cc: boss{n}@customer{n % 97}.test")
    body = text * rng.randint(1, 12)
    plain = (
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + _b64(body.encode())
    )
    if kind in ("plain", "cc"):
        parts = plain
    else:
        if kind == "html_png":
            html = "".join(f"<p>{line}</p>" for line in body.splitlines() if line)
            html_part = (
                b"Content-Type: text/html; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n"
                + _b64(f"<html><body>{html}<img src='cid:shot'></body></html>".encode())
            )
            first = (
                b'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n--alt\r\n'
                + plain + b"\r\n--alt\r\n" + html_part + b"\r\n--alt--\r\n"
            )  # fmt: skip
            attachment = (
                b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n"
                b'Content-Disposition: attachment; filename="screenshot.png"\r\n'
                b"Content-ID: <shot>\r\n\r\n" + _b64(png(rng, 200_000))
            )
        else:
            first = plain
            attachment = (
                b"Content-Type: application/octet-stream\r\n"
                b"Content-Transfer-Encoding: base64\r\n"
                b'Content-Disposition: attachment; filename="database-dump.bak"\r\n\r\n'
                + _b64(rng.randbytes(10 * 1024 * 1024))
            )
        headers.append('Content-Type: multipart/mixed; boundary="mix"')
        parts = b"--mix\r\n" + first + b"\r\n--mix\r\n" + attachment + b"\r\n--mix--\r\n"
    if kind in ("plain", "cc"):
        headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64"]
        parts = _b64(body.encode())
    head = "\r\n".join(headers).encode() + b"\r\n\r\n"
    return Mail(message_id, kind, head + parts)


def mix(count: int, *, to: str, seed: int = 1, tag: str = "b") -> list[Mail]:
    return [make(n, to=to, seed=seed, tag=tag) for n in range(count)]
