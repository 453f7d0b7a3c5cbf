"""Ticket type, department and priority, each decided by a named rule that is recorded."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

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


def classify(
    parsed: ParsedMail,
    settings: ClassifySettings,
    *,
    customer: CustomerView | None,
    own_addresses: frozenset[str],
) -> Classification:
    ticket_type, type_rule = ticket_type_of(parsed, settings)
    priority, priority_reasons = priority_of(parsed, settings, customer)
    return Classification(
        ticket_type=ticket_type,
        type_rule=type_rule,
        department=department_of(parsed, settings, own_addresses),
        priority=priority,
        priority_reasons=priority_reasons,
    )


def ticket_type_of(parsed: ParsedMail, settings: ClassifySettings) -> tuple[TicketType, str]:
    """A subject tag wins; then the keyword table over subject and body; else None."""
    for tag in _TAG.findall(parsed.subject):
        folded = fold(tag).strip()
        for ticket_type, names in SUBJECT_TAGS.items():
            if folded in names:
                return ticket_type, f"subject_tag:[{tag.strip()}]"
    table = _keyword_table(settings)
    subject = fold(parsed.subject)
    body = fold(parsed.body_text[:4000])
    for where, text in (("subject", subject), ("body", body)):
        for ticket_type, words in table.items():
            for word in words:
                if _contains_word(text, word):
                    return ticket_type, f"keyword:{where}:{word}"
    return TicketType.NONE, "no_match"


def _keyword_table(settings: ClassifySettings) -> Mapping[TicketType, tuple[str, ...]]:
    if not settings.type_keywords:
        return DEFAULT_TYPE_KEYWORDS
    table: dict[TicketType, tuple[str, ...]] = {}
    for name, words in settings.type_keywords.items():
        table[TicketType(name)] = tuple(fold(word) for word in words)
    return table


def _contains_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) is not None


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
    reasons: list[str] = []
    priority = Priority.NORMAL
    if customer is not None:
        priority = customer.priority
        reasons.append(f"known_customer:{customer.email}")
    subject = fold(parsed.subject)
    for word in settings.urgent_words:
        if _contains_word(subject, fold(word)):
            reasons.append(f"urgent_word:{word}")
            return Priority.URGENT, tuple(reasons)
    if _header_says_important(parsed) and priority in (Priority.LOW, Priority.NORMAL):
        # A hint, not a command: senders set it freely, so it lifts by one step, never to urgent.
        priority = _PRIORITY_ORDER[_PRIORITY_ORDER.index(priority) + 1]
        reasons.append("importance_header")
    return priority, tuple(reasons)


def _header_says_important(parsed: ParsedMail) -> bool:
    importance = (parsed.header("Importance") or "").strip().lower()
    x_priority = (parsed.header("X-Priority") or "").strip()[:1]
    return importance == "high" or x_priority in ("1", "2")
