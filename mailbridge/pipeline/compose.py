"""Outgoing mail bytes built by hand: RFC 5322 fields, RFC 2047 words, a quoted-printable body."""

from __future__ import annotations

import base64
import binascii
import re
import textwrap
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from functools import lru_cache
from itertools import groupby
from typing import Final

from mailbridge.pipeline.mailsafe import (
    LOOP_HEADER,
    normalise_mailbox,
    strict_message_id,
    verify_head,
)

WRAP_WIDTH: Final = 76
_BLANK_RUN: Final = re.compile(r"\n{3,}")
# RFC 2047 §2: a line holding an encoded word is at most 76 characters, so lines are folded
# at 76 (within RFC 5322's 78). Only a token that cannot be split (an address, a Message-ID:
# at most ~330 characters) goes past it, never past 998.
LINE: Final = 76
# A longer ASCII word is encoded, so that it can be split: no line reaches 998 octets.
_LONGEST_WORD: Final = 900
# An encoded word is at most 75 characters (RFC 2047 §2); shorter here, so that even the first
# one, on the field's own line after the longest name we encode ("X-Mailbridge-Loop: "),
# keeps that line within 76.
_EW_LENGTH: Final = LINE - len("X-Mailbridge-Loop: ")
_EW_PAYLOAD: Final = _EW_LENGTH - len("=?utf-8?q??=")
_ATEXT: Final = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_LANGUAGE_TAG: Final = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")
# What header_safe removes: Cc, Zl, Zp, Cs. Refused here too, so that the header_safe
# contract is checked where it matters and not merely trusted.
_UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]|=\\?")
# RFC 2047 §5(3): the characters a "Q" word may carry as themselves, even inside a phrase.
_Q_LITERAL: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/"
)
_Q_BYTE: Final = tuple(
    chr(b) if b in _Q_LITERAL else "_" if b == 0x20 else f"={b:02X}" for b in range(256)
)


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A display name (header-safe text, may be empty) and a normalised addr-spec."""

    display_name: str
    addr_spec: str


@dataclass(frozen=True, slots=True)
class Draft:
    """Everything an automatic answer carries; text fields must already be header-safe."""

    sender: Mailbox
    to: Mailbox
    subject: str
    date: datetime
    message_id: str
    in_reply_to: str | None
    references: tuple[str, ...]
    loop_value: str  # X-Mailbridge-Loop
    content_language: str
    body: str


def _wrap(text: str, indent: str) -> list[str]:
    """Greedy wrapping of single-space-separated words, as textwrap.wrap would with
    break_long_words and break_on_hyphens off, without its per-chunk work."""
    width = WRAP_WIDTH - len(indent)
    lines: list[str] = []
    line: list[str] = []
    used = 0
    for word in text.split(" "):
        if line and used + 1 + len(word) > width:
            lines.append(indent + " ".join(line))
            line, used = [], 0
        used += len(word) + (1 if line else 0)
        line.append(word)
    return [*lines, indent + " ".join(line)]


def tidy_body(body: str) -> str:
    """A filled template as a mail body: long lines wrapped (keeping their indent), blank
    runs left by empty blocks collapsed, one final newline."""
    lines = []
    for line in body.strip().splitlines():
        text = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if len(line.rstrip()) <= WRAP_WIDTH:
            lines.append(line.rstrip())
        elif text.split(" ") == text.split():  # no tabs, runs or other spaces: the usual case
            lines += _wrap(text, indent)
        else:
            lines += textwrap.wrap(
                text,
                WRAP_WIDTH,
                initial_indent=indent,
                subsequent_indent=indent,
                break_long_words=False,
                break_on_hyphens=False,
            )
    return _BLANK_RUN.sub("\n\n", "\n".join(lines)) + "\n"


def _checked_text(text: str) -> str:
    """Header-safe text or ValueError: one line, single spaces, nothing like an encoded word.
    The last is what CVE-2024-6923 turned into a header injection on the way back in."""
    if _UNSAFE.search(text) or text != " ".join(text.split()):
        raise ValueError(f"header text is not header-safe: {text!r}")
    return text


def _checked_id(value: str) -> str:
    if strict_message_id(value) != value:
        raise ValueError(f"not a strict Message-ID: {value!r}")
    return value


def _checked_mailbox(value: str) -> str:
    if normalise_mailbox(value) != value:
        raise ValueError(f"not a normalised address: {value!r}")
    return value


def _q_encode(text: str) -> str:
    return "".join(map(_Q_BYTE.__getitem__, text.encode("utf-8")))


def _b_size(byte_count: int) -> int:
    return (byte_count + 2) // 3 * 4


def encoded_words(text: str) -> list[str]:
    """`text` as RFC 2047 words of whole characters (a reader may decode each on its own),
    "Q" or "B", whichever is shorter, as the stdlib chooses. Decoders drop the white space
    between adjacent words, so the spaces of `text` are carried inside them."""
    use_q = len(_q_encode(text)) <= _b_size(len(text.encode("utf-8")))
    words: list[str] = []
    chunk, size = "", 0
    for char in text:
        grown = size + (len(_q_encode(char)) if use_q else len(char.encode("utf-8")))
        if chunk and (grown if use_q else _b_size(grown)) > _EW_PAYLOAD:
            words.append(chunk)
            chunk, grown = "", grown - size
        chunk, size = chunk + char, grown
    words.append(chunk)
    if use_q:
        return [f"=?utf-8?q?{_q_encode(word)}?=" for word in words]
    return [
        f"=?utf-8?b?{base64.b64encode(word.encode('utf-8')).decode('ascii')}?=" for word in words
    ]


def _is_plain_word(word: str) -> bool:
    return word.isascii() and len(word) <= _LONGEST_WORD


def _is_atom(word: str) -> bool:
    return _is_plain_word(word) and _ATEXT.fullmatch(word) is not None


def _words(text: str, literal: Callable[[str], bool]) -> Iterator[str]:
    """The words of header-safe `text` for which `literal` holds as they are, each run of the
    others as encoded words (as the stdlib does). White space next to an encoded word is
    kept by decoders; between two of them it is dropped, so no space is lost or added."""
    for plain, run in groupby(_checked_text(text).split(" "), key=literal):
        words = list(run)
        yield from words if plain else encoded_words(" ".join(words))


def unstructured_tokens(text: str) -> Iterator[str]:
    """Subject-like text: any ASCII word may stand as itself."""
    if not text:
        raise ValueError("an unstructured header needs some text")
    return _words(text, _is_plain_word)


def mailbox_tokens(mailbox: Mailbox) -> list[str]:
    """`addr` or `name <addr>`. In a display name only atoms stand as themselves; any other
    word (non-ASCII, or with a special such as "," or "<") is encoded, so the name needs no
    quoting or escaping and the decoded display name is exactly the one given."""
    address = _checked_mailbox(mailbox.addr_spec)
    if not mailbox.display_name:
        return [address]
    return [*_words(mailbox.display_name, _is_atom), f"<{address}>"]


def fold(name: str, tokens: Iterable[str]) -> str:
    """`Name: tokens`, a line break before a token that would pass LINE."""
    lines: list[str] = []
    line = f"{name}:"
    for token in tokens:
        if len(line) + 1 + len(token) > LINE and line != f"{name}:":
            lines.append(line)
            line = ""
        line += " " + token
    lines.append(line)
    return "\r\n".join(lines)


@lru_cache(maxsize=8)
def _from_field(sender: Mailbox) -> str:
    """The From field is the same for every answer of one setup: encoded and folded once."""
    return fold("From", mailbox_tokens(sender))


def fold_ids(name: str, ids: tuple[str, ...]) -> str:
    """Message-IDs one per line, never as encoded words: those break threading."""
    return f"{name}: " + "\r\n ".join(map(_checked_id, ids))


def qp_body(text: str) -> bytes:
    """UTF-8, quoted-printable, CRLF line ends: 7-bit lines of at most 76 characters."""
    return binascii.b2a_qp(text.replace("\n", "\r\n").encode("utf-8"), istext=True)


# RFC 3834 §5: the standard mark. The rest are what other responders actually look at
# (Exchange, osTicket, FreeScout, Zammad, vacation programs); they cost nothing.
_AUTO_REPLY_FIELDS: Final = (
    "Auto-Submitted: auto-replied",
    "X-Auto-Response-Suppress: All",
    "Precedence: auto_reply",
    "X-Autoreply: yes",
)
_MIME_FIELDS: Final = (
    'Content-Type: text/plain; charset="utf-8"',
    "Content-Transfer-Encoding: quoted-printable",
    "MIME-Version: 1.0",
)


def compose(draft: Draft) -> bytes:
    """The whole message, its header block checked byte by byte before it is returned."""
    if draft.date.utcoffset() is None:
        raise ValueError("the Date must be an aware datetime")
    if not _LANGUAGE_TAG.fullmatch(draft.content_language):
        raise ValueError(f"bad Content-Language {draft.content_language!r}")
    if "\r" in draft.body or not draft.body.endswith("\n"):
        raise ValueError("the body must be lines of text, each ending in a newline")
    fields = [
        _from_field(draft.sender),
        fold("To", mailbox_tokens(draft.to)),
        fold("Subject", unstructured_tokens(draft.subject)),
        f"Date: {format_datetime(draft.date)}",
        fold_ids("Message-ID", (draft.message_id,)),
    ]
    if draft.in_reply_to is not None:
        fields.append(fold_ids("In-Reply-To", (draft.in_reply_to,)))
    if draft.references:
        fields.append(fold_ids("References", draft.references))
    fields += _AUTO_REPLY_FIELDS
    fields.append(fold(LOOP_HEADER, unstructured_tokens(draft.loop_value)))
    fields += _MIME_FIELDS
    fields.append(f"Content-Language: {draft.content_language}")
    head = "\r\n".join(fields).encode("ascii")
    data = head + b"\r\n\r\n" + qp_body(draft.body)
    verify_head(data, [field.split(":", 1)[0] for field in fields])
    return data
