"""Header hygiene for outgoing mail: one-line text, strict addresses, Message-IDs that thread."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from email import policy as email_policy
from typing import Final

from mailbridge.records import Address

LOOP_HEADER: Final = "X-Mailbridge-Loop"
MAX_REFERENCES: Final = 20
SUBJECT_LIMIT: Final = 200

# Unicode's Cc (C0, DEL, C1), Zl and Zp are exactly these: they become spaces. Cs (lone
# surrogates) and the bidi embedding, override and isolate controls are dropped. Two regular
# expressions instead of a unicodedata lookup per character: header_safe runs on every
# subject and name of every answer.
_BREAKS: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_DROPPED: Final = re.compile("[\ud800-\udfff\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _one_line(text: str) -> str:
    return " ".join(_DROPPED.sub("", _BREAKS.sub(" ", text)).split())


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


def recipient_key(address: Address) -> str:
    """A recipient as the outbox stores it (sendable form, lower case): the per-recipient
    caps count automatic mail by this key, so an IDNA domain is counted as sent."""
    return (normalise_mailbox(address.email) or address.key).lower()


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


_FIELD_LINE: Final = re.compile(rb"([A-Za-z][A-Za-z0-9-]*): [\x21-\x7e][\x20-\x7e]*")
_CONTINUATION: Final = re.compile(rb" [\x21-\x7e][\x20-\x7e]*")


def verify_head(data: bytes, names: list[str]) -> None:
    """Read the bytes back, strictly: 7-bit, CRLF only, and a header block of exactly the
    fields we set, in order, each `Name: value` or folded onto lines starting with a space,
    none over 998 octets. Anything else is not sent at all. Unfolding and decoding are never
    needed to check this, so no parser bug (CVE-2024-6923) can hide an extra field."""
    head, blank, _ = data.partition(b"\r\n\r\n")
    if not blank or not data.isascii() or data.count(b"\n") != data.count(b"\r\n"):
        raise ValueError("generated mail is not 7-bit CRLF text with a header block")
    if data.count(b"\r") != data.count(b"\r\n"):
        raise ValueError("generated mail has a bare CR")
    if max(map(len, data.split(b"\r\n"))) > 998:
        raise ValueError("generated mail has a line over 998 octets")
    found: list[str] = []
    for line in head.split(b"\r\n"):
        field = _FIELD_LINE.fullmatch(line)
        if not (field or (found and _CONTINUATION.fullmatch(line))):
            raise ValueError(f"generated header line refused: {line[:80]!r}")
        if field:
            found.append(field[1].decode("ascii").lower())
    if found != [name.lower() for name in names]:
        raise ValueError(f"generated headers differ from those set: {found}")
