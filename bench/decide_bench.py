"""CPU per message of the pure decision stages, this checkout against a baseline git revision.

    python bench/decide_bench.py                     # 500 messages, baseline c19da5e
    python bench/decide_bench.py --baseline HEAD~3   # any revision that has the same stages
    python bench/decide_bench.py --baseline ''       # this checkout only

The baseline's stage modules are read with `git show` and loaded beside the current ones, so
both run on the same parsed messages in the same process; every answer is compared, and a
difference is reported (exit status 1): the point is the same decisions, only sooner.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.mailmix import TEXTS, make  # noqa: E402
from mailbridge.pipeline import classify, hours, language, quotes, screen, thread  # noqa: E402
from mailbridge.pipeline.parse import parse_message  # noqa: E402
from mailbridge.records import ParsedMail  # noqa: E402
from mailbridge.settings import Settings  # noqa: E402

# The last commit before the decision stages were made cheaper (precompiled keyword tables).
DEFAULT_BASELINE = "c19da5e"
MODULES = {"classify": classify, "language": language, "screen": screen, "thread": thread}
MODULES |= {"hours": hours, "quotes": quotes}

# What a real mailbox adds to the generated mix: relay and authentication headers ...
RELAY = (
    "Received: from mx{n}.customer.test (mx{n}.customer.test [192.0.2.{h}]) by mx.example.com "
    "with ESMTPS id {n}x; Tue, 04 Jun 2024 10:15:0{d} +0300\r\n"
    "Received: from [10.0.0.{h}] by mx{n}.customer.test with ESMTPSA; "
    "Tue, 04 Jun 2024 10:14:5{d} +0300\r\n"
    "DKIM-Signature: v=1; a=rsa-sha256; d=customer{n}.test; s=sel; bh=abc{n}=; b=def{n}=\r\n"
    "Authentication-Results: mx.example.com; spf=pass; dkim=pass header.d=customer{n}.test\r\n"
    "X-Mailer: Microsoft Outlook 16.0\r\nThread-Topic: support\r\n"
)
# ... replies quoting the earlier mail the way the common clients do (Outlook quotes without
# "> ", under a header block), signed with the corporate disclaimer many customers add ...
ATTRIBUTIONS = (
    ("On Tue, 4 Jun 2024 at 10:15, Support <support@example.com> wrote:\n", "> "),
    ("Pe mar., 4 iun. 2024 la 10:15, Suport <support@example.com> a scris:\n", "> "),
    ("Dana 4. jun 2024. u 10:15, Podrška <support@example.com>\nje napisala:\n", "> "),
    (
        "________________________________\nFrom: Support <support@example.com>\n"
        "Sent: Tuesday, June 4, 2024 10:15\nTo: Customer\nSubject: ticket\n\n",
        "",
    ),
)
SIGNATURE = (
    "\n--\n{name} | ACME d.o.o. | +381 11 123 4567 | www.acme.test\n"
    "Acest mesaj și anexele sale sunt confidențiale și destinate exclusiv destinatarului. "
    "Dacă l-ați primit din greșeală, vă rugăm să anunțați expeditorul și să îl ștergeți.\n"
    "This e-mail and any attachments are confidential and intended solely for the addressee. "
    "If you have received it in error, please notify the sender and delete it.\n"
)
# ... and machines: out-of-office replies, list mail, bounces.
MACHINE_HEADERS = (
    "Auto-Submitted: auto-replied\r\nX-Auto-Response-Suppress: All\r\n",
    "List-Id: <news.customer.test>\r\nList-Unsubscribe: <mailto:u@customer.test>\r\n"
    "Precedence: bulk\r\n",
    "Return-Path: <>\r\n",
)


def _plain(n: int, headers: str, subject: str, body: str) -> bytes:
    encoded = "=?utf-8?b?" + base64.b64encode(subject.encode()).decode() + "?="
    head = (
        f"{RELAY.format(n=n, h=n % 250, d=n % 10)}From: Customer {n} <c{n}@customer{n % 97}.test>"
        f"\r\nTo: support@example.com\r\nSubject: {encoded}\r\n"
        f"Date: Tue, 04 Jun 2024 10:15:00 +0300\r\nMessage-ID: <r{n}@customer{n % 97}.test>\r\n"
        f"{headers}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    )
    return head.encode() + base64.encodebytes(body.encode()).replace(b"\n", b"\r\n")


def _reply(n: int, rng: random.Random) -> bytes:
    _, first = rng.choice(TEXTS)
    _, answer = rng.choice(TEXTS)
    attribution, prefix = rng.choice(ATTRIBUTIONS)
    earlier = (first * rng.randint(2, 20)).splitlines()
    history = "".join(f"{prefix}{line}\n" for line in earlier)
    body = answer + SIGNATURE.format(name=f"Customer {n}") + "\n" + attribution + history
    ticket = f"MB-{rng.randint(1, 9999):06d}"
    headers = f"In-Reply-To: <ack{n}@mb.example.com>\r\nReferences: <r{n - 1}@x> <ack{n}@mb>\r\n"
    return _plain(n, headers, f"Re: [#{ticket}] {answer.split(',')[0]}", body)


def _machine(n: int, rng: random.Random) -> bytes:
    _, text = rng.choice(TEXTS)
    return _plain(n, rng.choice(MACHINE_HEADERS), "Automatic reply: out of office", text)


def corpus(count: int, seed: int = 3) -> list[ParsedMail]:
    """60 % the benchmark mix (plain RO/SR/EN, HTML + PNG, Cc), 30 % replies, 10 % machines."""
    rng = random.Random(seed)
    mails: list[bytes] = []
    for n in range(count):
        roll = rng.random()
        if roll < 0.6:
            mail = make(n, to="support@example.com", seed=seed).data
            relay = RELAY.format(n=n, h=n % 250, d=n % 10).encode()
            mails.append(relay + mail)
        else:
            mails.append(_reply(n, rng) if roll < 0.9 else _machine(n, rng))
    return [parse_message(data) for data in mails]


def moments(count: int) -> list[datetime]:
    """Arrival times over a year (weekends, nights, holidays), so next_opening has work to do."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [start + timedelta(minutes=1049 * n) for n in range(count)]


def stages(mods: dict[str, ModuleType], settings: Settings) -> dict[str, Callable[[Any], Any]]:
    """One call per stage and message, with the arguments `process.py` and `persist.py` pass."""
    policy = mods["screen"].ScreenPolicy.from_settings(settings)
    number_format = settings.tickets.number_format
    own = settings.own_addresses
    lang = mods["language"]
    return {
        "screen": lambda p: mods["screen"].screen(p, policy),
        "thread_hint": lambda p: mods["thread"].thread_hint(p, number_format),
        "classify": lambda p: mods["classify"].classify(
            p, settings.classify, customer=None, own_addresses=own
        ),
        "choose_language": lambda p: lang.choose_language(
            customer_language=None,
            content_language=p.header("Content-Language"),
            text=f"{p.subject}\n{p.body_text[:2000]}",
            default="ro",
        ),
        "next_opening": lambda m: mods["hours"].next_opening(m, settings.hours),
        "strip_quoted": lambda p: mods["quotes"].strip_quoted(p.body_text),
    }


def baseline_modules(revision: str) -> dict[str, ModuleType]:
    """The stage modules as `revision` had them, loaded under private names."""
    loaded: dict[str, ModuleType] = {}
    for name in MODULES:
        source = subprocess.run(
            ["git", "show", f"{revision}:mailbridge/pipeline/{name}.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        spec = importlib.util.spec_from_loader(f"_baseline_{name}", loader=None)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while being made
        exec(compile(source, f"{revision}:{name}.py", "exec"), module.__dict__)
        loaded[name] = module
    return loaded


def timed(
    calls: list[Callable[[Any], Any]], inputs: list[Any], rounds: int
) -> list[tuple[float, list[Any]]]:
    """Per call: the best µs per input over `rounds` passes, and its answers.

    Passes alternate between the calls, so load from elsewhere on a shared machine falls on
    both alike; the best pass is the one least disturbed. One untimed pass warms the caches.
    """
    answers = [[call(item) for item in inputs] for call in calls]
    best = [float("inf")] * len(calls)
    for _ in range(rounds):
        for index, call in enumerate(calls):
            start = time.perf_counter()
            for item in inputs:
                call(item)
            best[index] = min(best[index], time.perf_counter() - start)
    return [(seconds / len(inputs) * 1e6, got) for seconds, got in zip(best, answers, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="messages")
    parser.add_argument("--rounds", type=int, default=7, help="timed passes (best shown)")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision, '' for none")
    args = parser.parse_args(argv)
    settings = Settings()
    mails = corpus(args.count)
    when = moments(args.count)
    chars = statistics.mean(len(p.body_text) for p in mails)
    print(f"{len(mails)} messages, body {chars:.0f} chars on average; µs/message, best pass")
    now = stages(MODULES, settings)
    try:
        before = stages(baseline_modules(args.baseline), settings) if args.baseline else {}
    except subprocess.CalledProcessError as error:
        print(f"baseline {args.baseline!r} unreadable: {error.stderr.strip()}", file=sys.stderr)
        return 2
    print(f"{'stage':<16} {'before':>9} {'after':>9} {'speed-up':>9}")
    differences = 0
    for name, call in now.items():
        inputs: list[Any] = when if name == "next_opening" else mails
        if name not in before:
            print(f"{name:<16} {'':>9} {timed([call], inputs, args.rounds)[0][0]:9.1f}")
            continue
        (after, answers), (old, old_answers) = timed([call, before[name]], inputs, args.rounds)
        # Equal and printed alike: an aware datetime equals its value in any other zone.
        pairs = zip(answers, old_answers, strict=True)
        diff = sum(a != b or repr(a) != repr(b) for a, b in pairs)
        differences += diff
        note = f"  {diff} DIFFERENT ANSWERS" if diff else ""
        print(f"{name:<16} {old:9.1f} {after:9.1f} {old / after:8.1f}x{note}")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
