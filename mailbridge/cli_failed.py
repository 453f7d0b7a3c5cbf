"""`mailbridge failed …`: list, show, replay, discard and export messages that made no ticket."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mailbridge.cli import Context, fail, main, pass_context, run_async, run_command
from mailbridge.cli_admin import emit_json, first_line, plain, print_table, when
from mailbridge.cli_types import ID, SINCE, is_row_id
from mailbridge.records import Outcome

if TYPE_CHECKING:
    from mailbridge.adapters.db import queries
    from mailbridge.app import App

KEY_HEADERS = ("From", "To", "Cc", "Subject", "Date", "Message-ID")
PROGRESS_FROM = 5  # messages; fewer finish before a bar would help


def key_headers(head: bytes) -> dict[str, str | None]:
    """The headers an admin recognises a message by, decoded; never raises on bad input."""
    block = head.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    message = message_from_bytes(block + b"\n\n", policy=policy.compat32)
    found: dict[str, str | None] = {}
    for name in KEY_HEADERS:
        value = message.get(name)
        if value is None:
            found[name.lower()] = None
            continue
        try:
            text = str(make_header(decode_header(str(value))))
        except Exception:  # a broken encoded word shows as written
            text = str(value)
        found[name.lower()] = " ".join(text.split())
    return found


def record_json(record: queries.InboundRecord) -> dict[str, Any]:
    data: dict[str, Any] = plain(record)
    data.pop("head", None)
    data.pop("raw", None)
    data["headers"] = key_headers(record.head)
    return data


@main.group()
def failed() -> None:
    """Messages that made no ticket: see why, replay them, or discard them with a reason.

    Exit codes: 0 ok, 1 not found or still failing, 2 bad usage, 75 database away.
    """


def _states(all_states: bool) -> tuple[str, ...]:
    return ("failed", "discarded") if all_states else ("failed",)


@failed.command("list")
@click.option("--since", type=SINCE, help="Received at or after: 2026-05-01, an ISO time, 2h, 3d.")
@click.option(
    "--stage", help="Failed at this stage (parse, screen, thread, classify, persist, store)."
)
@click.option("--error", "error", metavar="SUBSTRING", help="Error or error class contains this.")
@click.option(
    "--all-states",
    is_flag=True,
    help="Also discarded messages (the audit trail) and rejected ones: all that made no ticket.",
)
@click.option("--json", "as_json", is_flag=True, help="A JSON array instead of a table.")
@pass_context
@run_async
async def failed_list(
    context: Context,
    since: datetime | None,
    stage: str | None,
    error: str | None,
    all_states: bool,
    as_json: bool,
) -> None:
    """List failed messages, oldest first (with --all-states: all that made no ticket).

    \b
    Examples:
      mailbridge failed list
      mailbridge failed list --since 2h --stage store
      mailbridge failed list --error UnicodeDecodeError --json
      mailbridge failed list --all-states          # discarded ones too
    """
    from mailbridge.adapters.db import queries
    from mailbridge.app import open_app

    async with open_app(context.settings) as app, app.sessions() as session:
        rows = await queries.list_inbound(
            session,
            app.blobs,
            states=_states(all_states),
            rejected=all_states,
            since=since,
            stage=stage,
            error=error,
        )
    if as_json:
        emit_json([record_json(r) for r in rows])
        return
    if not rows:
        click.echo("no failed messages")
        return
    columns = ["ID", "Received", "Stage", "Tries", "From", "Subject", "Error"]
    if all_states:
        columns.insert(1, "State")
    table = []
    for r in rows:
        headers = key_headers(r.head)
        error_text = r.discard_reason if r.state == "discarded" else r.error
        if r.outcome == Outcome.REJECTED.value:
            error_text = "; ".join(f"{x.get('rule')}: {x.get('detail')}" for x in r.reasons)
        line = [
            r.id,
            when(r.received_at),
            r.stage or "-",
            r.attempts,
            first_line(headers["from"], 40),
            first_line(headers["subject"], 50),
            first_line(f"{r.error_class}: {error_text}" if r.error_class else error_text, 80),
        ]
        if all_states:
            line.insert(1, r.outcome if r.state == "done" else r.state)
        table.append(line)
    print_table(columns, table)
    click.echo(f"{len(rows)} message(s)")


async def _record(app: App, inbound_id: int, *, raw: bool = False) -> queries.InboundRecord:
    from mailbridge.adapters.db import queries

    async with app.sessions() as session:
        record = await queries.get_inbound(session, app.blobs, inbound_id, raw=raw)
    if record is None:
        fail(f"no failed message {inbound_id}")
    if record.state == "done" and record.outcome != Outcome.REJECTED.value:
        ticket = f" {record.ticket_number}" if record.ticket_number else ""
        fail(f"no failed message {inbound_id} (it was processed: {record.outcome}{ticket})")
    return record


@failed.command("show")
@click.argument("inbound_id", metavar="ID", type=ID)
@click.option("--raw", is_flag=True, help="Write the original message (.eml bytes) to stdout.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@pass_context
@run_async
async def failed_show(context: Context, inbound_id: int, raw: bool, as_json: bool) -> None:
    """Show one failed, discarded or rejected message: why, where it came from, its headers.

    \b
    Examples:
      mailbridge failed show 42
      mailbridge failed show 42 --raw > 42.eml
      mailbridge failed show 42 --raw | mailbridge inspect -
    """
    from mailbridge.app import open_app

    async with open_app(context.settings) as app:
        record = await _record(app, inbound_id, raw=raw)
    if raw:
        sys.stdout.buffer.write(record.raw or b"")
        sys.stdout.buffer.flush()
        return
    if as_json:
        emit_json(record_json(record))
        return
    headers = key_headers(record.head)
    where = "pipe (ingest)" if record.source == "pipe" else record.source
    if record.mailbox is not None:
        where = f"IMAP {record.mailbox} UID {record.uid} (UIDVALIDITY {record.uidvalidity})"
    lines = [
        ("ID", str(record.id)),
        ("State", f"{record.state} ({record.outcome or '-'})"),
        ("Stage", record.stage or "-"),
        ("Error", f"{record.error_class or '-'}: {record.error or ''}".rstrip(": ")),
        ("Attempts", str(record.attempts)),
        ("Received", f"{when(record.received_at)} (last try {when(record.updated_at)})"),
        ("Source", where),
        ("Size", f"{record.size} bytes, sha256 {record.sha256}"),
    ]
    if record.state == "discarded":
        lines.append(("Discarded", record.discard_reason or ""))
    lines += [(name, headers[name.lower()] or "-") for name in KEY_HEADERS]
    for rule in record.reasons:
        lines.append(("Reason", f"{rule.get('rule')}: {rule.get('detail')}"))
    for label, value in lines:
        click.echo(f"{label + ':':12} {value}")


@failed.command("discard")
@click.argument("ids", metavar="ID...", nargs=-1, required=True, type=ID)
@click.option("--reason", required=True, help="Why (kept with the message for the audit trail).")
@pass_context
@run_async
async def failed_discard(context: Context, ids: tuple[int, ...], reason: str) -> None:
    """Give up on failed messages, with a reason; they are kept as an audit record.

    Discarded messages leave `failed list`; `failed list --all-states` still shows them,
    and `failed show` and `failed export` still work. All IDs must be failed, or none
    is discarded.

    \b
    Examples:
      mailbridge failed discard 42 --reason "spam, not a customer"
      mailbridge failed discard 42 43 --reason "duplicate of MB-000120"
    """
    from mailbridge.adapters.db import queries
    from mailbridge.app import open_app

    if not reason.strip():
        raise click.BadParameter("must not be empty", param_hint="--reason")
    async with open_app(context.settings) as app, app.sessions.begin() as session:
        states = await queries.inbound_states(session, ids)
        for inbound_id in ids:
            state = states.get(inbound_id)
            if state is None or state == "done":
                fail(f"no failed message {inbound_id}")
            if state != "failed":
                fail(f"message {inbound_id} is already {state}; nothing discarded")
        done = await queries.discard_inbound(session, ids, reason.strip())
    for inbound_id in done:
        click.echo(f"{inbound_id}: discarded ({reason.strip()})")


@failed.command("export")
@click.argument("ids", metavar="ID...", nargs=-1, type=ID)
@click.argument(
    "directory", metavar="DIR", required=False, type=click.Path(path_type=Path, file_okay=False)
)
@pass_context
def failed_export(context: Context, ids: tuple[int, ...], directory: Path | None) -> None:
    """Write `<ID>.eml` (the exact bytes received) and `<ID>.json` (what we know) into DIR.

    DIR is created when missing. Useful for a bug report or to try the message elsewhere.

    \b
    Examples:
      mailbridge failed export 42 /tmp/mail-42
      mailbridge failed export 42 43 ./evidence && ls ./evidence
    """
    directory = _export_target(ids, directory)
    records = run_command(_load(context, ids))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail(f"cannot create {directory}: {error.strerror or error}")
    for record in records:
        eml, meta = directory / f"{record.id}.eml", directory / f"{record.id}.json"
        try:
            eml.write_bytes(record.raw or b"")
            text = json.dumps(record_json(record), ensure_ascii=False, indent=2)
            meta.write_text(text + "\n", encoding="utf-8")
        except OSError as error:
            fail(f"cannot write {error.filename or directory}: {error.strerror or error}")
        click.echo(f"{record.id}: wrote {eml} and {meta}")


def _export_target(ids: tuple[int, ...], directory: Path | None) -> Path:
    """DIR, once both arguments are there; else click's own message naming the missing one."""
    if ids and directory is not None:
        return directory
    # Click fills DIR before ID..., so `export 42` leaves ID... empty: when the lone value
    # reads as an ID, DIR is what is missing.
    ctx = click.get_current_context()
    missing = "directory" if directory is not None and is_row_id(str(directory)) else "ids"
    param = next(p for p in ctx.command.params if p.name == missing)
    raise click.MissingParameter(ctx=ctx, param=param)


async def _load(context: Context, ids: tuple[int, ...]) -> list[queries.InboundRecord]:
    from mailbridge.app import open_app

    async with open_app(context.settings) as app:
        return [await _record(app, inbound_id, raw=True) for inbound_id in ids]
