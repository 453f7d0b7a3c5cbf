"""Reading aioimaplib's reply lines: FETCH literals and sizes, LIST names, pushed news."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mailbridge.adapters.imap_protocol import decode_mailbox

_FETCH_HEADER_RE = re.compile(rb"\d+ FETCH \(")
_UID_RE = re.compile(rb"\bUID (\d+)")
_SIZE_RE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_LIST_RE = re.compile(rb'\((?P<flags>[^)]*)\) (?:NIL|"(?:[^"\\]|\\.)*") (?P<name>.*)$')
_PUSH_RE = re.compile(rb"(\d+) (EXISTS|RECENT|EXPUNGE)\b")


@dataclass(frozen=True, slots=True)
class FetchedBody:
    """One message's literal from a FETCH reply, and the size the server announced for it."""

    uid: int
    data: bytes
    declared_size: int | None


def status_text(response: Any) -> str:
    """The tagged status text of a response, for error messages."""
    lines = response.lines
    last = lines[-1] if lines else b""
    return bytes(last).decode("ascii", "replace")[:200]


def has_news(lines: Iterable[Any]) -> bool:
    """Whether the server pushed new or expunged mail (not a `* 0 RECENT`)."""
    for line in lines:
        match = _PUSH_RE.match(line) if isinstance(line, bytes) else None
        if match and not (match.group(2) == b"RECENT" and match.group(1) == b"0"):
            return True
    return False


def said_bye(lines: Iterable[Any]) -> bool:
    return any(isinstance(line, bytes) and line.startswith(b"BYE") for line in lines)


def list_names(lines: Sequence[Any]) -> list[str]:
    """The folder names of a LIST reply (quoted, literal or atom; modified UTF-7 decoded)."""
    names: list[str] = []
    for index, line in enumerate(lines[:-1]):
        match = _LIST_RE.match(line) if isinstance(line, bytes) else None
        if match is None:
            continue
        raw = match.group("name")
        literal = lines[index + 1] if index + 1 < len(lines) else None
        if raw.endswith(b"}") and isinstance(literal, bytearray):
            raw = bytes(literal)
        elif raw.startswith(b'"') and raw.endswith(b'"'):
            raw = re.sub(rb"\\(.)", rb"\1", raw[1:-1])
        names.append(decode_mailbox(raw.decode("utf-8", "replace")))
    return names


def message_sizes(lines: Sequence[Any]) -> dict[int, int]:
    """UID -> RFC822.SIZE from a `UID FETCH … (UID RFC822.SIZE)` reply."""
    found: dict[int, int] = {}
    for line in lines[:-1]:
        uid, size = _UID_RE.search(bytes(line)), _SIZE_RE.search(bytes(line))
        if uid and size:
            found[int(uid.group(1))] = int(size.group(1))
    return found


def fetched_bodies(lines: Sequence[Any], wanted: set[int]) -> list[FetchedBody]:
    """The literals of a `UID FETCH … BODY.PEEK[]` reply for the wanted UIDs, in reply order.

    aioimaplib gives each literal as a bytearray line between the item's header line and
    its tail (where UID may come after the literal); a sentinel header ends the last item.
    """
    bodies: list[FetchedBody] = []
    header, body, tail = b"", None, b""
    for line in [*lines[:-1], b"0 FETCH ("]:
        if isinstance(line, bytearray):
            body = bytes(line) if body is None else body
            continue
        if not _FETCH_HEADER_RE.match(line):
            tail += line
            continue
        uid_match = _UID_RE.search(header) or _UID_RE.search(tail)
        if uid_match and body is not None and int(uid_match.group(1)) in wanted:
            size = _SIZE_RE.search(header + tail)
            declared = int(size.group(1)) if size else None
            bodies.append(FetchedBody(int(uid_match.group(1)), body, declared))
        header, body, tail = line, None, b""
    return bodies
