"""Parse throughput on a realistic mix: this parser against the paths it was chosen over."""

from __future__ import annotations

import argparse
import base64
import email
import random
import statistics
import sys
import time
from collections.abc import Callable
from email import policy
from email.message import EmailMessage

from mailbridge.pipeline.parse import parse_message, parse_with_stdlib

TEXTS = [
    ("utf-8", "Bună ziua,\nnu pot să mă conectez la aplicaţie de ieri. Vă rog să verificaţi.\n"),
    ("iso-8859-2", "Bună ziua,\nfactura nr. 117 nu a fost încă plătită. Mulţumesc.\n"),
    ("windows-1250", "Poštovani,\ngreška u izveštaju za maj, iznos je pogrešan. Hvala.\n"),
    ("windows-1251", "Поштовани,\nне могу да се пријавим на портал од јуче.\n"),
    ("utf-8", "Hello,\nexporting the monthly report to PDF fails with error 0x80070005.\n"),
]


def _base(rng: random.Random, index: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Ştefan Ţăranu <stefan@example.ro>"
    msg["To"] = "podrska@example.com"
    msg["Subject"] = f"Problemă cu factura {index} / Проблем {rng.randint(1, 999)}"
    msg["Date"] = "Tue, 04 Jun 2024 10:15:00 +0300"
    msg["Message-ID"] = f"<bench-{index}@example.net>"
    return msg


def plain(rng: random.Random, index: int) -> bytes:
    charset, text = rng.choice(TEXTS)
    msg = _base(rng, index)
    msg.set_content(text * rng.randint(2, 30), charset=charset)
    return msg.as_bytes()


def html_with_image(rng: random.Random, index: int, image_bytes: int) -> bytes:
    msg = _base(rng, index)
    msg.set_content("Pogledajte sliku ekrana.\n" * 5)
    msg.add_alternative(
        "<html><body><p>Pogledajte <b>sliku</b> ekrana:</p><img src='cid:shot'></body></html>",
        subtype="html",
    )
    image = b"\x89PNG\r\n\x1a\n" + rng.randbytes(image_bytes)
    msg.get_payload()[1].add_related(image, maintype="image", subtype="png", cid="<shot>")
    return msg.as_bytes()


def large(rng: random.Random, index: int) -> bytes:
    msg = _base(rng, index)
    msg.set_content("Raportul complet este ataşat.\n")
    msg.add_attachment(
        rng.randbytes(2_000_000), maintype="application", subtype="pdf", filename="raport.pdf"
    )
    return msg.as_bytes()


def corpus(count: int, seed: int = 7) -> list[bytes]:
    """70 % plain text (RO/SR/EN), 25 % HTML + ~200 KB PNG, 5 % ~2 MB attachment."""
    rng = random.Random(seed)
    out: list[bytes] = []
    for index in range(count):
        roll = index % 20
        if roll < 14:
            out.append(plain(rng, index))
        elif roll < 19:
            out.append(html_with_image(rng, index, 200_000))
        else:
            out.append(large(rng, index))
    return out


def via_mailparser(data: bytes) -> None:
    import mailparser

    parsed = mailparser.parse_from_bytes(data)
    _ = (parsed.subject, parsed.from_, parsed.to, parsed.text_plain, parsed.text_html)
    for item in parsed.attachments:
        if item["binary"]:
            base64.b64decode(item["payload"])


def via_policy_default(data: bytes) -> None:
    msg = email.message_from_bytes(data, policy=policy.default)
    _ = (msg["subject"], msg["from"], msg["to"])
    for part in msg.walk():
        if not part.is_multipart():
            part.get_content()


def measure(fn: Callable[[bytes], object], mails: list[bytes], rounds: int) -> tuple[float, float]:
    total = sum(map(len, mails))
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for data in mails:
            fn(data)
        rates.append(time.perf_counter() - start)
    best = statistics.median(rates)
    return len(mails) / best, total / best / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200, help="messages in the mix")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (median shown)")
    args = parser.parse_args(argv)
    mails = corpus(args.count)
    size = sum(map(len, mails)) / 1e6
    print(f"mix: {len(mails)} messages, {size:.1f} MB (70% plain, 25% HTML+200KB PNG, 5% 2 MB)")
    paths: list[tuple[str, Callable[[bytes], object]]] = [
        ("parse_message (splitter + compat32 headers)", parse_message),
        ("parse_with_stdlib (feed parser, same decoding)", parse_with_stdlib),
        ("mail-parser 4.8 (+ base64 decode)", via_mailparser),
        ("stdlib policy.default get_content", via_policy_default),
    ]
    for name, fn in paths:
        fn(mails[0])  # imports and caches outside the timing
        rate, mbps = measure(fn, mails, args.rounds)
        print(f"{name:<48} {rate:8.1f} msg/s {mbps:8.1f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
