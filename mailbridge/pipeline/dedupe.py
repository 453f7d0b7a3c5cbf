"""Which message is which: dedupe keys, and a re-fetch told apart from a reused Message-ID."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from mailbridge.adapters.blobs import BlobStore
from mailbridge.adapters.db import store
from mailbridge.adapters.db.models import InboundMessage
from mailbridge.errors import TransientError
from mailbridge.logs import get_logger
from mailbridge.pipeline.parse import parse_message
from mailbridge.records import ParsedMail

log = get_logger(__name__)

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
# What the author wrote, as opposed to what servers add on the way (Received, Delivered-To,
# Return-Path, signatures, spam scores): two copies of one message agree on these.
_AUTHOR_HEADERS = (b"from", b"date", b"subject")
_KEY_LIMIT = 512  # InboundMessage.dedupe_key


def dedupe_key(data: bytes) -> tuple[str, str | None]:
    """(key, message_id): the Message-ID when the header block has one, else the sha256."""
    header_block = _HEADER_END.split(data, maxsplit=1)[0]
    found = _MESSAGE_ID.search(header_block)
    if found:
        text = re.sub(r"\s+", "", found.group(1).decode("ascii", "replace"))
        if 2 < len(text) <= 500:
            return f"mid:{text}", text
    return f"sha256:{hashlib.sha256(data).hexdigest()}", None


def content_fingerprint(data: bytes) -> str:
    """A digest of the author's headers and the body as bytes, routing headers left out: equal
    for most copies (the quick test before same_message parses), and a variant key's suffix."""
    parts = _HEADER_END.split(data, maxsplit=1)
    head, body = parts[0], parts[1] if len(parts) > 1 else b""
    unfolded = re.sub(rb"\r?\n[ \t]+", b" ", head)
    values: dict[bytes, bytes] = {}
    for line in unfolded.splitlines():
        name, colon, value = line.partition(b":")
        name = name.strip().lower()
        if colon and name in _AUTHOR_HEADERS and name not in values:
            values[name] = b" ".join(value.split())
    digest = hashlib.sha256()
    for name in _AUTHOR_HEADERS:
        digest.update(values.get(name, b"") + b"\0")
    digest.update(b"\n".join(line.rstrip() for line in body.splitlines()).rstrip())
    return digest.hexdigest()


def same_message(first: bytes, second: bytes) -> bool:
    """Whether two raws under one Message-ID are copies of one message that took different
    routes: the same Date, the same attachments, and the same text once decoded, where one
    copy may end in a list's footer.

    Neither bytes nor headers decide: relays re-encode 8bit as quoted-printable, lists tag
    subjects and rewrite From (DMARC), gateways prefix "[EXTERNAL]". A mailer that reuses a
    Message-ID for another message sends it at another time, or with other text or files.
    Parses both: call it off the event loop (a hostile message can take seconds).
    """
    if first == second or content_fingerprint(first) == content_fingerprint(second):
        return True
    # With max_attachment_bytes=0 attachments are listed by name, type and decoded size.
    one, other = (
        parse_message(first, max_attachment_bytes=0),
        parse_message(second, max_attachment_bytes=0),
    )
    if one.date != other.date or _files(one) != _files(other):
        return False
    return _same_text(_words(one.body_text), _words(other.body_text))


def _files(parsed: ParsedMail) -> tuple[object, ...]:
    return (*((a.filename, a.size) for a in parsed.attachments), *parsed.omitted)


def _words(text: str) -> str:
    return " ".join(text.split())


def _same_text(one: str, other: str) -> bool:
    """Equal, or the longer is the shorter (not empty) and then more words: a footer. Not
    "1234" against "12345", nor an empty text against any."""
    shorter, longer = sorted((one, other), key=len)
    if shorter == longer:
        return True
    return bool(shorter) and longer.startswith(shorter + " ")


def variant_key(key: str, data: bytes) -> str:
    """The key of a message that reuses the Message-ID of another one, with other content."""
    suffix = "#" + content_fingerprint(data)[:16]
    return key[: _KEY_LIMIT - len(suffix)] + suffix


async def same_as_held(session: AsyncSession, blobs: BlobStore, key: str, data: bytes) -> bool:
    """Whether `data` is the message held under `key` (a re-fetch, a copy), not another one
    that reuses its Message-ID. Only a differing raw costs a read of the held one."""
    return await same_as_row(blobs, await store.inbound_by_key(session, key), data)


async def same_as_row(blobs: BlobStore, row: InboundMessage | None, data: bytes) -> bool:
    """`same_as_held` for a row already read."""
    if row is None or row.sha256 == hashlib.sha256(data).hexdigest():
        return True
    try:
        held = await asyncio.to_thread(blobs.kept_raw, row.raw, row.sha256, row.size)
    except OSError as error:
        # The held raw (a large one, in the blob store) cannot be read to compare. Either
        # guess could drop a message or answer one twice: wait until the store is back.
        log.warning("held_raw_unreadable", inbound_id=row.id, error=str(error))
        raise TransientError(f"cannot compare with inbound message {row.id}: {error}") from error
    if await asyncio.to_thread(same_message, held, data):
        return True
    log.warning("message_id_reused", key=row.dedupe_key, held_inbound_id=row.id)
    return False


async def distinct_keys(
    session: AsyncSession,
    blobs: BlobStore,
    items: Sequence[tuple[str, bytes]],
    held: set[str],
) -> list[str]:
    """Each (key, raw)'s key, made a variant where its Message-ID is held, or came earlier in
    `items`, with other content; `held` is the set of keys already in the database."""
    keys: list[str] = []
    first: dict[str, bytes] = {}
    for key, data in items:
        if not key.startswith("mid:"):
            keys.append(key)
        elif key in held:
            same = await same_as_held(session, blobs, key, data)
            keys.append(key if same else variant_key(key, data))
        elif key in first:
            same = await asyncio.to_thread(same_message, first[key], data)
            keys.append(key if same else variant_key(key, data))
        else:
            first[key] = data
            keys.append(key)
    return keys
