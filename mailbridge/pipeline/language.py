"""The answer's language: customer record, then Content-Language, then a cheap text guess."""

from __future__ import annotations

import re
from collections import Counter
from itertools import filterfalse
from typing import Final

SUPPORTED: Final = ("ro", "sr", "en")

# Primary subtags that map onto a supported language ("mo" is the retired Moldovan tag).
_ALIASES: Final = {"ro": "ro", "mo": "ro", "sr": "sr", "en": "en"}

# Letters that only one of the supported languages uses (both cedilla and comma forms for ro).
_LETTERS: Final = {"ro": frozenset("ăâîșşțţ"), "sr": frozenset("čćđšž")}

# Short, frequent words; chosen so that no word belongs to two of the sets.
_WORDS: Final = {
    "ro": frozenset(
        {
            "și", "si", "nu", "este", "sunt", "pentru", "care", "vă", "va", "rog",
            "mulțumesc", "multumesc", "bună", "buna", "ziua", "merge", "funcționează",
            "functioneaza", "avem", "aveți", "aveti", "problemă", "acest", "această"
        }
    ),
    "sr": frozenset(
        {
            "hvala", "pozdrav", "molim", "radi", "je", "nije", "za", "kako", "sam",
            "što", "sto", "jer", "može", "moze", "imam", "poštovani", "postovani",
            "dobar", "dan", "sajt"
        }
    ),
    "en": frozenset(
        {
            "the", "and", "is", "are", "please", "thanks", "thank", "hello", "not",
            "working", "with", "for", "our", "we", "you", "this", "that", "have", "can",
            "it"
        }
    ),
}  # fmt: skip

_CYRILLIC: Final = re.compile(r"[\u0400-\u04ff]")
_WORD: Final = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")
_ASCII_LETTER: Final = re.compile(r"[A-Za-z]")
_TAG_SEPARATORS: Final = re.compile(r"[,\s]+")
_SCAN_CHARS: Final = 4000

# The languages a token scores for. Only words the tokenizer can produce are kept, and none in
# Cyrillic: a Cyrillic token scores for Serbian before any word set is looked at.
_LANGUAGES_OF: Final = {
    word: tuple(language for language, words in _WORDS.items() if word in words)
    for word in frozenset().union(*_WORDS.values())
    if _WORD.fullmatch(word) and not _CYRILLIC.search(word)
}


def normalise_tag(tag: str | None) -> str | None:
    """The supported language a tag (or the first usable one in a list) names, else None.

    "ro-RO" → "ro", "sr-Latn-RS" → "sr", "de, en" → "en", "de" → None.
    """
    if not tag:
        return None
    for item in _TAG_SEPARATORS.split(tag):
        primary = item.split(";")[0].replace("_", "-").split("-")[0].strip().lower()
        if primary in _ALIASES:
            return _ALIASES[primary]
    return None


def _unquoted(text: str) -> str:
    """The first few thousand characters, without quoted lines ("> ...")."""
    head = text[: _SCAN_CHARS * 2]
    lines = head.splitlines()
    if ">" in head:  # most mail quotes nothing: no line to look at then
        lines = [line for line in lines if not line.startswith(">")]
    return "\n".join(lines)[:_SCAN_CHARS]


def _word_counts(sample: str) -> Counter[str]:
    """How often each word (as `_WORD` finds them) occurs, each distinct word scored once later.

    No word spans white space, and a chunk between spaces made only of letters is one word:
    the regex only has to look at the chunks with punctuation, digits or hyphens in them.
    """
    chunks = sample.split()
    counts = Counter(filter(str.isalpha, chunks))
    counts.update(_WORD.findall(" ".join(filterfalse(str.isalpha, chunks))))
    return counts


def guess_language(text: str) -> str | None:
    """A guess from the text alone, or None when nothing points anywhere (or it is a tie).

    Scores: one point per known word, one per language-specific letter; a word written in
    Cyrillic counts for Serbian (the only Cyrillic-script language among our customers).
    """
    sample = _unquoted(text).lower()
    scores = dict.fromkeys(SUPPORTED, 0)
    counts = _word_counts(sample)
    for word in counts.keys() & _LANGUAGES_OF.keys():
        for language in _LANGUAGES_OF[word]:
            scores[language] += counts[word]
    if not sample.isascii():  # every marker letter and every Cyrillic letter is outside ASCII
        scores["sr"] += sum(map(counts.__getitem__, filter(_CYRILLIC.search, counts)))
        for language, letters in _LETTERS.items():
            scores[language] += sum(map(sample.count, letters))
    best = max(scores.values())
    leaders = [language for language, score in scores.items() if score == best]
    return leaders[0] if best > 0 and len(leaders) == 1 else None


def choose_language(
    *, customer_language: str | None, content_language: str | None, text: str, default: str
) -> str:
    """One of "ro", "sr", "en": the customer's recorded language, the Content-Language header,
    a guess from the text, then `default` (returned as given)."""
    return (
        normalise_tag(customer_language)
        or normalise_tag(content_language)
        or guess_language(text)
        or default
    )


def is_cyrillic(text: str) -> bool:
    """More Cyrillic than Latin letters in the (unquoted) text."""
    sample = _unquoted(text)
    cyrillic = len(_CYRILLIC.findall(sample))
    latin = len(_ASCII_LETTER.findall(sample))  # the ASCII letters are exactly A-Z, a-z
    return cyrillic > latin


def template_language(language: str, *, text: str = "", tag: str | None = None) -> str:
    """The template variant: "sr-Cyrl" for Serbian asked for in Cyrillic (a tag with the Cyrl
    script subtag, or a Cyrillic text when the tag says nothing of script), else `language`."""
    if language != "sr":
        return language
    subtags = {part.lower() for part in re.split(r"[-_]", tag or "")}
    if "cyrl" in subtags:
        return "sr-Cyrl"
    if "latn" in subtags:
        return "sr"
    return "sr-Cyrl" if is_cyrillic(text) else "sr"
