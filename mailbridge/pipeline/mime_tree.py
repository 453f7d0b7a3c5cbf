"""MIME structure: a boundary splitter over bytes (fast path) and the stdlib parser (fallback)."""

from __future__ import annotations

import binascii
import email
import re
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from itertools import islice, pairwise

from mailbridge.pipeline.mime_text import decode_b64

MAX_DEPTH = 30
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
_TRAILER = re.compile(rb"(--)?[ \t]*(?:\r?\n|\Z)")
_UU_BEGIN = re.compile(rb"^begin(?:-base64)? [0-7]{3,4} ", re.M)
_NEWLINES = re.compile(rb"[\r\n]*")
_LINE = re.compile(rb"([^\r\n]*)(?:\r\n|\r|\n)?")  # the line breaks bytes.splitlines knows
_EMPTY = memoryview(b"")


@dataclass(slots=True)
class Node:
    """One MIME entity: its headers (compat32, no payload), raw body, and children."""

    headers: Message
    # A view into the message bytes: splitting copies no body, `decode_transfer` copies a leaf's
    # once (a 10 MB attachment would otherwise exist once per nesting level while splitting).
    body: memoryview
    section: str
    children: list[Node] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        return self.headers.get_content_type()

    def walk(self) -> list[Node]:
        """This node and its descendants, depth first."""
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        return out


def _headers(head: bytes) -> tuple[Message, bytes]:
    """Parse a header block; lines after a line that is not a header come back as body."""
    msg = BytesHeaderParser(policy=policy.compat32).parsebytes(head)
    rest = msg.get_payload()
    leftover = rest.encode("ascii", "surrogateescape") if isinstance(rest, str) else b""
    return msg, leftover


def split_message(data: bytes, section: str = "", depth: int = 0) -> Node:
    """Split one entity into headers and body, and a multipart body into its parts."""
    return _split(data, 0, len(data), section, depth)


def _split(data: bytes, start: int, end: int, section: str, depth: int) -> Node:
    """`split_message` of data[start:end], by offsets: only header blocks are copied."""
    end = max(start, end)
    match = None
    if data.startswith(b"\r\n", start, end):
        head_end, body_start = start, start + 2
    elif data.startswith(b"\n", start, end):
        head_end, body_start = start, start + 1
    else:
        match = _HEADER_END.search(data, start, end)
        head_end, body_start = (end, end) if match is None else match.span()
    msg, leftover = _headers(data[start:head_end])
    multipart = msg.get_content_maintype() == "multipart"
    node = Node(msg, memoryview(data)[body_start:end], section or ("0" if multipart else "1"))
    if leftover:
        node.defects.append(f"missing_header_separator: part={node.section}")
        # A rare repair: the body becomes new bytes, and any split below runs over those.
        data = leftover + (data[match.start() : end] if match else b"")
        body_start, end = 0, len(data)
        node.body = memoryview(data)
    if multipart:
        _split_multipart(node, data, body_start, end, depth)
    return node


def _boundaries(node: Node) -> list[str]:
    """The boundary as the stdlib reads it, then as written (the stdlib unquotes `<<x>>` twice)."""
    found: list[str] = []
    try:
        found.append(node.headers.get_boundary() or "")
        raw = node.headers.get_param("boundary", unquote=False)
        if isinstance(raw, str):
            found.append(raw[1:-1] if raw[:1] == raw[-1:] == '"' and len(raw) > 1 else raw)
    except Exception:  # cpython#132794 and friends: a bad RFC 2231 parameter
        node.defects.append(f"bad_mime_parameter: boundary part={node.section}")
    return [b for b in dict.fromkeys(found) if b]


def _guess_boundary(data: bytes, start: int, end: int) -> str | None:
    """The delimiter of a multipart whose Content-Type lost (or garbled) its boundary."""
    # Line by line over offsets, as `body.lstrip(b"\r\n").splitlines()[:50]` without copying
    # the body; the empty match at the end stands for no line and never starts with `--`.
    first = _NEWLINES.match(data, start, end)
    lines = _LINE.finditer(data, first.end() if first else start, end)
    for line_match in islice(lines, 50):
        line = line_match.group(1)
        if line.startswith(b"--") and len(line.strip()) > 2:
            candidate = line[2:].strip()
            if data.count(b"--" + candidate, start, end) >= 2:
                return candidate.decode("ascii", "surrogateescape")
            return None
    return None


def _delimiters(data: bytes, start: int, end: int, boundary: str) -> list[tuple[int, int, bool]]:
    """(line start, content start, closing) of each delimiter line in data[start:end], up to
    the closing one; offsets are into `data`."""
    delimiter = b"--" + boundary.encode("utf-8", "surrogateescape")
    starts: list[tuple[int, int, bool]] = []
    pos = data.find(delimiter, start, end)
    while pos != -1:
        if pos == start or data[pos - 1] == 0x0A:
            trailer = _TRAILER.match(data, pos + len(delimiter), end)
            if trailer is not None:
                line_start = pos - 1 if pos > start and data[pos - 1] == 0x0A else pos
                if line_start > start and data[line_start - 1] == 0x0D:
                    line_start -= 1
                closing = trailer.group(1) is not None
                starts.append((line_start, trailer.end(), closing))
                if closing:
                    break
        pos = data.find(delimiter, pos + len(delimiter), end)
    return starts


def _split_multipart(node: Node, data: bytes, start: int, end: int, depth: int) -> None:
    """Split the multipart body data[start:end] into `node.children`."""
    where = f"part={node.section}"
    if depth >= MAX_DEPTH:
        node.defects.append(f"nesting_too_deep: {where}")
        return
    boundaries = _boundaries(node)
    starts: list[tuple[int, int, bool]] = []
    for boundary in boundaries:
        starts = _delimiters(data, start, end, boundary)
        if starts:
            break
    if not starts:
        guessed = _guess_boundary(data, start, end)
        starts = _delimiters(data, start, end, guessed) if guessed else []
        problem = "boundary_not_found" if boundaries else "multipart_without_boundary"
        node.defects.append(f"{problem}: {where}" + (" (guessed)" if starts else ""))
        if not starts:
            return
    if not starts[-1][2]:
        node.defects.append(f"missing_end_boundary: {where}")
        starts.append((end, end, True))
    is_digest = node.headers.get_content_subtype() == "digest"
    for index, ((_, begin, _closing), (stop, _, _)) in enumerate(pairwise(starts), start=1):
        section = f"{node.section}.{index}" if depth else str(index)
        child = _split(data, begin, stop, section, depth + 1)
        if is_digest and "content-type" not in child.headers:
            child.headers.set_default_type("message/rfc822")
        node.children.append(child)
    node.body = _EMPTY


def from_stdlib(data: bytes) -> Node:
    """The same tree built by the stdlib feed parser (compat32): the slower alternative path."""
    msg = email.message_from_bytes(data, policy=policy.compat32)
    return _convert(msg, "0" if msg.is_multipart() else "1", top=True)


def _convert(msg: Message, section: str, top: bool = False) -> Node:
    payload = getattr(msg, "_payload", None)  # get_payload() would re-decode 8-bit text
    node = Node(msg, _EMPTY, section)
    for defect in msg.defects:
        node.defects.append(f"{type(defect).__name__}: part={section}")
    if isinstance(payload, list):
        if msg.get_content_maintype() == "message":
            node.body = memoryview(b"\n".join(m.as_bytes(policy=policy.compat32) for m in payload))
            return node
        for index, child in enumerate(payload, start=1):
            child_section = str(index) if top else f"{section}.{index}"
            node.children.append(_convert(child, child_section))
    elif isinstance(payload, str):
        node.body = memoryview(payload.encode("ascii", "surrogateescape"))
    return node


def decode_transfer(node: Node) -> tuple[bytes, list[str]]:
    """The body with its Content-Transfer-Encoding undone, leniently, plus defects."""
    cte = str(node.headers.get("content-transfer-encoding", "")).strip().lower()
    where = f"part={node.section}"
    body = node.body
    # binascii reads the view in place (no copy of the encoded body, line breaks included);
    # the other encodings copy the leaf's bytes here, once.
    if cte == "base64":
        data, repaired = decode_b64(body)
        return data, [f"bad_base64: {where}"] if repaired else []
    if cte == "quoted-printable":
        return binascii.a2b_qp(body), []
    if cte in ("x-uuencode", "uuencode", "x-uue", "uue"):
        return decode_uu_block(body.tobytes())[0], []
    if cte not in ("", "7bit", "8bit", "binary"):
        return body.tobytes(), [f"unknown_transfer_encoding: {cte[:40]} {where}"]
    return body.tobytes(), []


def decode_uu_block(block: bytes) -> tuple[bytes, str | None]:
    """Decode `begin MODE NAME` … `end` (or bare uuencoded lines); the name when given."""
    lines = block.splitlines()
    name: str | None = None
    base64 = False
    for index, line in enumerate(lines):
        if _UU_BEGIN.match(line):
            words = line.split(None, 2)
            name = words[2].decode("utf-8", "replace").strip() if len(words) > 2 else None
            base64 = line.startswith(b"begin-base64")
            lines = lines[index + 1 :]
            break
    if base64:
        end = next((i for i, line in enumerate(lines) if line.strip() == b"===="), len(lines))
        return decode_b64(b"".join(lines[:end]))[0], name
    out = bytearray()
    for line in lines:
        stripped = line.strip()
        if stripped == b"end":
            break
        if stripped in (b"", b"`"):
            continue
        try:
            out += binascii.a2b_uu(line)
        except binascii.Error:
            # Trailing garbage after the encoded bytes, as the stdlib's _decode_uu works around.
            count = (((line[0] - 32) & 63) * 4 + 5) // 3
            try:
                out += binascii.a2b_uu(line[:count])
            except binascii.Error:
                continue
    return bytes(out), name
