"""`mailbridge ingest` (MTA pipe or saved .eml) and `mailbridge inspect` (decisions, no writes)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mailbridge.cli import (
    EXIT_ERROR,
    EXIT_TEMPFAIL,
    Context,
    error_line,
    fail,
    main,
    pass_context,
    run_async,
    run_command,
)
from mailbridge.errors import TransientError
from mailbridge.records import Intake
from mailbridge.report import describe_failure, describe_plan, describe_result

if TYPE_CHECKING:
    from mailbridge.settings import Settings


def read_input(name: str) -> bytes:
    """The bytes of a file argument, `-` being standard input; a one-line error otherwise."""
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as error:
        fail(f"cannot read {name}: {error.strerror or error}")


@main.command()
@click.argument("files", nargs=-1, required=True)
@pass_context
def ingest(context: Context, files: tuple[str, ...]) -> None:
    """Process messages from files or standard input (`-`), as an MTA pipe would.

    \b
    Examples:
      mailbridge ingest -                      # Postfix pipe: the message on stdin
      mailbridge ingest saved/*.eml

    Exit 0 once every message is stored (as a ticket, follow-up, rejection or quarantined
    record); 75 (EX_TEMPFAIL) when the database or disk is away, so the MTA retries later;
    1 when a file cannot be read, or an input is empty (the others are still stored).
    """
    inputs = [(_label(name), read_input(name)) for name in files]
    messages = [(label, data) for label, data in inputs if data and not data.isspace()]
    for label, data in inputs:
        if not data or data.isspace():
            error_line(f"{label}: empty input, nothing stored")
    if messages:
        run_command(_store(context.settings, messages))
    if len(messages) < len(inputs):
        raise SystemExit(EXIT_ERROR)  # not ctx.exit(): see `health`


def _label(name: str) -> str:
    return "stdin" if name == "-" else name


async def _store(settings: Settings, messages: list[tuple[str, bytes]]) -> None:
    from mailbridge.app import open_app

    try:
        async with open_app(settings) as app:
            for label, data in messages:
                result = await app.processor.process(Intake(data, "pipe"))
                click.echo(f"{label}: {describe_result(result)}")
    except TransientError as error:
        fail(f"temporary failure, message not stored, retry later: {error}", EXIT_TEMPFAIL)


async def _scratch_settings(settings: Settings, directory: str) -> Settings:
    """An empty, migrated SQLite beside the real one, for inspecting before `db upgrade`."""
    from mailbridge.adapters.db.engine import make_engine, upgrade
    from mailbridge.settings import DatabaseSettings

    url = f"sqlite+aiosqlite:///{Path(directory) / 'inspect.db'}"
    engine = make_engine(url)
    try:
        await upgrade(engine, url)
    finally:
        await engine.dispose()
    return settings.model_copy(update={"database": DatabaseSettings(url=url)})


def _database_missing(settings: Settings) -> bool:
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    return url.get_backend_name() == "sqlite" and not Path(url.database or "").exists()


@main.command()
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@pass_context
@run_async
async def inspect(context: Context, file: str, as_json: bool) -> None:
    """Show every decision for one message, with no side effect: no write, no mail.

    \b
    Examples:
      mailbridge inspect message.eml
      mailbridge inspect --json - < message.eml

    Uses the daemon's own pipeline, reading tickets and customers for threading and
    priority. Exit 0 whenever a decision was made (rejection and quarantine included).
    """
    from mailbridge.app import open_app

    data = read_input(file)
    settings = context.settings
    with tempfile.TemporaryDirectory(prefix="mailbridge-inspect-") as scratch:
        if _database_missing(settings):
            # No database yet: decide against an empty one rather than create a file.
            settings = await _scratch_settings(settings, scratch)
        async with open_app(settings) as app:
            try:
                plan = await app.processor.preview(data)
            except TransientError:
                raise
            except Exception as error:
                report = describe_failure("inspect", error)
            else:
                report = describe_plan(plan)
                if report["answer"] == "acknowledgement":
                    mail = app.processor.render_ack(plan.decision, "NEW")
                    report["acknowledgement"] = mail.data.decode("utf-8", "replace")
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False, indent=2))
        return
    _print_report(report)


def _print_report(report: dict[str, object]) -> None:
    order = (
        "decision", "reasons", "from", "to", "cc", "subject", "message_id", "ticket_type",
        "type_rule", "department", "priority", "priority_reasons", "language", "known_customer",
        "thread", "answer", "answer_suppressed", "attachments", "omitted", "defects",
    )  # fmt: skip
    for key in order:
        if key in report:
            click.echo(f"{key:18} {json.dumps(report[key], ensure_ascii=False)}")
    if "acknowledgement" in report:
        click.echo("\n--- acknowledgement that would be sent ---")
        click.echo(str(report["acknowledgement"]))
