"""Bad input at scale: the whole pipeline (`Processor.process`, real SQLite, real blob store)
never crashes. Every input ends as a ticket, a follow-up, a rejection or a quarantined record
with its stage and error; the inbound row exists in a terminal state for each.

Inputs: generated MIME trees under generated top-level headers, mutations of the fixtures in
tests/fixtures/mail, deep nesting, header floods, oversized lines and parts, invalid encodings
and plain random bytes.

A bounded, derandomized run is part of the suite (150 examples); the long run, with fresh
random inputs each time (set MAILBRIDGE_FUZZ_SAVE=DIR to keep failing inputs as .eml):

    MAILBRIDGE_FUZZ_EXAMPLES=20000 python -m pytest tests/integration/test_fuzz_pipeline.py
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession

from mailbridge.adapters.blobs import BlobStore
from mailbridge.adapters.db.engine import make_engine, make_sessionmaker, upgrade
from mailbridge.adapters.db.models import InboundMessage
from mailbridge.pipeline.batch import process_batch
from mailbridge.pipeline.dedupe import dedupe_key, same_message, variant_key
from mailbridge.pipeline.process import Processor
from mailbridge.records import Intake, Outcome, ProcessResult
from mailbridge.settings import (
    AckSettings,
    DatabaseSettings,
    PolicySettings,
    Settings,
    StorageSettings,
)
from tests.fixtures.mutations import KINDS, mutate
from tests.unit.test_parse_properties import CHARSETS, FIXTURES, entity

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("MAILBRIDGE_FUZZ_EXAMPLES", "150"))
# The suite's run is the same every time (a red CI means a change broke something); a run with
# MAILBRIDGE_FUZZ_EXAMPLES set explores new inputs on each run.
DERANDOMIZE = "MAILBRIDGE_FUZZ_EXAMPLES" not in os.environ
CRLF = b"\r\n"
TERMINAL = {
    ("done", Outcome.TICKET_CREATED.value),
    ("done", Outcome.FOLLOW_UP.value),
    ("done", Outcome.REJECTED.value),
    ("failed", Outcome.QUARANTINED.value),
}


@dataclass
class Pipeline:
    loop: asyncio.AbstractEventLoop
    processor: Processor
    uids: Iterator[int]
    outcomes: Counter[str]
    quarantined: list[tuple[str | None, str | None, str | None]]
    saved: Path  # inputs that broke the property, as .eml files to replay


class Sample(bytes):
    """Input bytes with a short repr: Hypothesis prints the failing example."""

    def __repr__(self) -> str:
        digest = hashlib.sha256(self).hexdigest()[:12]
        return f"Sample(len={len(self)}, sha256={digest}…, head={bytes(self[:80])!r})"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    root = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite+aiosqlite:///{root / 'fuzz.db'}"
    settings = Settings(
        database=DatabaseSettings(url=url),
        # Raws over 64 KB go to the blob store: the oversized inputs take that path.
        storage=StorageSettings(
            data_dir=root / "data",
            max_message_bytes=512 * 1024,
            max_attachment_bytes=256 * 1024,
            raw_inline_max_bytes=64 * 1024,
        ),
        policy=PolicySettings(cc_mode="reject"),
        ack=AckSettings(from_address="support@example.test"),
    )
    loop = asyncio.new_event_loop()
    engine = make_engine(url)
    loop.run_until_complete(upgrade(engine, url))
    processor = Processor(settings, make_sessionmaker(engine), BlobStore(root / "data" / "att"))
    saved = Path(os.environ.get("MAILBRIDGE_FUZZ_SAVE", root / "failures"))
    saved.mkdir(parents=True, exist_ok=True)
    state = Pipeline(loop, processor, itertools.count(1), Counter(), [], saved)
    try:
        yield state
    finally:
        loop.run_until_complete(engine.dispose())
        loop.close()
        print(f"\nfuzz outcomes: {dict(state.outcomes)}; quarantined: {state.quarantined[:10]}")


# --- inputs ------------------------------------------------------------------------------------

ADDRESSES = st.sampled_from(
    [
        "Ana Popescu <ana@customer.test>",
        "ana@customer.test",
        '"Jovanović, Petar" <petar@customer.test>',
        "=?utf-8?B?0J/QtdGC0LDRgA==?= <petar@customer.test>",
        "=?bogus?Q?x?= <x@y>",
        "<>",
        "undisclosed-recipients:;",
        "no at sign",
        "a@b@c",
        "MAILER-DAEMON@mx.example.net",
        "support@example.test",
        "\udcff@bad" if False else "\xff\xfe@raw.test",
        ", , ,",
        "group: a@x.test, b@y.test;",
    ]
)
HEADER_NAMES = st.sampled_from(
    [
        "From", "To", "Cc", "Subject", "Message-ID", "In-Reply-To", "References", "Reply-To",
        "Auto-Submitted", "Precedence", "X-Autoreply", "List-Id", "Content-Language", "Date",
        "X-Priority", "Importance", "Return-Path", "Sender", "MIME-Version", "Content-Type",
    ]
)  # fmt: skip


def _header_value(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(ADDRESSES).encode("utf-8", "surrogateescape")
    if kind == 1:
        text = draw(st.text(max_size=120))
        charset = draw(st.sampled_from(CHARSETS))
        encoded = base64.b64encode(text.encode("utf-8")).decode()
        return f"=?{charset}?B?{encoded}?=".encode("utf-8", "surrogateescape")
    if kind == 2:
        return draw(st.binary(max_size=200)).replace(b"\r", b"").replace(b"\n", b" ")
    if kind == 3:
        ids = draw(st.lists(st.integers(0, 50), max_size=5))
        return b" ".join(f"<id{n}@customer.test>".encode() for n in ids)
    if kind == 4:
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    return b"[#MB-%06d] Re: help" % draw(st.integers(0, 20))


@st.composite
def top_headers(draw: st.DrawFn) -> bytes:
    lines = []
    if draw(st.integers(0, 9)):
        lines.append(b"From: " + draw(ADDRESSES).encode("utf-8", "surrogateescape"))
    lines.append(b"To: support@example.test")
    if draw(st.booleans()):
        lines.append(b"Message-ID: <fz%d@customer.test>" % draw(st.integers(0, 10**9)))
    for _ in range(draw(st.integers(0, 8))):
        lines.append(draw(HEADER_NAMES).encode() + b": " + _header_value(draw))
    return CRLF.join(lines) + CRLF


@st.composite
def generated_tree(draw: st.DrawFn) -> bytes:
    return draw(top_headers()) + b"MIME-Version: 1.0" + CRLF + draw(entity()).data


@st.composite
def mutated_fixture(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(FIXTURES)).read_bytes())
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(KINDS))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        noise = draw(st.binary(min_size=1, max_size=16))
        data = mutate(data, kind, pos, noise)
    return bytes(data)


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(20, 400))
    kind = draw(st.sampled_from(["multipart", "rfc822"]))
    head = draw(top_headers()) + b"MIME-Version: 1.0" + CRLF
    if kind == "rfc822":
        inner = b"Subject: core\r\n\r\ncore text\r\n"
        for _ in range(depth):
            inner = b"Content-Type: message/rfc822\r\n\r\nSubject: wrap\r\n" + inner
        return head + inner
    body = b"Content-Type: text/plain\r\n\r\nleaf\r\n"
    for level in range(depth):
        boundary = b"n%d" % level
        body = (
            b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--' + boundary
            + CRLF + body + CRLF + b"--" + boundary + b"--" + CRLF
        )  # fmt: skip
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]  # and cut off somewhere
    return head + body


@st.composite
def header_flood(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(500, 5000))
    name = draw(HEADER_NAMES).encode()
    value = _header_value(draw)
    flood = CRLF.join(name + b": " + value for _ in range(count))
    folded = draw(st.booleans())
    if folded:  # one header folded over thousands of lines
        flood = b"Subject: start" + b"".join(b"\r\n  more" for _ in range(count))
    return draw(top_headers()) + flood + CRLF + CRLF + b"body\r\n"


@st.composite
def oversized(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["long_line", "big_part", "many_parts", "huge_subject"]))
    head = draw(top_headers())
    size = draw(st.integers(100_000, 900_000))  # around storage.max_message_bytes (512 KB)
    if kind == "long_line":
        return head + CRLF + b"x" * size + CRLF
    if kind == "huge_subject":
        return head + b"Subject: " + b"=?utf-8?Q?a?= " * (size // 14) + CRLF + CRLF + b"hi\r\n"
    if kind == "big_part":
        payload = base64.encodebytes(os.urandom(size // 4 * 3)).replace(b"\n", CRLF)
        return (
            head + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
            b"--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--B\r\n"
            b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n"
            b'Content-Disposition: attachment; filename="big.png"\r\n\r\n'
            + payload + b"\r\n--B--\r\n"
        )  # fmt: skip
    parts = draw(st.integers(200, 2000))
    body = b"".join(
        b"--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="p%d.bin"\r\n\r\nAAEC%d\r\n' % (n, n % 10)
        for n in range(parts)
    )
    return head + b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n' + body + b"--B--\r\n"


@st.composite
def bad_encodings(draw: st.DrawFn) -> bytes:
    cte = draw(st.sampled_from(["base64", "quoted-printable", "x-uuencode", "8bit", "b?gus"]))
    charset = draw(st.sampled_from([*CHARSETS, "utf-16", "utf-32", "", "utf-8'en'x"]))
    payload = draw(st.binary(max_size=3000))
    if draw(st.booleans()):
        payload = payload.replace(b"\x00", b"=\r\n")  # dangling soft breaks, odd base64 cuts
    disposition = draw(
        st.sampled_from(
            [
                b"",
                b"Content-Disposition: attachment; filename*=utf-8''%ff%fe%00.txt\r\n",
                b"Content-Disposition: attachment; filename*0*=bogus''a; filename*1=b\r\n",
                b'Content-Disposition: inline; filename="../../etc/passwd"\r\n',
                b"Content-Disposition: attachment; filename*=''\r\n",
            ]
        )
    )
    return (
        draw(top_headers())
        + b'MIME-Version: 1.0\r\nContent-Type: text/plain; charset="'
        + charset.encode("utf-8", "surrogateescape")
        + b'"\r\nContent-Transfer-Encoding: '
        + cte.encode()
        + CRLF
        + disposition
        + CRLF
        + payload
    )


INPUTS = st.one_of(
    generated_tree(),
    mutated_fixture(),
    deep_nesting(),
    header_flood(),
    oversized(),
    bad_encodings(),
    st.binary(max_size=4000),
).map(Sample)


# --- the property ------------------------------------------------------------------------------

# Shared by both properties: no deadline (a 400-deep tree takes a while), no example
# database, and the health checks that large generated inputs trip by design.
FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
        HealthCheck.large_base_example,
    ],
)


async def _record_of(
    session: AsyncSession, blobs: BlobStore, data: bytes, result: ProcessResult
) -> InboundMessage | None:
    """The record an input ended in, as its result names it: its own, or, for a copy of an
    earlier input, that one's. Either way it must be held under the input's key."""
    row = await session.get(InboundMessage, result.inbound_id) if result.inbound_id else None
    if row is None:
        return None
    key, _message_id = dedupe_key(data)
    assert row.dedupe_key in (key, variant_key(key, data)), "the result names another record"
    if row.sha256 != hashlib.sha256(data).hexdigest():
        assert same_message(blobs.kept_raw(row.raw, row.sha256, row.size), data)
    return row


async def _process_and_read(pipeline: Pipeline, data: bytes) -> tuple[Outcome, object]:
    intake = Intake(data, "imap", "fuzz@example.test/INBOX", 1, next(pipeline.uids))
    result = await pipeline.processor.process(intake)
    async with pipeline.processor.sessions() as session:
        row = await _record_of(session, pipeline.processor.blobs, data, result)
    return result.outcome, row


@settings(FUZZ, max_examples=EXAMPLES)
@given(data=INPUTS)
@pytest.mark.timeout(max(120, EXAMPLES))
def test_every_input_ends_in_a_terminal_record(pipeline: Pipeline, data: Sample) -> None:
    try:
        _check_one(pipeline, data)
    except BaseException:
        path = pipeline.saved / f"{hashlib.sha256(data).hexdigest()[:16]}.eml"
        path.write_bytes(data)
        print(f"failing input saved to {path}")
        raise


def _check_one(pipeline: Pipeline, data: bytes) -> None:
    outcome, row = pipeline.loop.run_until_complete(_process_and_read(pipeline, data))

    assert row is not None, "no inbound record for the input"
    assert (row.state, row.outcome) in TERMINAL, (row.state, row.outcome)
    assert row.outcome == outcome.value
    if row.sha256 == hashlib.sha256(data).hexdigest():  # not a copy of an earlier input
        assert pipeline.processor.blobs.kept_raw(row.raw, row.sha256, row.size) == data
    if row.state == "failed":
        assert row.stage
        assert row.error
        assert row.error_class
        pipeline.quarantined.append((row.stage, row.error_class, (row.error or "")[:200]))
    pipeline.outcomes[row.outcome] += 1
    # A quarantine is a crash the pipeline caught; none is expected from mail a server accepts.
    assert row.state == "done", f"quarantined at {row.stage}: {row.error_class}: {row.error}"


async def _batch_and_read(
    pipeline: Pipeline, batch: list[bytes]
) -> list[tuple[ProcessResult, InboundMessage | None]]:
    intakes = [
        Intake(data, "imap", "fuzz@example.test/INBOX", 1, next(pipeline.uids)) for data in batch
    ]
    handled = await process_batch(pipeline.processor, intakes)
    assert [item.intake for item in handled] == intakes, "a message of the batch was dropped"
    read = []
    async with pipeline.processor.sessions() as session:
        for item in handled:
            row = await _record_of(session, pipeline.processor.blobs, item.intake.data, item.result)
            read.append((item.result, row))
    return read


@settings(FUZZ, max_examples=max(10, EXAMPLES // 3))
@given(batch=st.lists(INPUTS, min_size=1, max_size=8))
@pytest.mark.timeout(max(120, EXAMPLES))
def test_every_input_of_a_batch_ends_in_its_own_terminal_record(
    pipeline: Pipeline, batch: list[Sample]
) -> None:
    """The daemon's path: a fetched batch in one transaction (falling back to one at a time)."""
    read = pipeline.loop.run_until_complete(_batch_and_read(pipeline, list(batch)))
    first_of_key: dict[int, ProcessResult] = {}
    for result, row in read:
        assert row is not None, "no inbound record for an input of the batch"
        assert (row.state, row.outcome) in TERMINAL, (row.state, row.outcome)
        assert result.outcome.value == row.outcome
        assert result.inbound_id == row.id
        if row.id in first_of_key:  # a copy later in the same batch is a duplicate of it
            assert result.duplicate
        first_of_key.setdefault(row.id, result)
        assert row.state == "done", f"quarantined at {row.stage}: {row.error_class}: {row.error}"


def test_fixtures_all_become_terminal_records(pipeline: Pipeline) -> None:
    for path in FIXTURES:
        _outcome, row = pipeline.loop.run_until_complete(
            _process_and_read(pipeline, Path(path).read_bytes())
        )
        assert row is not None, path.name
        assert row.state == "done", (path.name, row.error)


# --- regressions found by this fuzzer ----------------------------------------------------------


def test_regression_cc_copy_without_message_id_is_rejected_not_quarantined(
    pipeline: Pipeline,
) -> None:
    """Two copies of a CC'd mail without a Message-ID that differ only in a routing header:
    their CC answers got the same stable Message-ID, the second insert hit the outbox's unique
    index and the copy was quarantined. Now the copy is rejected with `already_answered`."""
    body = (
        b"From: Ana <ana-copy@customer.test>\r\nTo: support@example.test\r\n"
        b"Cc: boss@other.test\r\nSubject: copy\r\nDate: Mon, 2 Mar 2026 10:00:00 +0200\r\n\r\n"
        b"Hello, same words twice.\r\n"
    )
    rows = []
    for route in (b"mx1", b"mx2"):
        data = b"Received: from " + route + b".customer.test\r\n" + body
        _outcome, row = pipeline.loop.run_until_complete(_process_and_read(pipeline, data))
        rows.append(row)
    assert [(row.state, row.outcome) for row in rows] == [("done", "rejected")] * 2
    assert rows[0].id != rows[1].id
    assert "already_answered" in {reason["rule"] for reason in rows[1].reasons}
