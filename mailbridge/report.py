"""Plain-data descriptions of decisions and outcomes, for `inspect`, dry runs and JSON output."""

from __future__ import annotations

from typing import Any, Protocol

from mailbridge.records import Action, Address, Outcome, ParsedMail, Plan, ProcessResult


class AttachmentLike(Protocol):
    """A parsed attachment or a stored attachment row: both describe themselves alike."""

    @property
    def filename(self) -> str: ...
    @property
    def content_type(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def inline(self) -> bool: ...
    @property
    def content_id(self) -> str | None: ...


def attachment_json(attachment: AttachmentLike) -> dict[str, Any]:
    """An attachment as JSON, the same for a parsed part and a stored row."""
    return {
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "size": attachment.size,
        "sha256": attachment.sha256,
        "inline": attachment.inline,
        "content_id": attachment.content_id,
    }


def _addresses(addresses: tuple[Address, ...]) -> list[dict[str, str]]:
    return [{"name": a.name, "email": a.email} for a in addresses]


def predicted_outcome(plan: Plan) -> str:
    """What `process` would make of the message: the name of an Outcome."""
    if plan.decision.verdict.action is Action.REJECT:
        return Outcome.REJECTED.value
    if plan.decision.thread.ticket_number is not None:
        return Outcome.FOLLOW_UP.value
    return Outcome.TICKET_CREATED.value


def describe_parsed(parsed: ParsedMail) -> dict[str, Any]:
    return {
        "from": _addresses((parsed.sender,) if parsed.sender else ()),
        "reply_to": _addresses(parsed.reply_to),
        "to": _addresses(parsed.to),
        "cc": _addresses(parsed.cc),
        "subject": parsed.subject,
        "message_id": parsed.message_id,
        "date": parsed.date.isoformat() if parsed.date else None,
        "body_text": parsed.body_text,
        "attachments": [attachment_json(a) for a in parsed.attachments],
        "omitted": list(parsed.omitted),
        "defects": list(parsed.defects),
    }


def describe_plan(plan: Plan) -> dict[str, Any]:
    """Every decision about one message: verdict, reasons, type, routing, thread, answer."""
    decision = plan.decision
    classification = decision.classification
    verdict = decision.verdict
    answer = "none"
    if not plan.answer_suppressions:
        answer = "cc_rejection" if verdict.action is Action.REJECT else "acknowledgement"
        if predicted_outcome(plan) == Outcome.FOLLOW_UP.value:
            answer = "none"  # one acknowledgement per ticket: follow-ups get none
    return {
        **describe_parsed(decision.parsed),
        "decision": predicted_outcome(plan),
        "action": verdict.action.value,
        "reasons": [{"rule": r.rule, "detail": r.detail} for r in verdict.reasons],
        "ticket_type": classification.ticket_type.value if classification else None,
        "type_rule": classification.type_rule if classification else None,
        "department": classification.department if classification else None,
        "priority": classification.priority.value if classification else None,
        "priority_reasons": list(classification.priority_reasons) if classification else [],
        "language": decision.language,
        "known_customer": plan.customer.email if plan.customer else None,
        "thread": {
            "ticket": decision.thread.ticket_number,
            "how": decision.thread.how,
            "linked_to": decision.thread.linked_number,
        },
        "cc_addresses": [a.email for a in verdict.cc_addresses],
        "answer": answer,
        "answer_suppressed": [
            {"rule": r.rule, "detail": r.detail} for r in plan.answer_suppressions
        ],
    }


def describe_failure(stage: str, error: BaseException) -> dict[str, Any]:
    return {
        "decision": Outcome.QUARANTINED.value,
        "reasons": [{"rule": f"failed_{stage}", "detail": f"{type(error).__name__}: {error}"}],
    }


def describe_result(result: ProcessResult) -> str:
    """One human line for a processed message."""
    if result.duplicate:
        return f"already held (inbound {result.inbound_id}): {result.outcome.value}"
    if result.outcome is Outcome.TICKET_CREATED:
        return f"ticket created {result.ticket_number}"
    if result.outcome is Outcome.FOLLOW_UP:
        return f"joined ticket {result.ticket_number}"
    if result.outcome is Outcome.REJECTED:
        return "rejected (third-party addresses in Cc)"
    return f"still failing at {result.stage}: {result.error}"
