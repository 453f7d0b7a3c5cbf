"""`mailbridge tickets list|show`: tickets with their messages, attachments and acknowledgements."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import click

from mailbridge.cli import Context, fail, main, pass_context, run_async
from mailbridge.cli_admin import emit_json, first_line, iso, print_table, when
from mailbridge.cli_types import LIMIT, SINCE, TICKET_REF
from mailbridge.records import TicketType
from mailbridge.report import attachment_json

if TYPE_CHECKING:
    from mailbridge.adapters.db import queries, ticket_queries

_EXCERPT = 400


@main.group()
def tickets() -> None:
    """Tickets made from mail: list them, show one with everything that belongs to it."""


@tickets.command("list")
@click.option("--status", help="Only tickets with this status (open, …).")
@click.option(
    "--type",
    "ticket_type",
    type=click.Choice([t.value for t in TicketType], case_sensitive=False),
    help="Only tickets of this type.",
)
@click.option("--department", help="Only tickets of this department (case-insensitive).")
@click.option("--since", type=SINCE, help="Created at or after: 2026-05-01, an ISO time, 2h, 3d.")
@click.option("--limit", type=LIMIT, default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array instead of a table.")
@pass_context
@run_async
async def tickets_list(
    context: Context,
    status: str | None,
    ticket_type: str | None,
    department: str | None,
    since: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List tickets, newest first.

    \b
    Examples:
      mailbridge tickets list --status open --type Bug
      mailbridge tickets list --department Billing --since 7d
      mailbridge tickets list --limit 500 --json > tickets.json
    """
    from mailbridge.adapters.db import ticket_queries
    from mailbridge.app import open_app

    async with open_app(context.settings) as app, app.sessions() as session:
        rows = await ticket_queries.list_tickets(
            session,
            status=status,
            ticket_type=ticket_type,
            department=department,
            since=since,
            limit=limit,
        )
    if as_json:
        emit_json([_plain_ticket(t) for t in rows])
        return
    if not rows:
        click.echo("no tickets")
        return
    print_table(
        (
            "Number",
            "Created",
            "Status",
            "Type",
            "Department",
            "Priority",
            "Msgs",
            "From",
            "Subject",
        ),
        (
            (
                t.number,
                when(t.created_at),
                t.status,
                t.ticket_type,
                t.department,
                t.priority,
                t.messages,
                t.requester_email,
                first_line(t.subject, 60) + (" [CC]" if t.cc_flag else ""),
            )
            for t in rows
        ),
    )


def _detail_json(detail: ticket_queries.TicketDetail) -> dict[str, object]:
    return {
        **_plain_ticket(detail.ticket),
        "participants": [{"email": e, "role": r} for e, r in detail.participants],
        "messages": [
            {
                "id": m.id,
                "inbound_id": m.inbound_id,
                "message_id": m.message_id,
                "sender_email": m.sender_email,
                "sender_name": m.sender_name,
                "subject": m.subject,
                "created_at": iso(m.created_at),
                "display_text": m.display_text,
                "attachments": [attachment_json(a) for a in m.attachments],
                "defects": m.defects,
                "omitted": m.omitted,
            }
            for m in detail.messages
        ],
        "acknowledgements": [_plain_outbox(o) for o in detail.outbox],
    }


def _plain_ticket(t: ticket_queries.TicketRecord) -> dict[str, object]:
    return {
        "number": t.number,
        "subject": t.subject,
        "requester_email": t.requester_email,
        "requester_name": t.requester_name,
        "status": t.status,
        "type": t.ticket_type,
        "department": t.department,
        "priority": t.priority,
        "priority_reasons": t.priority_reasons,
        "language": t.language,
        "cc_flag": t.cc_flag,
        "cc_addresses": t.cc_addresses,
        "linked_ticket": t.linked_number,
        "messages": t.messages,
        "created_at": iso(t.created_at),
        "updated_at": iso(t.updated_at),
    }


def _plain_outbox(o: queries.OutboxRecord) -> dict[str, object]:
    return {
        "id": o.id,
        "kind": o.kind,
        "message_id": o.message_id,
        "rcpt_to": o.rcpt_to,
        "state": o.state,
        "attempts": o.attempts,
        "uncertain": o.uncertain,
        "last_error": o.last_error,
        "created_at": iso(o.created_at),
        "next_attempt_at": iso(o.next_attempt_at),
        "sent_at": iso(o.sent_at),
    }


@tickets.command("show")
@click.argument("number", type=TICKET_REF)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@pass_context
@run_async
async def tickets_show(context: Context, number: str, as_json: bool) -> None:
    """Show one ticket: fields, messages, attachments (with sha256), acknowledgements.

    NUMBER is the ticket number (MB-000042) or its numeric id.

    \b
    Examples:
      mailbridge tickets show MB-000042
      mailbridge tickets show MB-000042 --json | jq '.messages[].attachments'
    """
    from mailbridge.adapters.db import ticket_queries
    from mailbridge.app import open_app

    async with open_app(context.settings) as app, app.sessions() as session:
        detail = await ticket_queries.get_ticket(session, number)
    if detail is None:
        fail(f"no ticket {number}")
    if as_json:
        emit_json(_detail_json(detail))
        return
    _print_detail(detail)


def _print_detail(detail: ticket_queries.TicketDetail) -> None:
    t = detail.ticket
    requester = (
        f"{t.requester_name} <{t.requester_email}>" if t.requester_name else t.requester_email
    )
    fields = [
        ("Ticket", f"{t.number}  {t.subject}"),
        ("Status", t.status),
        ("Type", t.ticket_type),
        ("Department", t.department),
        (
            "Priority",
            t.priority + (f" ({', '.join(t.priority_reasons)})" if t.priority_reasons else ""),
        ),
        ("Language", t.language),
        ("Requester", requester),
        ("Created", f"{when(t.created_at)} (updated {when(t.updated_at)})"),
        ("CC flag", ("yes: " + ", ".join(t.cc_addresses)) if t.cc_flag else "no"),
        ("Linked to", t.linked_number or "-"),
        ("Participants", ", ".join(f"{e} ({r})" for e, r in detail.participants) or "-"),
    ]
    for label, value in fields:
        click.echo(f"{label + ':':14}{value}")
    for index, m in enumerate(detail.messages, 1):
        sender = f"{m.sender_name} <{m.sender_email}>" if m.sender_name else m.sender_email
        click.echo(f"\n--- message {index} (inbound {m.inbound_id or '-'}) ---")
        click.echo(f"From:    {sender}")
        click.echo(f"Stored:  {when(m.created_at)}")
        click.echo(f"Subject: {m.subject}")
        excerpt = m.display_text.strip()
        if len(excerpt) > _EXCERPT:
            excerpt = excerpt[:_EXCERPT].rstrip() + " …"
        click.echo("\n".join("  " + line for line in excerpt.splitlines()) or "  (no text)")
        for a in m.attachments:
            inline = ", inline" if a.inline else ""
            click.echo(f"  attachment: {a.filename} ({a.content_type}, {a.size} bytes{inline})")
            click.echo(f"    sha256 {a.sha256}")
        for note in m.omitted:
            click.echo(f"  left out: {note}")
    click.echo("\n--- acknowledgements ---")
    if not detail.outbox:
        click.echo("none")
        return
    print_table(
        ("ID", "Kind", "To", "State", "Tries", "Sent/next", "Last error"),
        (
            (
                o.id,
                o.kind,
                o.rcpt_to,
                o.state + (" (uncertain)" if o.uncertain else ""),
                o.attempts,
                when(o.sent_at if o.state == "sent" else o.next_attempt_at),
                first_line(o.last_error, 80),
            )
            for o in detail.outbox
        ),
    )
