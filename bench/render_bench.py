"""Render cost: µs per acknowledgement (en / ro / sr-Cyrl) and per CC rejection."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from mailbridge.pipeline.render import AckContext, render_ack, render_cc_rejection
from mailbridge.records import Address, ParsedMail
from mailbridge.settings import AckSettings, HoursSettings

ZONE = ZoneInfo("Europe/Bucharest")
ACK = AckSettings(
    from_address="podrska@example.com",
    from_name="Acme Podrška",
    message_id_domain="mb.example.com",
    loop_header_value="mailbridge-prod",
)
HOURS = HoursSettings()
# (language, subject, requester name): what a mix of customers actually writes.
CASES = {
    "en": ("Exporting the monthly report to PDF fails", "Ann Smith"),
    "ro": ("Problemă cu factura nr. 117 — nu se poate plăti", "Ştefan Ţăranu"),
    "sr-Cyrl": ("Не могу да се пријавим на портал од јуче", "Петар Петровић"),
}
OUTLOOK_ID = (
    "<AM9PR07MB7891A1B2C3D4E5F6A7B8C9D0E1F2A3B4C5D6@AM9PR07MB7891.eurprd07.prod.outlook.com>"
)


def context(language: str, index: int) -> AckContext:
    subject, name = CASES[language]
    return AckContext(
        ticket_number=f"MB-{index:06d}",
        subject=f"Re: {subject}",
        requester=Address(name, "customer@example.ro"),
        language=language,
        received_at=datetime(2026, 9, 11, 18, 0, tzinfo=ZONE),
        next_opening=datetime(2026, 9, 14, 8, 0, tzinfo=ZONE) if index % 2 else None,
        urgent=index % 5 == 0,
        emergency_phone="+40 21 555 0100",
        ask_for_screenshot=index % 3 == 0,
        in_reply_to=f"<reply-{index}@mail.example.ro>",
        references=(f"<first-{index}@mail.example.ro>", OUTLOOK_ID),
        company="Acme",
        hours_text_inputs=HOURS,
    )


def parsed(language: str, index: int) -> ParsedMail:
    subject, name = CASES[language]
    return ParsedMail(
        message_id=f"<cc-{index}@mail.example.ro>",
        subject=subject,
        sender=Address(name, "customer@example.ro"),
        reply_to=(),
        to=(Address("", "podrska@example.com"),),
        cc=(Address("Bob", "bob@other.ro"), Address("", "eve@third.ro")),
        date=None,
        in_reply_to=(),
        references=(OUTLOOK_ID,),
        headers=(),
        body_text="text",
        body_html=None,
        attachments=(),
        defects=(),
        size=100,
    )


def per_call_us(call: Callable[[int], object], count: int, repeats: int) -> float:
    """The best of `repeats` runs (the machine is shared: the minimum is the least noisy)."""
    for index in range(50):  # warm the template and zone caches
        call(index)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for index in range(count):
            call(index)
        runs.append((time.perf_counter() - start) / count * 1e6)
    return min(runs)


def ack_call(language: str) -> Callable[[int], object]:
    return lambda index: render_ack(context(language, index), ACK)


def rejection_call(language: str) -> Callable[[int], object]:
    now = datetime(2026, 9, 11, 18, 0, 5, tzinfo=ZONE)

    def call(index: int) -> object:
        mail = parsed(language, index)
        return render_cc_rejection(
            parsed=mail,
            cc=mail.cc,
            language=language,
            ack=ACK,
            support_address="podrska@example.com",
            now=now,
        )

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for language in CASES:
        ack = per_call_us(ack_call(language), args.count, args.repeats)
        cc = per_call_us(rejection_call(language), args.count, args.repeats)
        print(f"{language:8} render_ack {ack:7.1f} µs   render_cc_rejection {cc:7.1f} µs")


if __name__ == "__main__":
    main()
