"""Acknowledgements and CC rejections: plain-text templates into safe, loop-proof mail bytes."""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

from mailbridge.pipeline.compose import Draft, Mailbox, compose, tidy_body
from mailbridge.pipeline.mailsafe import (
    SUBJECT_LIMIT,
    header_safe,
    normalise_mailbox,
    reference_chain,
    strict_message_id,
)
from mailbridge.pipeline.mailsafe import ack_message_id as ack_message_id  # re-exported
from mailbridge.records import Address, OutgoingMail, ParsedMail
from mailbridge.settings import AckSettings, HoursSettings

TEMPLATE_NAMES: Final = (
    "ack", "ack_after_hours", "ack_urgent", "ack_emergency", "ack_screenshot", "ack_omitted",
    "cc_rejected",
)  # fmt: skip
_DAY_CODES: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class UnsendableAddressError(ValueError):
    """The recipient is missing or not a plain ASCII/IDNA mailbox; no answer can be built."""


class TemplateError(ValueError):
    """A template names an unknown $placeholder or has a stray "$"."""


@dataclass(frozen=True, slots=True)
class Words:
    """The localized words the templates cannot hold: names of days and months, formats."""

    tag: str  # Content-Language
    weekdays: tuple[str, ...]  # Monday first, as in "Monday 30 March"
    range_days: tuple[str, ...]  # as in "Monday to Friday" (Serbian: genitive)
    list_days: tuple[str, ...]  # as in "Monday and Friday" (Serbian: instrumental)
    months: tuple[str, ...]  # as in "30 March" (Serbian: genitive)
    moment: str  # {weekday} {day} {month} {year} {time}
    day_range: str  # {first} {last}
    and_: str
    no_subject: str
    cc_subject: str


_EN_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_RO_DAYS = ("luni", "marți", "miercuri", "joi", "vineri", "sâmbătă", "duminică")
_SR_DAYS = ("ponedeljak", "utorak", "sreda", "četvrtak", "petak", "subota", "nedelja")
_SRC_DAYS = ("понедељак", "уторак", "среда", "четвртак", "петак", "субота", "недеља")

WORDS: Final[Mapping[str, Words]] = {
    "en": Words(
        "en", _EN_DAYS, _EN_DAYS, _EN_DAYS,
        ("January", "February", "March", "April", "May", "June", "July", "August",
         "September", "October", "November", "December"),
        "{weekday} {day} {month} {year} at {time}", "{first} to {last}", " and ",
        "(no subject)", "Not registered as a ticket",
    ),
    "ro": Words(
        "ro", _RO_DAYS, _RO_DAYS, _RO_DAYS,
        ("ianuarie", "februarie", "martie", "aprilie", "mai", "iunie", "iulie", "august",
         "septembrie", "octombrie", "noiembrie", "decembrie"),
        "{weekday}, {day} {month} {year}, ora {time}", "de {first} până {last}", " și ",
        "(fără subiect)", "Mesajul nu a fost înregistrat",
    ),
    "sr": Words(
        "sr-Latn", _SR_DAYS,
        ("ponedeljka", "utorka", "srede", "četvrtka", "petka", "subote", "nedelje"),
        ("ponedeljkom", "utorkom", "sredom", "četvrtkom", "petkom", "subotom", "nedeljom"),
        ("januara", "februara", "marta", "aprila", "maja", "juna", "jula", "avgusta",
         "septembra", "oktobra", "novembra", "decembra"),
        "{weekday}, {day}. {month} {year}. u {time}", "od {first} do {last}", " i ",
        "(bez naslova)", "Poruka nije zavedena kao zahtev",
    ),
    "sr-Cyrl": Words(
        "sr-Cyrl", _SRC_DAYS,
        ("понедељка", "уторка", "среде", "четвртка", "петка", "суботе", "недеље"),
        ("понедељком", "уторком", "средом", "четвртком", "петком", "суботом", "недељом"),
        ("јануара", "фебруара", "марта", "априла", "маја", "јуна", "јула", "августа",
         "септембра", "октобра", "новембра", "децембра"),
        "{weekday}, {day}. {month} {year}. у {time}", "од {first} до {last}", " и ",
        "(без наслова)", "Порука није заведена као захтев",
    ),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class AckContext:
    """Everything an acknowledgement says; `message_key` (default: the ticket number) makes
    its Message-ID, so give follow-up acks a key of their own."""

    ticket_number: str
    subject: str
    requester: Address
    language: str
    received_at: datetime
    next_opening: datetime | None  # None = received in working hours
    urgent: bool
    emergency_phone: str
    ask_for_screenshot: bool  # a Bug with no image attached
    in_reply_to: str | None
    references: tuple[str, ...]
    company: str
    hours_text_inputs: HoursSettings
    message_key: str | None = None
    omitted: tuple[str, ...] = ()  # attachments left out for size: the sender is told


# --- templates ---------------------------------------------------------------------------

_VARIANT: Final = re.compile(r"[a-z]{2,3}(?:-[A-Za-z]{4})?")


def _variants(language: str) -> tuple[str, ...]:
    chain = [language, language.split("-")[0], "en"]
    return tuple(dict.fromkeys(v for v in chain if _VARIANT.fullmatch(v)))


@lru_cache(maxsize=128)
def _packaged(variant: str, name: str) -> str | None:
    resource = resources.files("mailbridge").joinpath("templates", variant, f"{name}.txt")
    return resource.read_text(encoding="utf-8") if resource.is_file() else None


def load_template(name: str, language: str, templates_dir: Path | None) -> tuple[str, str]:
    """(variant, text) of the first of `templates_dir`/<lang>/<name>.txt or the packaged file,
    trying the language, its primary subtag, then English."""
    for variant in _variants(language):
        if templates_dir is not None:
            override = templates_dir / variant / f"{name}.txt"
            if override.is_file():
                return variant, override.read_text(encoding="utf-8")
        if (text := _packaged(variant, name)) is not None:
            return variant, text
    raise TemplateError(f"no template {name!r} for {language!r}")


def _fill(name: str, variant: str, text: str, values: Mapping[str, str]) -> str:
    try:
        return string.Template(text).substitute(values)
    except (KeyError, ValueError) as error:
        raise TemplateError(f"template {variant}/{name}.txt: bad placeholder {error}") from None


def _words(variant: str) -> Words:
    return next((WORDS[v] for v in _variants(variant) if v in WORDS), WORDS["en"])


# --- localized text ----------------------------------------------------------------------


def format_moment(moment: datetime, words: Words, zone: ZoneInfo) -> str:
    if moment.utcoffset() is None:
        raise ValueError("moments must be aware datetimes")
    local = moment.astimezone(zone)
    return words.moment.format(
        weekday=words.weekdays[local.weekday()],
        day=local.day,
        month=words.months[local.month - 1],
        year=local.year,
        time=local.strftime("%H:%M"),
    )


def format_days(working_days: Iterable[str], words: Words) -> str:
    """A run of days as "Monday to Friday", other sets as "Monday, Wednesday and Friday"."""
    indexes = sorted({_DAY_CODES.index(day) for day in working_days if day in _DAY_CODES})
    if len(indexes) >= 3 and indexes == list(range(indexes[0], indexes[-1] + 1)):
        first, last = words.range_days[indexes[0]], words.range_days[indexes[-1]]
        return words.day_range.format(first=first, last=last)
    names = [words.list_days[i] for i in indexes]
    return ", ".join(names[:-1]) + words.and_ + names[-1] if len(names) > 1 else "".join(names)


def _clean_subject(subject: str, ticket_number: str, words: Words) -> str:
    if "[#" in subject:  # compiled only then: every ticket number is new to re's cache
        tag = re.compile(re.escape(f"[#{ticket_number}]"), re.IGNORECASE)
        subject = tag.sub(" ", subject)
    return header_safe(subject) or words.no_subject


# --- composing ---------------------------------------------------------------------------


def _recipient(address: Address | None) -> Mailbox:
    email = normalise_mailbox(address.email) if address is not None else None
    if address is None or email is None:
        raise UnsendableAddressError(f"no usable recipient address: {address!r}")
    return Mailbox(header_safe(address.name, 100), email)


@lru_cache(maxsize=16)
def _sender(from_name: str, from_address: str, loop_value: str) -> tuple[Mailbox, str]:
    """The From mailbox and loop-header value: the same for every answer of one setup."""
    sender = normalise_mailbox(from_address)
    if sender is None:
        raise ValueError(f"ack.from_address {from_address!r} is not a usable address")
    return Mailbox(header_safe(from_name, 100), sender), header_safe(loop_value, 100)


def _compose(
    *,
    ack: AckSettings,
    to: Mailbox,
    subject: str,
    body: str,
    date: datetime,
    message_id: str,
    in_reply_to: str | None,
    references: tuple[str, ...],
    content_language: str,
) -> bytes:
    sender, loop_value = _sender(ack.from_name, ack.from_address, ack.loop_header_value)
    draft = Draft(
        sender=sender,
        to=to,
        subject=subject,
        date=date,
        message_id=message_id,
        in_reply_to=strict_message_id(in_reply_to),
        references=references,
        loop_value=loop_value or "mailbridge",
        content_language=content_language,
        body=body,
    )
    return compose(draft)


def _envelope_sender(ack: AckSettings) -> str:
    return ack.envelope_sender if ack.envelope_sender is not None else ack.from_address


def render_ack(
    ctx: AckContext,
    ack: AckSettings,
    *,
    templates_dir: Path | None = None,
    now: datetime | None = None,
) -> OutgoingMail:
    """The acknowledgement of a new ticket; Date is `now`, else `ctx.received_at`."""
    to = _recipient(ctx.requester)
    variant, main = load_template("ack", ctx.language, templates_dir)
    words = _words(variant)
    hours = ctx.hours_text_inputs
    zone = ZoneInfo(hours.timezone)
    number = header_safe(ctx.ticket_number, 64)
    subject = _clean_subject(ctx.subject, number, words)
    phone = header_safe(ctx.emergency_phone, 64)
    values = {
        "ticket_number": number,
        "subject": subject,
        "company": header_safe(ctx.company, 100),
        "requester_name": to.display_name,
        "requester_email": to.addr_spec,
        "support_address": ack.from_address,
        "received_at": format_moment(ctx.received_at, words, zone),
        "days": format_days(hours.working_days, words),
        "open": hours.open.strftime("%H:%M"),
        "close": hours.close.strftime("%H:%M"),
        "timezone": hours.timezone,
        "next_opening": format_moment(ctx.next_opening, words, zone) if ctx.next_opening else "",
        "emergency_phone": phone,
        "omitted": "; ".join(header_safe(item, 200) for item in ctx.omitted[:20]),
    }
    wanted = {
        "after_hours": ctx.next_opening is not None,
        "urgent": ctx.urgent and bool(phone),
        "emergency": not ctx.urgent and bool(phone),
        "screenshot": ctx.ask_for_screenshot,
        "omitted_note": bool(ctx.omitted),
    }
    values.update(dict.fromkeys(wanted, ""))
    for block, shown in wanted.items():
        if shown:
            name = f"ack_{block.removesuffix('_note')}"
            values[block] = _fill(name, *load_template(name, variant, templates_dir), values)
    body = tidy_body(_fill("ack", variant, main, values))
    message_id = ack_message_id("ack", ctx.message_key or ctx.ticket_number, ack.message_id_domain)
    data = _compose(
        ack=ack,
        to=to,
        subject=f"[#{number}] {subject}",
        body=body,
        date=now or ctx.received_at,
        message_id=message_id,
        in_reply_to=ctx.in_reply_to,
        references=reference_chain(ctx.references, ctx.in_reply_to),
        content_language=words.tag,
    )
    return OutgoingMail("ack", message_id, _envelope_sender(ack), (to.addr_spec,), data)


def _rejection_key(parsed: ParsedMail) -> str:
    if (message_id := strict_message_id(parsed.message_id)) is not None:
        return message_id
    sender = parsed.requester.key if parsed.requester else ""
    date = parsed.date.isoformat() if parsed.date else ""
    content = "\0".join((sender, parsed.subject, date, str(parsed.size), parsed.body_text))
    return hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()


def render_cc_rejection(
    *,
    parsed: ParsedMail,
    cc: tuple[Address, ...],
    language: str,
    ack: AckSettings,
    support_address: str,
    templates_dir: Path | None = None,
    now: datetime | None = None,
) -> OutgoingMail:
    """The polite "write again without CC" answer, to Reply-To or From; no ticket number.
    Date is `now`, else the current time."""
    to = _recipient(parsed.reply_address)
    variant, main = load_template("cc_rejected", language, templates_dir)
    words = _words(variant)
    original = header_safe(parsed.subject) or words.no_subject
    values = {
        "subject": original,
        "cc_list": "\n".join(f"    {header_safe(a.email, 254)}" for a in cc) or "    -",
        "support_address": header_safe(support_address, 254),
        "company": header_safe(ack.company, 100),
        "requester_name": to.display_name,
        "requester_email": to.addr_spec,
    }
    body = tidy_body(_fill("cc_rejected", variant, main, values))
    message_id = ack_message_id("cc-rejected", _rejection_key(parsed), ack.message_id_domain)
    data = _compose(
        ack=ack,
        to=to,
        subject=header_safe(f"{words.cc_subject}: {original}", SUBJECT_LIMIT + 40),
        body=body,
        date=now or datetime.now(UTC),
        message_id=message_id,
        in_reply_to=parsed.message_id,
        references=reference_chain(parsed.references, parsed.message_id),
        content_language=words.tag,
    )
    return OutgoingMail("cc_rejected", message_id, _envelope_sender(ack), (to.addr_spec,), data)


def check_templates(templates_dir: Path | None = None) -> list[str]:
    """Every template of every language (packaged and overridden) filled with sample values;
    the problems found, for `mailbridge config check`."""
    variants = set(WORDS)
    if templates_dir is not None and templates_dir.is_dir():
        variants |= {p.name for p in templates_dir.iterdir() if _VARIANT.fullmatch(p.name)}
    sample = dict.fromkeys(
        ("ticket_number", "subject", "company", "requester_name", "requester_email",
         "support_address", "received_at", "days", "open", "close", "timezone",
         "next_opening", "emergency_phone", "after_hours", "urgent", "emergency",
         "screenshot", "cc_list", "omitted", "omitted_note"),
        "x",
    )  # fmt: skip
    problems = []
    for variant in sorted(variants):
        for name in TEMPLATE_NAMES:
            try:
                _fill(name, *load_template(name, variant, templates_dir), sample)
            except TemplateError as error:
                problems.append(str(error))
    return problems
