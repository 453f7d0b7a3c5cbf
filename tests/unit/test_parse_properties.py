"""Property tests: generated MIME trees keep every attachment's bytes; mutated mail never raises."""

from __future__ import annotations

import base64
import binascii
import hashlib
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailbridge.pipeline.parse import parse_message, parse_with_stdlib
from mailbridge.records import ParsedMail
from tests.fixtures.make_fixtures import CRLF
from tests.fixtures.mutations import mutate

# Bounded: 200 examples per property, no per-example deadline (a 30-deep tree can take 50 ms).
BOUNDED = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAIL = Path(__file__).parent.parent / "fixtures" / "mail"
FIXTURES = sorted(MAIL.glob("*.eml"))

CHARSETS = [
    "utf-8",
    "iso-8859-2",
    "windows-1250",
    "windows-1251",
    "koi8-r",
    "gb2312",
    "shift_jis",
    "iso-2022-jp",
    "us-ascii",
    "x-unknown",
    "utf-7",
    "bogus\x00",
]
BINARY_TYPES = [
    "application/octet-stream",
    "image/png",
    "image/jpeg",
    "application/pdf",
    "audio/mpeg",
    "application/zip",
]
NAME_CHARS = st.characters(codec="utf-8", exclude_categories=["Cs"])


@dataclass
class Built:
    """A generated entity's bytes and the attachment payloads it must yield."""

    data: bytes
    expected: list[bytes] = field(default_factory=list)


def _encode_name(name: str, style: int) -> str:
    if style == 0:
        return f"filename*=utf-8''{urllib.parse.quote(name.encode('utf-8'), safe='')}"
    if style == 1:
        return f'filename="=?utf-8?B?{base64.b64encode(name.encode()).decode()}?="'
    ascii_name = name.encode("ascii", "ignore").decode().replace('"', "").replace("\\", "")
    return f'filename="{"".join(ch for ch in ascii_name if ch.isprintable())}"'


def _transfer(payload: bytes, cte: str) -> bytes:
    if cte == "base64":
        return base64.encodebytes(payload).replace(b"\n", CRLF)
    if cte == "quoted-printable":
        return binascii.b2a_qp(payload, istext=False).replace(b"=\n", b"=\r\n")
    return payload


@st.composite
def attachment(draw: st.DrawFn) -> Built:
    payload = draw(st.binary(max_size=3000))
    ctype = draw(st.sampled_from(BINARY_TYPES))
    cte = draw(st.sampled_from(["base64", "quoted-printable", "binary"]))
    disposition = draw(st.sampled_from(["attachment", "inline", None]))
    name = draw(st.none() | st.text(NAME_CHARS, max_size=80))
    params = ""
    if name is not None:
        params = "; " + _encode_name(name, draw(st.integers(0, 2)))
    headers = [f"Content-Type: {ctype}", f"Content-Transfer-Encoding: {cte}"]
    if disposition or params:
        headers.append(f"Content-Disposition: {disposition or 'attachment'}{params}")
    if draw(st.booleans()):
        headers.append(f"Content-ID: <part{draw(st.integers(0, 99))}@example.net>")
    head = CRLF.join(h.encode("utf-8") for h in headers)
    return Built(head + CRLF + CRLF + _transfer(payload, cte), [payload])


@st.composite
def body(draw: st.DrawFn) -> Built:
    subtype = draw(st.sampled_from(["plain", "html"]))
    charset = draw(st.sampled_from(CHARSETS))
    text = draw(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300))
    try:
        raw = text.encode(charset.replace("\x00", ""))
    except (LookupError, UnicodeEncodeError):
        raw = text.encode("utf-8")
    cte = draw(st.sampled_from(["8bit", "base64", "quoted-printable", "7bit"]))
    head = (
        f'Content-Type: text/{subtype}; charset="{charset}"\r\nContent-Transfer-Encoding: {cte}'
    ).encode()
    return Built(head + CRLF + CRLF + _transfer(raw, cte))


def _multipart(draw: st.DrawFn, children: list[Built], level: int) -> Built:
    subtype = draw(st.sampled_from(["mixed", "related", "alternative"]))
    boundary = f"b{level}-{draw(st.integers(0, 10**6))}-=_"
    out = f'Content-Type: multipart/{subtype}; boundary="{boundary}"'.encode() + CRLF + CRLF
    out += b"preamble" + CRLF
    for child in children:
        out += CRLF + b"--" + boundary.encode() + CRLF + child.data
    out += CRLF + b"--" + boundary.encode() + b"--" + CRLF + b"epilogue"
    return Built(out, [p for child in children for p in child.expected])


@st.composite
def entity(draw: st.DrawFn, level: int = 0) -> Built:
    if level >= 3 or draw(st.integers(0, 2)) == 0:
        kind = draw(st.sampled_from(["attachment", "body", "message"] if level < 3 else ["body"]))
        if kind == "attachment":
            return draw(attachment())
        if kind == "body":
            return draw(body())
        inner = draw(entity(level + 1))
        message = b"From: a@example.net\r\nSubject: inner\r\nMIME-Version: 1.0\r\n" + inner.data
        head = b"Content-Type: message/rfc822\r\nContent-Disposition: attachment"
        return Built(head + CRLF + CRLF + message, [message])  # inner files stay in the .eml
    children = draw(st.lists(entity(level + 1), min_size=1, max_size=4))
    return _multipart(draw, children, level)


def _digests(items: list[bytes]) -> Counter[str]:
    return Counter(hashlib.sha256(item).hexdigest() for item in items)


@BOUNDED
@given(entity())
def test_generated_trees_return_every_attachment_exactly_once(tree: Built) -> None:
    data = (
        b"From: x@example.net\r\nTo: y@example.net\r\nSubject: t\r\nMIME-Version: 1.0\r\n"
        + tree.data
    )
    parsed = parse_message(data)
    assert _digests([a.data for a in parsed.attachments]) == _digests(tree.expected)
    for item in parsed.attachments:
        assert item.filename
        assert "/" not in item.filename
        assert "\\" not in item.filename
        assert item.filename.isprintable()
        assert len(item.filename) <= 150


@BOUNDED
@given(entity())
def test_size_limit_moves_big_attachments_to_omitted(tree: Built) -> None:
    data = b"Subject: t\r\nMIME-Version: 1.0\r\n" + tree.data
    parsed = parse_message(data, max_attachment_bytes=1000)
    assert all(a.size <= 1000 for a in parsed.attachments)
    big = [p for p in tree.expected if len(p) > 1000]
    assert len(parsed.omitted) == len(big)


@BOUNDED
@given(
    st.sampled_from(FIXTURES),
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "cut", "insert", "delete"]),
            st.floats(0, 1),
            st.binary(min_size=1, max_size=8),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_fixtures_never_raise(path: Path, edits: list[tuple[str, float, bytes]]) -> None:
    data = bytearray(path.read_bytes())
    for kind, where, noise in edits:
        data = mutate(data, kind, int(where * max(len(data) - 1, 0)), noise)
    parsed = parse_message(bytes(data))
    assert parsed.size == len(data)
    assert isinstance(parsed.body_text, str)


@BOUNDED
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert parse_message(data).size == len(data)


@settings(BOUNDED, max_examples=100)
@given(entity())
def test_stdlib_tree_yields_the_same_files(tree: Built) -> None:
    """The differential check behind choosing the splitter: same files as the stdlib parser."""
    data = b"Subject: t\r\nMIME-Version: 1.0\r\n" + tree.data
    fast, slow = parse_message(data), parse_with_stdlib(data)

    def files(parsed: ParsedMail) -> Counter[str]:
        return Counter(
            a.sha256 for a in parsed.attachments if not a.content_type.startswith("message/")
        )

    assert files(fast) == files(slow)
    assert fast.body_text.split() == slow.body_text.split()
