"""Quoted history removal for the display text of a follow-up (RO, SR Latin/Cyrillic, EN)."""

from __future__ import annotations

import re

_ORIGINAL = re.compile(
    r"^\s*-{2,}\s*(original message|originalna poruka|оригинална порука|mesaj original|"
    r"mesajul original|forwarded message|prosleđena poruka|mesaj redirecționat)\s*-{2,}",
    re.I,
)
_SEPARATOR = re.compile(r"^\s*_{10,}\s*$")
_FROM = re.compile(r"^\s*\*?(from|de la|de|od|од|von)\s*:\*?\s*\S", re.I)
_SENT = re.compile(
    r"^\s*\*?(sent|date|trimis|data|poslato|послато|послата|datum|послат|gesendet)\s*:", re.I
)
_FROM_SENT_ONE_LINE = re.compile(
    r"^\s*(from|de la|od|од)\s*:.+\b(sent|trimis|poslato|послато)\s*:", re.I
)
_ON_WROTE = re.compile(r"^\s*(on|pe|în data de|in data de)\b.+\b(wrote|a scris)\s*:\s*$", re.I)
_SERBIAN = re.compile(r"\b(je|је)\s+(napisao|napisala|написао|написала)\s*:\s*$", re.I)
_SERBIAN_START = re.compile(r"^\s*(dana|дана|u|у|dne)\b", re.I)
_QUOTE = re.compile(r"^\s*>")


def _line(lines: list[str], index: int) -> str:
    return lines[index].rstrip("\r") if 0 <= index < len(lines) else ""


def _attribution(lines: list[str], index: int) -> int | None:
    """Where quoted history starts if line `index` opens it, else None."""
    line = _line(lines, index)
    if not line.strip() or _QUOTE.match(line):
        return None
    following = _line(lines, index + 1)
    joined = f"{line.rstrip()} {following.strip()}"
    if _ORIGINAL.match(line) or _FROM_SENT_ONE_LINE.match(line):
        return index
    if _ON_WROTE.match(line) or (following.strip() and _ON_WROTE.match(joined)):
        return index
    if _SERBIAN.search(line):
        previous = _line(lines, index - 1)
        return index - 1 if previous.strip() and _SERBIAN_START.match(previous) else index
    if _SEPARATOR.match(line):
        for ahead in range(index + 1, min(index + 4, len(lines))):
            if _FROM.match(_line(lines, ahead)):
                return index
        return None
    if _FROM.match(line):
        for ahead in range(index + 1, min(index + 6, len(lines))):
            if _SENT.match(_line(lines, ahead)):
                return index
    return None


def strip_quoted(text: str) -> str:
    """The new text of a reply: `>` lines and everything from an attribution line on removed."""
    lines = text.split("\n")
    cut = len(lines)
    for index in range(len(lines)):
        start = _attribution(lines, index)
        if start is not None:
            cut = start
            break
    kept = [line for line in lines[:cut] if not _QUOTE.match(line)]
    result = "\n".join(kept).rstrip()
    return result if result.strip() else text
