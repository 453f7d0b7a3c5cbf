"""The screen: each rule fires on its own header and nowhere else; the CC modes."""

from __future__ import annotations

import re
from typing import Any

import pytest

from mailbridge.pipeline.screen import SUPPRESSION_RULES, ScreenPolicy, screen
from mailbridge.records import Action, Address, Attachment, ParsedMail, Reason
from mailbridge.settings import AckSettings, CcMode, PolicySettings, Settings

CUSTOMER = Address("Ana Pop", "ana@customer.ro")
SUPPORT = Address("Support", "support@example.com")


def make(**overrides: Any) -> ParsedMail:
    fields: dict[str, Any] = {
        "message_id": "<m1@customer.ro>",
        "subject": "Site-ul nu merge",
        "sender": CUSTOMER,
        "reply_to": (),
        "to": (SUPPORT,),
        "cc": (),
        "date": None,
        "in_reply_to": (),
        "references": (),
        "headers": (),
        "body_text": "Bună ziua",
        "body_html": None,
        "attachments": (),
        "defects": (),
        "size": 100,
    }
    fields.update(overrides)
    return ParsedMail(**fields)


def policy(cc_mode: CcMode = CcMode.REJECT) -> ScreenPolicy:
    return ScreenPolicy(
        cc_mode=cc_mode,
        own_addresses=frozenset({"support@example.com", "office@example.com"}),
        own_domains=frozenset({"example.com", "helpdesk.example.net"}),
        noreply_pattern=re.compile(PolicySettings().noreply_pattern, re.IGNORECASE),
        loop_header_value="mailbridge",
        message_id_domain="mb.example.com",
    )


def rules_hit(parsed: ParsedMail, cc_mode: CcMode = CcMode.REJECT) -> list[str]:
    return [reason.rule for reason in screen(parsed, policy(cc_mode)).suppressions]


def test_a_plain_customer_message_is_accepted_and_acknowledged() -> None:
    verdict = screen(make(), policy())
    assert verdict.action is Action.ACCEPT
    assert verdict.acknowledge is True
    assert verdict.suppressions == ()
    assert verdict.reasons == ()


def test_the_rule_table_has_unique_names() -> None:
    names = [rule.name for rule in SUPPRESSION_RULES]
    assert len(names) == len(set(names)) >= 15


FIRES: list[tuple[str, dict[str, Any]]] = [
    ("auto_submitted", {"headers": (("Auto-Submitted", "auto-replied"),)}),
    ("auto_submitted", {"headers": (("auto-submitted", "auto-generated; owner=x@y"),)}),
    ("precedence", {"headers": (("Precedence", "bulk"),)}),
    ("precedence", {"headers": (("Precedence", "Junk"),)}),
    ("precedence", {"headers": (("Precedence", "list"),)}),
    ("precedence", {"headers": (("Precedence", "auto_reply"),)}),
    ("list_header", {"headers": (("List-Id", "<news.shop.ro>"),)}),
    ("list_header", {"headers": (("List-Unsubscribe", "<mailto:u@shop.ro>"),)}),
    ("x_auto_response_suppress", {"headers": (("X-Auto-Response-Suppress", "All"),)}),
    ("x_auto_response_suppress", {"headers": (("X-Auto-Response-Suppress", "DR, OOF"),)}),
    ("x_auto_response_suppress", {"headers": (("X-Auto-Response-Suppress", "AutoReply"),)}),
    ("x_autoreply", {"headers": (("X-Autoreply", "yes"),)}),
    ("x_autorespond", {"headers": (("X-Autorespond", "vacation"),)}),
    ("x_loop", {"headers": (("X-Loop", "helpdesk@other.ro"),)}),
    ("null_return_path", {"headers": (("Return-Path", "<>"),)}),
    ("null_return_path", {"headers": (("Return-Path", "< >"),)}),
    ("noreply_sender", {"sender": Address("", "MAILER-DAEMON@mx.customer.ro")}),
    ("noreply_sender", {"sender": Address("", "postmaster@customer.ro")}),
    ("noreply_sender", {"sender": Address("Shop", "no-reply@shop.ro")}),
    ("noreply_sender", {"sender": Address("", "noreply@shop.ro")}),
    ("noreply_sender", {"reply_to": (Address("", "do-not-reply@shop.ro"),)}),
    ("delivery_report", {"headers": (("Content-Type", "multipart/report; report-type=x"),)}),
    (
        "delivery_report",
        {"attachments": (Attachment("status", "message/delivery-status", b"Action: failed"),)},
    ),
    ("own_sender", {"sender": Address("", "Office@Example.com")}),
    ("own_sender", {"sender": Address("", "colleague@example.com")}),
    ("own_sender", {"sender": Address("", "desk@helpdesk.example.net")}),
    ("own_loop_header", {"headers": (("X-Mailbridge-Loop", "mailbridge"),)}),
    ("own_loop_header", {"headers": (("X-Mailbridge-Loop", "another-instance"),)}),
    ("own_message_id", {"message_id": "<ack.MB-000001.abcdef@MB.example.com>"}),
    ("unusable_sender", {"sender": Address("", "not an address")}),
    ("no_sender", {"sender": None}),
]


@pytest.mark.parametrize(("rule", "overrides"), FIRES)
def test_each_suppression_rule_fires_on_its_header_alone(
    rule: str, overrides: dict[str, Any]
) -> None:
    verdict = screen(make(**overrides), policy())
    assert [reason.rule for reason in verdict.suppressions] == [rule]
    assert verdict.acknowledge is False
    assert verdict.action is Action.ACCEPT


QUIET: list[dict[str, Any]] = [
    {"headers": (("Auto-Submitted", "no"),)},
    {"headers": (("Auto-Submitted", " No "),)},
    {"headers": (("Precedence", "first-class"),)},
    {"headers": (("X-Auto-Response-Suppress", "DR, NDR, RN, NRN"),)},
    {"headers": (("Return-Path", "<ana@customer.ro>"),)},
    {"headers": (("Content-Type", "multipart/mixed; boundary=x"),)},
    {"headers": (("X-Mailer", "Thunderbird"), ("Listing", "x"))},
    {"sender": Address("", "noreplyfan@customer.ro")},
    {"sender": Address("", "ana@notexample.com")},
    {"sender": Address("", "ana@example.com.evil.ro")},
    # A customer answering our acknowledgement points at our domain: that is a follow-up.
    {
        "in_reply_to": ("<ack.MB-000001.abcdef@mb.example.com>",),
        "references": ("<ack.MB-000001.abcdef@mb.example.com>",),
    },
    {"attachments": (Attachment("shot.png", "image/png", b"\x89PNG"),)},
]


@pytest.mark.parametrize("overrides", QUIET)
def test_ordinary_headers_trigger_nothing(overrides: dict[str, Any]) -> None:
    assert rules_hit(make(**overrides)) == []


def test_no_sender_is_accepted_without_an_answer() -> None:
    verdict = screen(make(sender=None, reply_to=()), policy())
    assert verdict.action is Action.ACCEPT
    assert verdict.acknowledge is False
    assert verdict.suppressions == (Reason("no_sender", "neither From nor Reply-To"),)


def test_reply_to_alone_is_a_sender() -> None:
    verdict = screen(make(sender=None, reply_to=(CUSTOMER,)), policy())
    assert verdict.acknowledge is True


def test_several_rules_are_all_recorded() -> None:
    parsed = make(
        headers=(("Auto-Submitted", "auto-replied"), ("Precedence", "bulk"), ("X-Loop", "x"))
    )
    assert rules_hit(parsed) == ["auto_submitted", "precedence", "x_loop"]


def test_third_party_cc_is_rejected_with_the_addresses() -> None:
    other = Address("Bob", "bob@other.ro")
    verdict = screen(make(cc=(other, SUPPORT)), policy(CcMode.REJECT))
    assert verdict.action is Action.REJECT
    assert verdict.reasons == (Reason("cc_third_party", "bob@other.ro"),)
    assert verdict.cc_addresses == (other,)
    assert verdict.acknowledge is True  # the CC-rejection reply may go out


def test_third_party_cc_flag_mode() -> None:
    other = Address("", "bob@other.ro")
    verdict = screen(make(cc=(other,)), policy(CcMode.FLAG))
    assert verdict.action is Action.FLAG
    assert verdict.cc_addresses == (other,)
    assert verdict.reasons[0].rule == "cc_third_party"


def test_third_party_cc_allow_mode() -> None:
    verdict = screen(make(cc=(Address("", "bob@other.ro"),)), policy(CcMode.ALLOW))
    assert verdict.action is Action.ACCEPT
    assert verdict.reasons == ()


@pytest.mark.parametrize(
    "cc",
    [
        (Address("", "SUPPORT@Example.COM"),),
        (Address("", "billing@example.com"),),
        (Address("", "x@helpdesk.example.net"), Address("", "office@example.com")),
        (Address("Ana", "Ana@Customer.ro"),),  # the sender copying herself
    ],
)
def test_own_addresses_and_the_sender_in_cc_do_not_count(cc: tuple[Address, ...]) -> None:
    verdict = screen(make(cc=cc), policy(CcMode.REJECT))
    assert verdict.action is Action.ACCEPT
    assert verdict.cc_addresses == ()


def test_cc_addresses_are_listed_once_case_insensitively() -> None:
    cc = (Address("", "Bob@Other.ro"), Address("", "bob@other.ro"), Address("", "eve@x.rs"))
    verdict = screen(make(cc=cc), policy())
    assert [a.email for a in verdict.cc_addresses] == ["Bob@Other.ro", "eve@x.rs"]
    assert verdict.reasons[0].detail == "Bob@Other.ro, eve@x.rs"


def test_a_rejected_automatic_message_gets_no_rejection_reply() -> None:
    parsed = make(cc=(Address("", "bob@other.ro"),), headers=(("Precedence", "list"),))
    verdict = screen(parsed, policy())
    assert verdict.action is Action.REJECT
    assert verdict.acknowledge is False
    assert [r.rule for r in verdict.suppressions] == ["precedence"]


def test_policy_from_settings() -> None:
    settings = Settings(
        policy=PolicySettings(
            cc_mode=CcMode.FLAG, own_addresses=["Help@Example.com"], own_domains=["@Corp.RO"]
        ),
        ack=AckSettings(
            from_address="support@example.com",
            message_id_domain="MB.Example.com",
            loop_header_value="mb-prod",
        ),
    )
    built = ScreenPolicy.from_settings(settings)
    assert built.cc_mode is CcMode.FLAG
    assert {"help@example.com", "support@example.com"} <= built.own_addresses
    assert built.own_domains == frozenset({"corp.ro"})
    assert built.message_id_domain == "mb.example.com"
    assert built.loop_header_value == "mb-prod"
    assert built.noreply_pattern.search("MAILER-DAEMON")
