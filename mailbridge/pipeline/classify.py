"""Ticket type, department and priority, each decided by a named rule that is recorded."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from mailbridge.pipeline.textfold import fold
from mailbridge.records import (
    Address,
    Classification,
    CustomerView,
    ParsedMail,
    Priority,
    TicketType,
)
from mailbridge.settings import ClassifySettings

# Subject tags customers are asked to use, folded (see textfold.fold), per type.
SUBJECT_TAGS: Mapping[TicketType, tuple[str, ...]] = {
    TicketType.QUESTION: ("question", "intrebare", "pitanje"),
    TicketType.BUG: ("bug", "eroare", "greska", "problema"),
    TicketType.CONFIGURATION: ("configuration", "config", "configurare", "konfiguracija"),
    TicketType.DEVELOPMENT: ("development", "dezvoltare", "razvoj"),
    TicketType.MODIFICATION: ("modification", "modificare", "izmena", "izmjena", "promena"),
    TicketType.NONE: ("none", "altele", "ostalo"),
}

# Used when settings give no table of their own; folded words, matched as whole words.
DEFAULT_TYPE_KEYWORDS: Mapping[TicketType, tuple[str, ...]] = {
    TicketType.BUG: (
        "error", "bug", "broken", "crash", "not working", "doesn't work", "eroare", "nu merge",
        "nu functioneaza", "greska", "ne radi", "ne funkcionise", "pada",
    ),
    TicketType.CONFIGURATION: (
        "configure", "configuration", "settings", "dns", "mx record", "ssl certificate",
        "configurare", "setari", "podesavanje", "podesavanja", "konfiguracija",
    ),
    TicketType.DEVELOPMENT: (
        "new feature", "develop", "new page", "new module", "integration", "functionalitate noua",
        "dezvoltare", "nova funkcionalnost", "razvoj",
    ),
    TicketType.MODIFICATION: (
        "change", "modify", "update the", "replace", "modificare", "modificati", "schimbati",
        "inlocuiti", "izmena", "izmenite", "promenite", "zamenite",
    ),
    TicketType.QUESTION: (
        "question", "how do i", "how can i", "is it possible", "intrebare", "cum pot",
        "este posibil", "pitanje", "kako da", "da li je moguce",
    ),
}  # fmt: skip

_TAG = re.compile(r"\[([^\[\]#]{1,40})\]")
_PRIORITY_ORDER = (Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.URGENT)


@dataclass(frozen=True, slots=True)
class WordTable:
    """Folded words in the order they are tried, compiled once for whole-word matching."""

    words: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]  # one per word: its boundaries checked where it occurs
    any_word: re.Pattern[str]  # every word in one alternation: one pass says whether any occurs


def _whole(escaped: str) -> str:
    # Not between two word characters; `\w` is Unicode-aware, so a Cyrillic or accented letter
    # left over after folding still counts as part of a word.
    return rf"(?<!\w)(?:{escaped})(?!\w)"


def compile_words(words: Iterable[str]) -> WordTable:
    listed = tuple(words)
    escaped = [re.escape(word) for word in listed]
    return WordTable(
        words=listed,
        patterns=tuple(re.compile(_whole(item)) for item in escaped),
        any_word=re.compile(_whole("|".join(escaped))),
    )


def first_word(text: str, table: WordTable) -> int | None:
    """The index of the first word *in table order* (not text order) found whole in `text`."""
    # Most mail matches nothing: the single alternation settles that in one pass. It cannot
    # rank the hits (it reports the leftmost), so a hit is ranked word by word below.
    if table.any_word.search(text) is None:
        return None
    for index, (word, pattern) in enumerate(zip(table.words, table.patterns, strict=True)):
        if _occurs_whole(text, word, pattern):
            return index
    return None


def _occurs_whole(text: str, word: str, pattern: re.Pattern[str]) -> bool:
    # str.find jumps between occurrences; the pattern only checks the boundaries at each.
    # (A search whose pattern opens with a lookbehind gets no literal-prefix scan in `re`.)
    start = text.find(word)
    while start >= 0:
        if pattern.match(text, start):
            return True
        start = text.find(word, start + 1)
    return False


def classify(
    parsed: ParsedMail,
    settings: ClassifySettings,
    *,
    customer: CustomerView | None,
    own_addresses: frozenset[str],
) -> Classification:
    subject = fold(parsed.subject)  # folded once, read by the type and the priority rules
    ticket_type, type_rule = _ticket_type(parsed, subject, settings)
    priority, priority_reasons = _priority(parsed, subject, settings, customer)
    return Classification(
        ticket_type=ticket_type,
        type_rule=type_rule,
        department=department_of(parsed, settings, own_addresses),
        priority=priority,
        priority_reasons=priority_reasons,
    )


def ticket_type_of(parsed: ParsedMail, settings: ClassifySettings) -> tuple[TicketType, str]:
    """A subject tag wins; then the keyword table over subject and body; else None."""
    return _ticket_type(parsed, fold(parsed.subject), settings)


def _ticket_type(
    parsed: ParsedMail, subject: str, settings: ClassifySettings
) -> tuple[TicketType, str]:
    for tag in _TAG.findall(parsed.subject):
        folded = fold(tag).strip()
        for ticket_type, names in SUBJECT_TAGS.items():
            if folded in names:
                return ticket_type, f"subject_tag:[{tag.strip()}]"
    types, table = _keyword_table(settings)
    index = first_word(subject, table)
    where = "subject"
    if index is None:
        # The body is folded only when the subject says nothing: folding is the costly part.
        index = first_word(fold(parsed.body_text[:4000]), table)
        where = "body"
    if index is None:
        return TicketType.NONE, "no_match"
    return types[index], f"keyword:{where}:{table.words[index]}"


_TypeTable = tuple[tuple[TicketType, ...], WordTable]


def _keyword_table(settings: ClassifySettings) -> _TypeTable:
    if not settings.type_keywords:
        return _DEFAULT_TABLE
    return _settings_table(
        tuple((name, tuple(words)) for name, words in settings.type_keywords.items())
    )


def _type_table(table: Iterable[tuple[TicketType, Iterable[str]]]) -> _TypeTable:
    """Flattened in the order words are tried: type by type, word by word."""
    pairs = [(ticket_type, word) for ticket_type, words in table for word in words]
    return tuple(t for t, _ in pairs), compile_words(word for _, word in pairs)


@lru_cache(maxsize=8)
def _settings_table(table: tuple[tuple[str, tuple[str, ...]], ...]) -> _TypeTable:
    return _type_table((TicketType(name), tuple(fold(w) for w in words)) for name, words in table)


_DEFAULT_TABLE: _TypeTable = _type_table(DEFAULT_TYPE_KEYWORDS.items())


def department_of(
    parsed: ParsedMail, settings: ClassifySettings, own_addresses: frozenset[str]
) -> str:
    """The department of the first address written to that the map knows.

    `support+billing@` is looked up as `billing` first, then as `support`.
    """
    for address in _addressed_to(parsed):
        local, _, domain = address.key.partition("@")
        if not domain:
            continue
        base, _, detail = local.partition("+")
        for candidate in (detail, base):
            if candidate and candidate in settings.departments:
                return settings.departments[candidate]
    return settings.default_department


def _addressed_to(parsed: ParsedMail) -> Iterable[Address]:
    for name in ("Delivered-To", "X-Original-To"):
        for value in parsed.header_values(name):
            yield Address("", value.strip().strip("<>"))
    yield from parsed.to
    yield from parsed.cc


def priority_of(
    parsed: ParsedMail, settings: ClassifySettings, customer: CustomerView | None
) -> tuple[Priority, tuple[str, ...]]:
    return _priority(parsed, fold(parsed.subject), settings, customer)


def _priority(
    parsed: ParsedMail, subject: str, settings: ClassifySettings, customer: CustomerView | None
) -> tuple[Priority, tuple[str, ...]]:
    reasons: list[str] = []
    priority = Priority.NORMAL
    if customer is not None:
        priority = customer.priority
        reasons.append(f"known_customer:{customer.email}")
    words = tuple(settings.urgent_words)
    index = first_word(subject, _urgent_table(words))
    if index is not None:
        reasons.append(f"urgent_word:{words[index]}")
        return Priority.URGENT, tuple(reasons)
    if _header_says_important(parsed) and priority in (Priority.LOW, Priority.NORMAL):
        # A hint, not a command: senders set it freely, so it lifts by one step, never to urgent.
        priority = _PRIORITY_ORDER[_PRIORITY_ORDER.index(priority) + 1]
        reasons.append("importance_header")
    return priority, tuple(reasons)


@lru_cache(maxsize=8)
def _urgent_table(words: tuple[str, ...]) -> WordTable:
    return compile_words(fold(word) for word in words)


def _header_says_important(parsed: ParsedMail) -> bool:
    importance = (parsed.header("Importance") or "").strip().lower()
    x_priority = (parsed.header("X-Priority") or "").strip()[:1]
    return importance == "high" or x_priority in ("1", "2")
