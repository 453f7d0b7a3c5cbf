"""Charset decoding for bodies and headers: declared, sibling, UTF-8, detected, then cp1252."""

from __future__ import annotations

import binascii
import codecs
import re
from collections.abc import Iterable

# Labels that real mailers use for a larger charset than they name: try the larger one next.
_SIBLINGS: dict[str, tuple[str, ...]] = {
    "ascii": ("cp1252",),
    "iso8859_1": ("cp1252",),
    "iso8859_15": ("cp1252",),
    "iso8859_2": ("cp1250",),
    "iso8859_16": ("cp1250",),
    "iso8859_5": ("cp1251",),
    "koi8_r": ("cp1251",),
    "iso8859_7": ("cp1253",),
    "iso8859_9": ("cp1254",),
    "gb2312": ("gb18030",),
    "gbk": ("gb18030",),
    "big5": ("big5hkscs", "cp950"),
    "euc_kr": ("cp949",),
    "iso2022_jp": ("iso2022_jp_2", "iso2022_jp_ext", "cp932", "euc_jp"),
    "shift_jis": ("cp932",),
    "euc_jp": ("cp932",),
}
_SINGLE_BYTE = ("iso8859", "cp125", "koi8", "mac_", "ascii", "cp437", "cp850", "cp852", "cp866")
# Labels seen in mail that Python does not know.
_ALIASES = {
    "x-sjis": "cp932",
    "x-gbk": "gb18030",
    "x-euc-jp": "euc_jp",
    "windows-874": "cp874",
    "unicode-1-1-utf-7": "utf_7",
    "utf8mb4": "utf_8",
    "x-cp1250": "cp1250",
}
# Candidates for detection: the scripts our customers write in plus common East Asian ones.
# Unrestricted detection guesses UTF-16 for short Romanian text.
_DETECT_CANDIDATES = [
    "cp1250",
    "cp1251",
    "cp1252",
    "iso8859_2",
    "iso8859_5",
    "koi8_r",
    "iso8859_16",
    "gb18030",
    "big5",
    "cp932",
    "euc_jp",
    "cp949",
    "iso8859_7",
    "iso8859_9",
    "cp1257",
]
# Text codecs that are not charsets: escapes would turn mail text into code points at will.
_REFUSED = {"unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined"}
_C1 = re.compile("[\x80-\x9f]")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\n]*?)\?=")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BREAKS = re.compile(r"[\t\r\n]")
_NOT_B64 = re.compile(rb"[^A-Za-z0-9+/]+")  # padding too: it is counted again after the filter


def codec_name(label: str | None) -> str | None:
    """Python's name for a charset label (RFC 2231 language suffix dropped), None if unknown."""
    if not label:
        return None
    label = label.strip().strip("\"'").split("*", 1)[0]
    label = _ALIASES.get(label.lower(), label)
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED:
        return None
    return info.name.replace("-", "_")


def _strict(data: bytes, codec: str) -> str | None:
    try:
        text = data.decode(codec)
    except (UnicodeError, LookupError):
        return None
    # A single-byte label that yields C1 controls was written with the Windows code page.
    return None if _C1.search(text) else text


def detect(data: bytes) -> str | None:
    """The detected codec of `data` among the expected ones, or None."""
    # Imported on first need (undeclared or wrong charsets): about 4 MB most mail never needs.
    from charset_normalizer import from_bytes

    try:
        best = from_bytes(data, cp_isolation=_DETECT_CANDIDATES).best()
    except Exception:  # detection is a heuristic: never let it fail a parse
        return None
    return None if best is None else codec_name(best.encoding)


def decode_bytes(
    data: bytes, declared: str | None, where: str, hints: Iterable[str] = ()
) -> tuple[str, list[str]]:
    """Decode `data` by the fallback chain; a defect string names each fallback taken."""
    codec = codec_name(declared)
    label = (declared or "none").strip().lower() or "none"
    if codec is not None and codec.startswith(_SINGLE_BYTE) and not data.isascii():
        # Valid multi-byte UTF-8 is next to never legitimate 8-bit text: the label is stale.
        text = _strict(data, "utf_8")
        if text is not None:
            return text, [_fallback(label, "utf_8", where)]
    if codec is not None:
        text = _strict(data, codec)
        if text is not None:
            return text, []
    elif data.isascii():
        return data.decode("ascii"), []
    chain = ["utf_8", *_SIBLINGS.get(codec, ())] if codec else ["utf_8"]
    chain += [c for c in map(codec_name, hints) if c and c not in chain and c != codec]
    for candidate in chain:
        text = _strict(data, candidate)
        if text is not None:
            if candidate == "utf_8" and declared is None:
                return text, []  # undeclared UTF-8 is the common case, not a defect
            return text, [_fallback(label, candidate, where)]
    text = _mostly_utf8(data)
    if text is not None:
        return text, [_fallback(label, "utf-8/replace", where)]
    detected = detect(data)
    if detected is not None:
        text = _strict(data, detected)
        if text is not None:
            return text, [_fallback(label, detected, where)]
    return data.decode("cp1252", "replace"), [_fallback(label, "cp1252/replace", where)]


def _mostly_utf8(data: bytes) -> str | None:
    """UTF-8 with a few broken bytes (a cut or a bad relay) stays UTF-8, marked with U+FFFD."""
    text = data.decode("utf-8", "replace")
    bad = text.count("\ufffd")
    good = len(text) - len(text.encode("ascii", "ignore")) - bad
    return text if good >= 4 * bad else None


def _fallback(declared: str, used: str, where: str) -> str:
    return f"charset_fallback: declared={declared} used={used.replace('_', '-')} {where}"


def html_charset(data: bytes) -> str | None:
    """The charset an HTML document declares in a <meta> tag near its start."""
    match = _META_CHARSET.search(data[:4096])
    return match.group(1).decode("ascii") if match else None


def decode_b64(data: bytes | memoryview) -> tuple[bytes, bool]:
    """Lenient base64: junk characters ignored, padding repaired; True when repair was needed."""
    # Non-strict binascii skips line breaks itself: joining lines first would copy the body.
    try:
        return binascii.a2b_base64(data, strict_mode=False), False
    except binascii.Error:
        body = _NOT_B64.sub(b"", data)
        body = body[: len(body) - len(body) % 4] if len(body) % 4 == 1 else body
        body += b"=" * (-len(body) % 4)
        try:
            return binascii.a2b_base64(body), True
        except binascii.Error:
            return b"", True


def unfold(value: str) -> str:
    """A header value with folding line breaks removed."""
    return _FOLD.sub("", value).strip()


def decode_header(raw: str, where: str, hints: Iterable[str] = ()) -> tuple[str, list[str]]:
    """Decode a raw header value: RFC 2047 words (joined per charset) and raw 8-bit text."""
    value = unfold(raw)
    defects: list[str] = []
    pieces: list[str] = []
    pending: list[bytes] = []
    pending_charset = ""

    def flush() -> None:
        nonlocal pending_charset
        if pending:
            text, found = decode_bytes(b"".join(pending), pending_charset, where, hints)
            pieces.append(text)
            defects.extend(found)
            pending.clear()
        pending_charset = ""

    pos = 0
    for match in _ENCODED_WORD.finditer(value):
        gap = value[pos : match.start()]
        if gap and not (gap.isspace() and pending):  # space between encoded words is dropped
            flush()
            pieces.append(_raw_text(gap, where, hints, defects))
        charset, kind, payload = match.group(1), match.group(2).lower(), match.group(3)
        if kind == "b":
            data, repaired = decode_b64(payload.encode("ascii", "surrogateescape"))
            if repaired:
                defects.append(f"bad_encoded_word: {where}")
        else:
            data = binascii.a2b_qp(payload.encode("ascii", "surrogateescape"), header=True)
        label = charset.split("*", 1)[0].lower()
        if pending and label != pending_charset:
            flush()
        pending_charset = label
        pending.append(data)
        pos = match.end()
    flush()
    if pos < len(value):
        pieces.append(_raw_text(value[pos:], where, hints, defects))
    return _BREAKS.sub(" ", _CONTROL.sub("", "".join(pieces))), defects


def _raw_text(text: str, where: str, hints: Iterable[str], defects: list[str]) -> str:
    """Header text outside encoded words: ASCII, or raw 8-bit bytes (UTF-8, a hint, detection)."""
    if text.isascii():
        return text
    data = text.encode("utf-8", "surrogateescape")
    decoded, found = decode_bytes(data, None, where, hints)
    defects.extend(found)
    return decoded
