"""Peak Python allocation and time for parsing one large message (10 MB attachment, base64)."""

from __future__ import annotations

import argparse
import base64
import gc
import random
import statistics
import sys
import time
import tracemalloc

from mailbridge.pipeline.parse import parse_message

TEXT = "Bună ziua,\r\natașez copia bazei de date și o captură de ecran. Mulțumesc, Ștefan\r\n"


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _part(headers: str, body: bytes) -> bytes:
    return headers.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body


def build(seed: int = 3, attachment_bytes: int = 10 * 1024 * 1024) -> tuple[bytes, bytes]:
    """A nested multipart like a real one (alternative text + HTML, PNG, large file): message
    bytes and the large attachment's bytes."""
    rng = random.Random(seed)
    blob = rng.randbytes(attachment_bytes)
    png = b"\x89PNG\r\n\x1a\n" + rng.randbytes(200_000)
    html = f"<html><body><p>{TEXT}</p><img src='cid:shot'></body></html>"
    alternative = b"\r\n".join(
        [
            b"--alt",
            _part("Content-Type: text/plain; charset=utf-8", (TEXT * 40).encode()),
            b"--alt",
            _part("Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: "
                  "base64", _b64(html.encode())),
            b"--alt--",
        ]
    )  # fmt: skip
    parts = [
        _part('Content-Type: multipart/alternative; boundary="alt"', alternative),
        _part(
            "Content-Type: image/png\nContent-Transfer-Encoding: base64\n"
            'Content-Disposition: inline; filename="screenshot.png"\nContent-ID: <shot>',
            _b64(png),
        ),
        _part(
            "Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
            'Content-Disposition: attachment; filename="database-dump.bak"',
            _b64(blob),
        ),
    ]
    body = b"".join(b"--mix\r\n" + part + b"\r\n" for part in parts) + b"--mix--\r\n"
    head = _part(
        "From: Ştefan Ţăranu <stefan@example.ro>\nTo: support@example.com\n"
        "Subject: Copie baza de date\nDate: Tue, 04 Jun 2024 10:15:00 +0300\n"
        "Message-ID: <big-1@example.ro>\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="mix"',
        body,
    )
    return head, blob


def peak_bytes(data: bytes) -> int:
    """Peak traced allocation while parsing `data` (the input itself is not counted)."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        parsed = parse_message(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del parsed
    return peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median shown)")
    args = parser.parse_args(argv)
    data, blob = build()
    parsed = parse_message(data)
    big = next(a for a in parsed.attachments if a.filename == "database-dump.bak")
    assert big.data == blob, "attachment bytes differ"
    assert not parsed.defects, parsed.defects
    del parsed, big
    size = len(data)
    peak = peak_bytes(data)
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        parse_message(data)
        times.append(time.perf_counter() - start)
    print(f"message: {size / 1e6:.1f} MB, attachment {len(blob) / 1e6:.1f} MB (base64)")
    print(f"peak traced during parse: {peak / 1e6:.1f} MB = {peak / size:.2f}x the message")
    print(f"with the input itself:    {(peak + size) / 1e6:.1f} MB = {(peak + size) / size:.2f}x")
    print(f"parse time (median of {args.rounds}): {statistics.median(times) * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
