"""Attachment helpers: safe and deterministic file names, uuencoded blocks, winmail.dat (TNEF)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from mailbridge.pipeline.mime_tree import decode_uu_block

MAX_NAME_CHARS = 150
# A fixed table (not `mimetypes`, which reads the host's /etc/mime.types) keeps names stable.
_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/webp": ".webp",
    "image/tiff": ".tif",
    "image/heic": ".heic",
    "image/heif": ".heif",
    "image/svg+xml": ".svg",
    "image/x-icon": ".ico",
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "application/json": ".json",
    "application/msword": ".doc",
    "application/vnd.ms-excel": ".xls",
    "application/ms-tnef": ".dat",
    "application/rtf": ".rtf",
    "text/rtf": ".rtf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/pkcs7-signature": ".p7s",
    "application/x-pkcs7-signature": ".p7s",
    "application/pgp-signature": ".asc",
    "message/rfc822": ".eml",
    "message/global": ".eml",
    "message/delivery-status": ".txt",
    "message/global-delivery-status": ".txt",
    "message/disposition-notification": ".txt",
    "text/rfc822-headers": ".txt",
    "text/plain": ".txt",
    "text/html": ".html",
    "text/calendar": ".ics",
    "text/csv": ".csv",
    "text/x-vcard": ".vcf",
    "text/vcard": ".vcf",
    "audio/mpeg": ".mp3",
    "video/mp4": ".mp4",
}
_STEMS = {
    "message/rfc822": "message",
    "message/global": "message",
    "message/delivery-status": "delivery-status",
    "message/global-delivery-status": "delivery-status",
    "message/disposition-notification": "read-receipt",
    "text/rfc822-headers": "returned-headers",
    "text/calendar": "invite",
}
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')
_UU_LINE = re.compile(r"[\x20-\x60]{1,62}")
_UU_START = re.compile(r"^begin [0-7]{3,4} \S[^\r\n]*\r?$", re.M)


def extension(content_type: str) -> str:
    return _EXTENSIONS.get(content_type.lower(), ".bin")


def default_name(content_type: str, ordinal: int) -> str:
    """A name from position and type for an unnamed part: `image-1.png`, `attachment-2.pdf`."""
    ctype = content_type.lower()
    stem = _STEMS.get(ctype) or ("image" if ctype.startswith("image/") else "attachment")
    return f"{stem}-{ordinal}{extension(ctype)}"


def safe_filename(name: str) -> str:
    """A display name: last path component, no control or reserved characters, bounded length."""
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if ch.isspace() or unicodedata.category(ch)[0] != "C")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name)
    name = " ".join(name.split()).strip(". ")
    if len(name) > MAX_NAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            name = stem[: MAX_NAME_CHARS - len(ext) - 1].rstrip(". ") + "." + ext
        else:
            name = name[:MAX_NAME_CHARS].rstrip(". ")
    return name


@dataclass(slots=True)
class UuResult:
    """A text with its uuencoded blocks removed, and the files they held."""

    text: str
    files: list[tuple[str, bytes]] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)


def extract_uuencoded(text: str) -> UuResult:
    """Find `begin MODE NAME` … `end` blocks in a text body, decode them, cut them out."""
    result = UuResult(text)
    if "begin " not in text:
        return result
    pieces: list[str] = []
    pos = 0
    for match in _UU_START.finditer(text):
        line_end = text.find("\n", match.end())
        if match.start() < pos or line_end == -1:
            continue
        cursor, block, ended = line_end + 1, [match.group().rstrip("\r")], False
        while cursor < len(text):
            newline = text.find("\n", cursor)
            stop = len(text) if newline == -1 else newline
            bare = text[cursor:stop].rstrip("\r")
            if bare.strip() != "end" and not _UU_LINE.fullmatch(bare):
                break
            block.append(bare)
            cursor = stop + 1
            if bare.strip() == "end":
                ended = True
                break
        if len(block) < 2:
            continue
        data, name = decode_uu_block("\n".join(block).encode("ascii", "replace"))
        if not ended:
            result.defects.append(f"uuencode_without_end: {name}")
        result.files.append((name or "", data))
        pieces.append(text[pos : match.start()])
        pos = min(len(text), cursor)
    pieces.append(text[pos:])
    result.text = "".join(pieces)
    return result


@dataclass(slots=True)
class TnefContent:
    """What a winmail.dat held: files, and the message body when Outlook put it there."""

    files: list[tuple[str, bytes]] = field(default_factory=list)
    body_text: str | None = None
    body_html: str | None = None
    has_rtf: bool = False
    defects: list[str] = field(default_factory=list)


def _as_text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.rstrip(b"\x00").decode("cp1252", "replace") or None
    if isinstance(value, str):
        return value.rstrip("\x00") or None
    return None


def unpack_tnef(data: bytes) -> TnefContent:
    """Unpack an Outlook TNEF blob with tnefparse; raises when it cannot be read."""
    from tnefparse.tnef import TNEF

    tnef = TNEF(data, do_checksum=True)
    content = TnefContent()
    if not all(obj.good_checksum for obj in tnef.objects):
        content.defects.append("tnef_bad_checksum")
    for index, attachment in enumerate(tnef.attachments, start=1):
        raw_name = attachment.long_filename()
        name = _as_text(raw_name) or f"winmail-{index}{extension('')}"
        payload = attachment.data
        if isinstance(payload, bytes | bytearray):
            content.files.append((name, bytes(payload)))
    content.body_text = _as_text(tnef.body)
    content.body_html = _as_text(tnef.htmlbody)
    content.has_rtf = bool(getattr(tnef, "_rtfbody", None))
    return content
