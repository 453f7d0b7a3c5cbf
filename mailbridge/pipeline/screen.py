"""The screen: a table of small named rules deciding accept/flag/reject and whether to answer."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple

from mailbridge.pipeline.mailsafe import LOOP_HEADER, normalise_mailbox
from mailbridge.records import Action, Address, ParsedMail, Reason, Verdict
from mailbridge.settings import CcMode, Settings


@dataclass(frozen=True, slots=True)
class ScreenPolicy:
    """What the screen needs from the settings, in comparison form (lower case, compiled)."""

    cc_mode: CcMode
    own_addresses: frozenset[str]
    own_domains: frozenset[str]
    noreply_pattern: re.Pattern[str]
    loop_header_value: str
    message_id_domain: str

    @classmethod
    def from_settings(cls, settings: Settings) -> ScreenPolicy:
        return cls(
            cc_mode=settings.policy.cc_mode,
            own_addresses=frozenset(a.strip().lower() for a in settings.own_addresses),
            own_domains=frozenset(
                d.strip().lstrip("@").lower() for d in settings.policy.own_domains if d.strip()
            ),
            noreply_pattern=re.compile(settings.policy.noreply_pattern, re.IGNORECASE),
            loop_header_value=settings.ack.loop_header_value,
            message_id_domain=settings.ack.message_id_domain.strip().lower(),
        )


Check = Callable[[ParsedMail, ScreenPolicy], str | None]


class Rule(NamedTuple):
    """A named predicate: `check` returns what it saw when the rule fires, else None."""

    name: str
    check: Check


# --- helpers -----------------------------------------------------------------------------


def _domain(email: str) -> str:
    return email.rpartition("@")[2].strip().lower()


def _local(email: str) -> str:
    local, at, domain = email.strip().rpartition("@")
    return local if at else domain


def is_own(email: str, policy: ScreenPolicy) -> bool:
    """Ours: one of our addresses, or at one of our domains (or a subdomain of one)."""
    key = email.strip().lower()
    if key in policy.own_addresses:
        return True
    domain = _domain(key)
    return any(domain == d or domain.endswith("." + d) for d in policy.own_domains)


def _senders(parsed: ParsedMail) -> tuple[Address, ...]:
    """Every address an automatic answer could go to: From and Reply-To."""
    found = ((parsed.sender,) if parsed.sender else ()) + parsed.reply_to
    return tuple({a.key: a for a in found}.values())


def _tokens(values: Iterable[str]) -> set[str]:
    """Header values split into lower-case tokens at commas, semicolons and white space."""
    return {t for v in values for t in re.split(r"[\s,;]+", v.strip().lower()) if t}


def third_party_cc(parsed: ParsedMail, policy: ScreenPolicy) -> tuple[Address, ...]:
    """Cc addresses that are neither ours nor the sender's own, once each."""
    senders = {a.key for a in _senders(parsed)}
    seen: dict[str, Address] = {}
    for address in parsed.cc:
        key = address.key
        if key and key not in senders and not is_own(key, policy):
            seen.setdefault(key, address)
    return tuple(seen.values())


# --- suppression rules: the message goes on, but nothing is sent back automatically --------


def no_sender(parsed: ParsedMail, policy: ScreenPolicy) -> str | None:
    return "neither From nor Reply-To" if not _senders(parsed) else None


def unusable_sender(parsed: ParsedMail, policy: ScreenPolicy) -> str | None:
    bad = [a.email for a in _senders(parsed) if normalise_mailbox(a.email) is None]
    return ", ".join(bad) or None


def auto_submitted(parsed: ParsedMail, policy: ScreenPolicy) -> str | None:
    # RFC 3834 §5: any value but "no" (parameters after ";" do not change the keyword).
    for value in parsed.header_values("Auto-Submitted"):
        if value.split(";")[0].strip().lower() != "no":
            return value.strip()
    return None


_BULK_PRECEDENCE: Final = frozenset({"bulk", "junk", "list", "auto_reply"})


def precedence(parsed: ParsedMail, policy: ScreenPolicy) -> str | None:
    hits = _tokens(parsed.header_values("Precedence")) & _BULK_PRECEDENCE
    return ", ".join(sorted(hits)) or None


def list_header(parsed: ParsedMail, policy: ScreenPolicy) -> str | None:
    # RFC 2369 / 2919: List-Id, List-Unsubscribe, List-Post ... mean a mailing list sent it.
    names = sorted({name for name, _ in parsed.headers if name.lower().startswith("list-")})
    return ", ".join(names) or None


_SUPPRESS_TOKENS: Final = frozenset({"all", "oof", "autoreply"})


def auto_response_suppress(parsed: ParsedMail, policy: ScreenPolicy) -> str | None:
    # Microsoft's [MS-OXCMAIL] 2.2.3.2.14: the sender asks for no automatic replies.
    hits = _tokens(parsed.header_values("X-Auto-Response-Suppress")) & _SUPPRESS_TOKENS
    return ", ".join(sorted(hits)) or None


def _present(header: str) -> Check:
    def check(parsed: ParsedMail, policy: ScreenPolicy) -> str | None:
        values = parsed.header_values(header)
        return (values[0].strip() or "(empty)") if values else None

    check.__name__ = "present_" + header.lower().replace("-", "_")
    return check


def null_return_path(parsed: ParsedMail, policy: ScreenPolicy) -> str | None:
    # A null reverse-path (RFC 5321 §4.5.5) marks bounces and other automatic mail.
    for value in parsed.header_values("Return-Path"):
        if re.sub(r"\s+", "", value) == "<>":
            return "<>"
    return None


def noreply_sender(parsed: ParsedMail, policy: ScreenPolicy) -> str | None:
    hits = [a.email for a in _senders(parsed) if policy.noreply_pattern.search(_local(a.email))]
    return ", ".join(hits) or None


_REPORT_TYPES: Final = ("multipart/report", "message/delivery-status")


def delivery_report(parsed: ParsedMail, policy: ScreenPolicy) -> str | None:
    # RFC 6522 reports (DSNs, MDNs, feedback reports) and bare delivery-status parts.
    types = [v.split(";")[0].strip().lower() for v in parsed.header_values("Content-Type")]
    types += [a.content_type.split(";")[0].strip().lower() for a in parsed.attachments]
    for content_type in types:
        if content_type in _REPORT_TYPES:
            return content_type
    return None


def own_sender(parsed: ParsedMail, policy: ScreenPolicy) -> str | None:
    hits = [a.email for a in _senders(parsed) if is_own(a.email, policy)]
    return ", ".join(hits) or None


def own_loop_header(parsed: ParsedMail, policy: ScreenPolicy) -> str | None:
    values = parsed.header_values(LOOP_HEADER)
    if not values:
        return None
    value = values[0].strip()
    return f"{value} (ours)" if value == policy.loop_header_value else value or "(empty)"


def own_message_id(parsed: ParsedMail, policy: ScreenPolicy) -> str | None:
    if not parsed.message_id or not policy.message_id_domain:
        return None
    domain = parsed.message_id.strip().strip("<>").rpartition("@")[2].strip().lower()
    return parsed.message_id.strip() if domain == policy.message_id_domain else None


#: Rules that stop every automatic answer (the ack and the CC rejection), in report order.
SUPPRESSION_RULES: Final[tuple[Rule, ...]] = (
    Rule("no_sender", no_sender),
    Rule("unusable_sender", unusable_sender),
    Rule("auto_submitted", auto_submitted),
    Rule("precedence", precedence),
    Rule("list_header", list_header),
    Rule("x_auto_response_suppress", auto_response_suppress),
    Rule("x_autoreply", _present("X-Autoreply")),
    Rule("x_autorespond", _present("X-Autorespond")),
    Rule("x_loop", _present("X-Loop")),
    Rule("null_return_path", null_return_path),
    Rule("noreply_sender", noreply_sender),
    Rule("delivery_report", delivery_report),
    Rule("own_sender", own_sender),
    Rule("own_loop_header", own_loop_header),
    Rule("own_message_id", own_message_id),
)

#: What third-party Cc addresses lead to, by the configured mode.
CC_ACTIONS: Final[dict[CcMode, Action]] = {
    CcMode.REJECT: Action.REJECT,
    CcMode.FLAG: Action.FLAG,
    CcMode.ALLOW: Action.ACCEPT,
}


def screen(parsed: ParsedMail, policy: ScreenPolicy) -> Verdict:
    """Run every rule; the action comes from the CC rule, the answer from the suppressions."""
    suppressions = tuple(
        Reason(rule.name, detail)
        for rule in SUPPRESSION_RULES
        if (detail := rule.check(parsed, policy)) is not None
    )
    cc = third_party_cc(parsed, policy)
    action = CC_ACTIONS[policy.cc_mode] if cc else Action.ACCEPT
    if action is Action.ACCEPT:
        return Verdict(Action.ACCEPT, acknowledge=not suppressions, suppressions=suppressions)
    reason = Reason("cc_third_party", ", ".join(a.email for a in cc))
    return Verdict(
        action,
        reasons=(reason,),
        acknowledge=not suppressions,
        suppressions=suppressions,
        cc_addresses=cc,
    )
