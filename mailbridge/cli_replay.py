"""`mailbridge failed replay`: run failed messages again, or say what a replay would do."""

from __future__ import annotations

import os
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mailbridge.cli import EXIT_ERROR, Context, fail, pass_context, run_async
from mailbridge.cli_admin import console, first_line
from mailbridge.cli_failed import PROGRESS_FROM, failed
from mailbridge.cli_types import ID, SINCE
from mailbridge.errors import TransientError
from mailbridge.records import Outcome
from mailbridge.report import describe_plan, describe_result, predicted_outcome

if TYPE_CHECKING:
    from mailbridge.adapters.db import queries
    from mailbridge.app import App


def _store_problem(root: Path) -> str | None:
    """Why attachments could not be written under `root` now, or None (for dry runs)."""
    path = root
    while not path.exists() and path != path.parent:
        path = path.parent
    where = f"attachment store {root}" + ("" if path == root else f": {path}")
    if not path.is_dir():
        return f"{where} is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{where} is not writable"
    return None


async def _predict(app: App, record: queries.InboundRecord) -> tuple[str, bool]:
    """(what replaying would do, whether it would still fail), writing nothing."""
    try:
        plan = await app.processor.preview(record.raw or b"")
    except TransientError:
        raise
    except Exception as error:  # the prediction: it fails again
        return f"would still fail: {type(error).__name__}: {first_line(str(error), 200)}", True
    outcome = predicted_outcome(plan)
    report = describe_plan(plan)
    if outcome != Outcome.REJECTED.value and plan.decision.parsed.attachments:
        problem = _store_problem(app.blobs.root)
        if problem:
            return f"would still fail at store: {problem}", True
    if outcome == Outcome.REJECTED.value:
        rules = ", ".join(r["rule"] for r in report["reasons"]) or "policy"
        return f"would be rejected ({rules})", False
    if outcome == Outcome.FOLLOW_UP.value:
        return f"would join ticket {report['thread']['ticket']}", False
    return (
        f"would create a ticket ({report['ticket_type']}, {report['department']}, "
        f"priority {report['priority']})",
        False,
    )


async def _targets(
    app: App,
    ids: tuple[int, ...],
    since: datetime | None,
    stage: str | None,
    error: str | None,
) -> list[queries.InboundRecord]:
    from mailbridge.adapters.db import queries

    async with app.sessions() as session:
        if not ids:
            return await queries.list_inbound(
                session, app.blobs, since=since, stage=stage, error=error
            )
        records = []
        for inbound_id in ids:
            record = await queries.get_inbound(session, app.blobs, inbound_id)
            if record is None:
                fail(f"no failed message {inbound_id}")
            records.append(record)
        return records


@failed.command("replay")
@click.argument("ids", metavar="[ID]...", nargs=-1, type=ID)
@click.option("--all", "replay_all", is_flag=True, help="Every failed message.")
@click.option("--since", type=SINCE, help="Failed messages received since (2h, 3d, a date).")
@click.option("--stage", help="Only failed messages that failed at this stage.")
@click.option("--error", metavar="SUBSTRING", help="Only failed messages whose error has this.")
@click.option("--dry-run", is_flag=True, help="Show what each would become; write nothing.")
@pass_context
@run_async
async def failed_replay(
    context: Context,
    ids: tuple[int, ...],
    replay_all: bool,
    since: datetime | None,
    stage: str | None,
    error: str | None,
    dry_run: bool,
) -> None:
    """Run failed messages through the pipeline again, from their stored bytes (no IMAP).

    Each becomes a ticket, joins one, is rejected, or stays failed with its new error.
    Messages that are no longer failed are skipped. A message that came from IMAP keeps
    its copy in the quarantine folder; the ticket does not depend on it.

    \b
    Examples:
      mailbridge failed replay 42 43
      mailbridge failed replay --all --dry-run
      mailbridge failed replay --since 1d --stage store

    Exit 0 when every message replayed (or, with --dry-run, was predicted), 1 when any is
    still failing, 75 when the database is away.
    """
    from rich.progress import Progress

    from mailbridge.app import open_app

    selecting = replay_all or since is not None or stage is not None or error is not None
    if bool(ids) == selecting:
        raise click.UsageError("give message IDs, or --all / --since / --stage / --error")
    settings = context.settings
    async with open_app(settings) as app:
        targets = await _targets(app, ids, since, stage, error)
        if not targets:
            click.echo("no failed messages: nothing to do")
            return
        tally: Counter[str] = Counter()
        with Progress(
            console=console(stderr=True),
            transient=True,
            disable=len(targets) < PROGRESS_FROM or not sys.stderr.isatty(),
        ) as progress:
            task = progress.add_task("replaying" if not dry_run else "checking", total=len(targets))
            for record in targets:
                line, kind = await _replay_one(app, record, dry_run)
                tally[kind] += 1
                click.echo(f"{record.id}: {line}")
                progress.advance(task)
    if dry_run:
        click.echo(f"dry run: nothing written ({_summary(tally)})")
    elif len(targets) > 1:
        click.echo(f"replayed {len(targets)}: {_summary(tally)}")
    if tally["still failing"] and not dry_run:
        fail(f"{tally['still failing']} message(s) still failing", EXIT_ERROR)


async def _replay_one(app: App, record: queries.InboundRecord, dry_run: bool) -> tuple[str, str]:
    """One message's line and its kind for the summary."""
    from mailbridge.adapters.db import queries

    if record.state != "failed":
        outcome = record.outcome or record.state
        ticket = f" {record.ticket_number}" if record.ticket_number else ""
        return f"{record.state} ({outcome}{ticket}), not failed: nothing to do", "skipped"
    if record.size == 0:  # the server never gave its bytes (see record_unreadable)
        folder = app.settings.imap.quarantine_folder
        return f"no bytes to replay; its copy is in the IMAP folder {folder}", "still failing"
    try:
        if dry_run:
            async with app.sessions() as session:
                full = await queries.get_inbound(session, app.blobs, record.id, raw=True)
            line, failing = await _predict(app, full or record)
            return line, "would still fail" if failing else "would replay"
        result = await app.processor.replay(record.id)
    except (LookupError, ValueError) as error:  # replayed or discarded meanwhile
        return f"{error}: nothing to do", "skipped"
    except OSError as error:  # its raw bytes are gone from the attachment store
        return f"cannot replay: {error}", "still failing"
    line = describe_result(result)
    if result.outcome is Outcome.QUARANTINED:
        return line, "still failing"
    if record.mailbox is not None:
        folder = app.settings.imap.quarantine_folder
        line += f" (its IMAP copy stays in {folder}; that is fine)"
    return line, result.outcome.value


_KINDS = {
    Outcome.TICKET_CREATED.value: "made a ticket",
    Outcome.FOLLOW_UP.value: "joined a ticket",
    Outcome.REJECTED.value: "rejected",
}


def _summary(tally: Counter[str]) -> str:
    return ", ".join(f"{count} {_KINDS.get(kind, kind)}" for kind, count in sorted(tally.items()))
