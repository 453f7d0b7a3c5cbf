"""Stage 3: raw message bytes to a ParsedMail; never raises, says what it worked around."""

# Why this shape (measured with `python bench/parse_bench.py`, 200 mails: 70 % plain RO/SR/EN,
# 25 % HTML + 200 KB PNG, 5 % 2 MB attachment; 2 shared cores, median of 3, two runs):
#   parse_message: boundary splitter over bytes + compat32 header blocks   360-540 msg/s
#   parse_with_stdlib: stdlib feed parser (compat32), same decoding         86-122 msg/s
#   mail-parser 4.8 + base64-decoding its attachments                       84-110 msg/s
#   stdlib policy.default + get_content()                                    49-88 msg/s
# The feed parser spends its time reading line by line; the splitter finds delimiters with
# bytes.find and hands only header blocks to the stdlib. Quality is checked equal by a
# differential test against the stdlib tree (files and text), and the splitter does better
# where the stdlib raises (cpython#132794) or loses a boundary. mail-parser is not used: it is
# no better on any field read here, slower, names unnamed parts randomly and returns base64 text.
# Order of fallbacks: splitter -> stdlib feed parser -> raw text with replacement, each a defect.

from __future__ import annotations

import html as html_lib
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime

from mailbridge.pipeline.attachments import (
    default_name,
    extract_uuencoded,
    safe_filename,
    unpack_tnef,
)
from mailbridge.pipeline.mime_text import decode_bytes, decode_header, html_charset, unfold
from mailbridge.pipeline.mime_tree import Node, decode_transfer, from_stdlib, split_message
from mailbridge.records import Address, Attachment, ParsedMail

_ADDRESS_HEADERS = ("from", "to", "cc", "reply-to")
_MSG_ID = re.compile(r"<[^<>\s]+>")
_CID = re.compile(r"""cid:([^"'\s)>]+)""", re.I)
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_TAGS = re.compile(r"<[^>]*>")
_BODY_TYPES = ("text/plain", "text/html")
_MESSAGE_TYPES = ("message/rfc822", "message/global")


@dataclass(slots=True)
class _File:
    name: str
    content_type: str
    data: bytes
    disposition: str | None = None
    content_id: str | None = None


@dataclass(slots=True)
class _Acc:
    """What a walk over the tree collected; one per multipart/alternative branch."""

    texts: list[str] = field(default_factory=list)
    htmls: list[str] = field(default_factory=list)
    files: list[_File] = field(default_factory=list)
    tnef_texts: list[str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)

    def take(self, other: _Acc, text: bool = True, html: bool = True) -> None:
        self.texts += other.texts if text else []
        self.htmls += other.htmls if html else []
        self.files += other.files
        self.tnef_texts += other.tnef_texts
        self.defects += other.defects


def parse_message(data: bytes, *, max_attachment_bytes: int | None = None) -> ParsedMail:
    """Read everything a mail server accepts; no exception escapes."""
    try:
        return _parse(data, split_message(data), max_attachment_bytes)
    except Exception as exc:  # the splitter failed: the stdlib parser gets a turn
        first = f"parser_error: {type(exc).__name__}: {exc}"[:200]
    return parse_with_stdlib(data, max_attachment_bytes=max_attachment_bytes, prior=(first,))


def parse_with_stdlib(
    data: bytes, *, max_attachment_bytes: int | None = None, prior: tuple[str, ...] = ()
) -> ParsedMail:
    """The same result over the stdlib feed parser: the fallback, the benchmark's alternative."""
    try:
        parsed = _parse(data, from_stdlib(data), max_attachment_bytes)
        return _with_defects(parsed, prior)
    except Exception as exc:
        defects = (*prior, f"unparseable: {type(exc).__name__}: {exc}"[:200])
    return _last_resort(data, defects)


def _with_defects(parsed: ParsedMail, prior: tuple[str, ...]) -> ParsedMail:
    if not prior:
        return parsed
    return replace(parsed, defects=(*prior, *parsed.defects))


def _last_resort(data: bytes, defects: tuple[str, ...]) -> ParsedMail:
    text = data.decode("utf-8", "replace")
    return ParsedMail(
        message_id=None,
        subject="",
        sender=None,
        reply_to=(),
        to=(),
        cc=(),
        date=None,
        in_reply_to=(),
        references=(),
        headers=(),
        body_text=text,
        body_html=None,
        attachments=(),
        defects=defects,
        size=len(data),
    )


def _param(headers: Message, name: str) -> str | None:
    try:
        value = headers.get_content_charset() if name == "charset" else headers.get_param(name)
    except Exception:
        return None
    return value if isinstance(value, str) and value else None


def _parse(data: bytes, root: Node, max_bytes: int | None) -> ParsedMail:
    nodes = root.walk()
    hints = list(dict.fromkeys(c for n in nodes if (c := _param(n.headers, "charset"))))
    defects: list[str] = [d for n in nodes for d in n.defects]
    headers: list[tuple[str, str]] = []
    raw_headers: dict[str, list[str]] = {}
    for name, raw in root.headers.raw_items():
        value, found = decode_header(str(raw), f"header={name}", hints)
        defects += found
        headers.append((name, value))
        raw_headers.setdefault(name.lower(), []).append(str(raw))
    addresses = {h: _addresses(raw_headers.get(h, []), h, hints, defects) for h in _ADDRESS_HEADERS}
    decoded = {name.lower(): value for name, value in reversed(headers)}

    acc = _Acc()
    _visit(root, acc, hints, {})
    defects += acc.defects
    body_html = "\n".join(acc.htmls) or None
    body_text = "\n".join(acc.texts)
    if not body_text.strip() and body_html:
        body_text = _render_html(body_html, defects)
    if not body_text.strip() and acc.tnef_texts:
        body_text = "\n".join(acc.tnef_texts)
    referenced = {m.group(1) for m in _CID.finditer(body_html or "")}
    attachments, omitted = _attachments(acc.files, referenced, max_bytes)
    return ParsedMail(
        message_id=_first_id(decoded.get("message-id")),
        subject=decoded.get("subject", ""),
        sender=addresses["from"][0] if addresses["from"] else None,
        reply_to=tuple(addresses["reply-to"]),
        to=tuple(addresses["to"]),
        cc=tuple(addresses["cc"]),
        date=_date(decoded.get("date")),
        in_reply_to=tuple(_MSG_ID.findall(decoded.get("in-reply-to", ""))),
        references=tuple(_MSG_ID.findall(decoded.get("references", ""))),
        headers=tuple(headers),
        body_text=body_text,
        body_html=body_html,
        attachments=attachments,
        defects=tuple(dict.fromkeys(defects)),
        size=len(data),
        omitted=omitted,
    )


def _addresses(raws: list[str], header: str, hints: list[str], defects: list[str]) -> list[Address]:
    try:
        pairs = getaddresses([unfold(raw) for raw in raws])
    except Exception as exc:
        defects.append(f"bad_address_header: {type(exc).__name__}")
        return []
    out: list[Address] = []
    for name, addr in pairs:
        addr = addr.strip().encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        if not addr:
            continue
        display, found = decode_header(name, f"header={header.title()}", hints)
        defects += found
        out.append(Address(name=display.strip().strip('"').strip(), email=addr))
    return out


def _first_id(value: str | None) -> str | None:
    if not value:
        return None
    match = _MSG_ID.search(value)
    return match.group() if match else value.strip() or None


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _render_html(body_html: str, defects: list[str]) -> str:
    try:
        from inscriptis import get_text

        return str(get_text(body_html)).strip("\n")
    except Exception as exc:
        defects.append(f"html_render_failed: {type(exc).__name__}")
        return html_lib.unescape(_TAGS.sub(" ", body_html)).strip()


def _visit(node: Node, acc: _Acc, hints: list[str], counters: dict[str, int]) -> None:
    """Collect bodies and files from one node; alternatives keep one text and one HTML."""
    if node.children:
        if node.headers.get_content_subtype() != "alternative":
            for child in node.children:
                _visit(child, acc, hints, counters)
            return
        branches = []
        for child in node.children:
            branches.append(_Acc())
            _visit(child, branches[-1], hints, counters)
        plain = next((b for b in branches if b.texts), None)
        rich = next((b for b in reversed(branches) if b.htmls), None)
        for branch in branches:
            acc.take(branch, text=branch is plain, html=branch is rich)
        return
    _leaf(node, acc, hints, counters)


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _filename(node: Node, acc: _Acc, hints: list[str]) -> str:
    """The part's file name: RFC 2231 or RFC 2047 encoded, or raw 8-bit; made safe to show."""
    where = f"part={node.section}"
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        try:
            value = node.headers.get_param(param, header=header)
        except Exception:
            acc.defects.append(f"bad_mime_parameter: {param} {where}")
            continue
        if isinstance(value, tuple):  # RFC 2231: (charset, language, %-decoded as latin-1)
            charset, _language, text = value
            try:
                raw = str(text).encode("latin-1", "surrogateescape")
            except UnicodeEncodeError:
                raw = str(text).encode("utf-8", "surrogateescape")
            name, found = decode_bytes(raw, str(charset or "") or None, where, hints)
        elif isinstance(value, str) and value:
            name, found = decode_header(value, where, hints)
        else:
            continue
        acc.defects.extend(found)
        if safe_filename(name):
            return safe_filename(name)
    return ""


def _leaf(node: Node, acc: _Acc, hints: list[str], counters: dict[str, int]) -> None:
    ctype = node.content_type
    ctype = "text/plain" if ctype.startswith("multipart/") else ctype
    disposition = node.headers.get_content_disposition()
    name = _filename(node, acc, hints)
    data, found = decode_transfer(node)
    acc.defects.extend(found)
    where = f"part={node.section}"
    if ctype in _BODY_TYPES and disposition != "attachment" and not name:
        declared = _param(node.headers, "charset")
        if ctype == "text/html":
            text, found = decode_bytes(data, declared or html_charset(data), where, hints)
            acc.htmls.append(_newlines(text))
        else:
            text, found = decode_bytes(data, declared, where, hints)
            _plain(_newlines(text), acc)
        acc.defects.extend(found)
        return
    is_tnef = ctype == "application/ms-tnef" or name.lower() == "winmail.dat"
    if is_tnef and _tnef(data, name or "winmail.dat", acc, where):
        return
    if not name:
        name = _message_name(data, hints) if ctype in _MESSAGE_TYPES else ""
    if not name:
        name = _numbered(ctype, counters)
    cid = node.headers.get("content-id")
    cid_text = str(cid).strip().strip("<>").strip() if cid else None
    acc.files.append(_File(name, ctype, data, disposition, cid_text or None))


def _numbered(ctype: str, counters: dict[str, int]) -> str:
    stem = default_name(ctype, 0).rsplit("-", 1)[0]
    counters[stem] = counters.get(stem, 0) + 1
    return default_name(ctype, counters[stem])


def _plain(text: str, acc: _Acc) -> None:
    found = extract_uuencoded(text)
    acc.texts.append(found.text)
    acc.defects.extend(found.defects)
    for index, (name, data) in enumerate(found.files, start=1):
        acc.files.append(_File(safe_filename(name) or f"uuencoded-{index}.bin", "", data))


def _message_name(data: bytes, hints: list[str]) -> str:
    """`<subject>.eml` for an attached message, from its own Subject header."""
    head = split_message(_BLANK_LINE.split(data[:65536], maxsplit=1)[0])
    subject = head.headers.get("subject")
    if not subject:
        return ""
    text, _ = decode_header(str(subject), "attached-message", hints)
    name = safe_filename(text)
    return f"{name}.eml" if name else ""


def _tnef(data: bytes, name: str, acc: _Acc, where: str) -> bool:
    """Unpack winmail.dat into its files; False keeps the original as an attachment."""
    try:
        content = unpack_tnef(data)
    except Exception as exc:
        acc.defects.append(f"tnef_unpack_failed: {type(exc).__name__} {where}")
        return False
    acc.defects.extend(f"{d} {where}" for d in content.defects)
    if not content.files and not content.body_text and not content.body_html:
        acc.defects.append(f"tnef_without_files_kept: {where}")
        return False
    for index, (inner, payload) in enumerate(content.files, start=1):
        acc.files.append(_File(safe_filename(inner) or f"winmail-{index}.bin", "", payload))
    if content.body_text:
        acc.tnef_texts.append(content.body_text)
    elif content.body_html:
        acc.tnef_texts.append(_render_html(content.body_html, acc.defects))
    return True


def _attachments(
    files: list[_File], referenced: set[str], max_bytes: int | None
) -> tuple[tuple[Attachment, ...], tuple[str, ...]]:
    kept: list[Attachment] = []
    omitted: list[str] = []
    for item in files:
        ctype = item.content_type or _guess_type(item.name)
        if max_bytes is not None and len(item.data) > max_bytes:
            omitted.append(f"{item.name} ({ctype}, {len(item.data)} bytes)")
            continue
        cited = item.content_id is not None and item.content_id in referenced
        inline = cited or (item.disposition == "inline" and ctype.startswith("image/"))
        kept.append(Attachment(item.name, ctype, item.data, inline, item.content_id))
    return tuple(kept), tuple(omitted)


_BY_EXTENSION = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "pdf": "application/pdf",
    "txt": "text/plain",
    "zip": "application/zip",
    "doc": "application/msword",
    "xls": "application/vnd.ms-excel",
    "eml": "message/rfc822",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


def _guess_type(name: str) -> str:
    """A content type for files that came without one (uuencoded, inside winmail.dat)."""
    ext = name.rpartition(".")[2].lower() if "." in name else ""
    return _BY_EXTENSION.get(ext, "application/octet-stream")
