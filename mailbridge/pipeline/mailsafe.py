"""Header hygiene for outgoing mail: one-line text, strict addresses, Message-IDs that thread."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from email import policy as email_policy
from email.parser import BytesHeaderParser
from typing import Final

LOOP_HEADER: Final = "X-Mailbridge-Loop"
MAX_REFERENCES: Final = 20
SUBJECT_LIMIT: Final = 200

_BIDI: Final = frozenset(
    chr(c) for c in (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
)


def _one_line(text: str) -> str:
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Zl", "Zp"):
            kept.append(" ")
        elif category != "Cs" and char not in _BIDI:
            kept.append(char)
    return " ".join("".join(kept).split())


def header_safe(text: str, limit: int = SUBJECT_LIMIT) -> str:
    """One clean line: control characters, line/paragraph separators, lone surrogates and
    bidi overrides removed, white space collapsed, cut to `limit` characters with "…".

    Text that still looks like RFC 2047 encoded words is decoded (as the stdlib would when
    the header is stored) and cleaned again; what is left of "=?" is broken up. Python before
    3.11.10 writes a decoded "=?utf-8?q?=0D=0ABcc:...?=" back raw: CVE-2024-6923.
    """
    line = _one_line(text)
    for _ in range(3):
        if "=?" not in line:
            break
        decoded = _one_line(str(email_policy.default.header_factory("x-text", line)))
        if decoded == line:
            break
        line = decoded
    line = line.replace("=?", "= ?")
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL_PART: Final = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME: Final = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_MESSAGE_ID: Final = re.compile(
    r"<[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,160}@(?:[A-Za-z0-9_.-]{1,160}|\[[A-Za-z0-9.:]{1,64}\])>"
)


def normalise_mailbox(email: str) -> str | None:
    """The address in sendable form (dot-atom local part, IDNA domain), or None if unusable."""
    local, at, domain = email.strip().rpartition("@")
    if not at or len(local) > 64 or not _LOCAL_PART.fullmatch(local):
        return None
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return f"{local}@{ascii_domain}" if _HOSTNAME.fullmatch(ascii_domain) else None


def strict_message_id(value: str | None) -> str | None:
    """`<local@domain>` when the value is exactly that (brackets added if missing), else None."""
    if not value:
        return None
    candidate = value.strip()
    if not candidate.startswith("<"):
        candidate = f"<{candidate}>"
    return candidate if _MESSAGE_ID.fullmatch(candidate) else None


def reference_chain(references: Iterable[str], message_id: str | None) -> tuple[str, ...]:
    """Their References plus their Message-ID: strict ids only, once each, at most
    MAX_REFERENCES (the first and the most recent are kept, as RFC 5322 §3.6.4 suggests)."""
    chain: dict[str, None] = {}
    for value in (*references, message_id):
        if (checked := strict_message_id(value)) is not None:
            chain.setdefault(checked, None)
    ids = tuple(chain)
    return ids if len(ids) <= MAX_REFERENCES else ids[:1] + ids[-(MAX_REFERENCES - 1) :]


_KIND: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_READABLE_KEY: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def ack_message_id(kind: str, key: str, domain: str) -> str:
    """A stable Message-ID: the same (kind, key, domain) always gives the same id, so a resend
    is recognisably the same mail. The key shows in clear only when it is a plain token."""
    host = domain.strip().lower()
    if not _KIND.fullmatch(kind) or not _HOSTNAME.fullmatch(host):
        raise ValueError(f"bad Message-ID kind {kind!r} or domain {domain!r}")
    digest = hashlib.sha256(f"{kind}\0{key}".encode("utf-8", "surrogatepass")).hexdigest()
    readable = f"{key}." if _READABLE_KEY.fullmatch(key) else ""
    return f"<{kind}.{readable}{digest[:16]}@{host}>"


class IdListHeader(str):
    """Message-IDs folded one per line, never as encoded words: the stdlib's folder turns a
    token longer than a line (Outlook ids often are) into RFC 2047 words, which breaks
    threading. Strict ids only (no white space or control characters) are put in here."""

    name: str

    def __new__(cls, name: str, ids: tuple[str, ...]) -> IdListHeader:
        header = super().__new__(cls, " ".join(ids))
        header.name = name
        return header

    def fold(self, *, policy: email_policy.Policy) -> str:
        return f"{self.name}: " + f"{policy.linesep} ".join(self.split()) + policy.linesep


def verify_headers(data: bytes, names: list[str]) -> None:
    """Read the bytes back: exactly the headers we set, in order, or it is not sent at all."""
    head = BytesHeaderParser(policy=email_policy.compat32).parsebytes(data)
    found = [name.lower() for name in head]
    if found != [name.lower() for name in names] or head.defects:
        raise ValueError(f"generated headers differ from those set: {found}")
