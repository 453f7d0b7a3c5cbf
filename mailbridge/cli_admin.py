"""Admin command helpers (dates, JSON, tables) and the `outbox` and `customers` commands."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from mailbridge.cli import Context, fail, main, pass_context, run_async, run_command
from mailbridge.cli_mail import read_input
from mailbridge.cli_types import ID, LIMIT

if TYPE_CHECKING:
    from rich.console import Console

    from mailbridge.adapters.db import queries
    from mailbridge.settings import Settings


def plain(value: Any) -> Any:
    """JSON-ready data: dataclasses as objects, datetimes as ISO 8601 (UTC), bytes left out."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: plain(v) for k, v in asdict(value).items() if not isinstance(v, bytes)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items() if not isinstance(v, bytes)}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return iso(value)
    return value


def iso(moment: datetime | None) -> str | None:
    from mailbridge.adapters.db import queries

    moment = queries.aware(moment)
    return moment.astimezone(UTC).isoformat() if moment else None


def when(moment: datetime | None) -> str:
    """A moment for people: local time, to the minute."""
    from mailbridge.adapters.db import queries

    moment = queries.aware(moment)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M %Z") if moment else "-"


def emit_json(data: Any) -> None:
    click.echo(json.dumps(plain(data), ensure_ascii=False, indent=2))


def first_line(text: str | None, limit: int = 100) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def console(*, stderr: bool = False) -> Console:
    """A Rich console on the current stdout (or stderr); plain and wide when not a terminal."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    columns = os.environ.get("COLUMNS", "")
    width = None if tty else max(int(columns), 40) if columns.isdigit() else 200
    return Console(
        file=stream, width=width, no_color=not tty, highlight=False, emoji=False, soft_wrap=False
    )


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text("" if v is None else str(v)) for v in row))
    out = console()
    if out.is_terminal:
        out.print(table)
        return
    with out.capture() as captured:
        out.print(table)
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


@main.group()
def outbox() -> None:
    """Outgoing mail (acknowledgements, CC rejections): list it, retry failed sends."""


@outbox.command("list")
@click.option(
    "--state", type=click.Choice(["pending", "sent", "failed"]), help="Only rows in this state."
)
@click.option("--limit", type=LIMIT, help="At most this many rows.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array instead of a table.")
@pass_context
@run_async
async def outbox_list(
    context: Context, state: str | None, limit: int | None, as_json: bool
) -> None:
    """List outgoing mail with its delivery state and last error.

    \b
    Examples:
      mailbridge outbox list --state failed
      mailbridge outbox list --json | jq '.[] | select(.uncertain)'
    """
    from mailbridge.adapters.db import queries
    from mailbridge.app import open_app

    async with open_app(context.settings) as app, app.sessions() as session:
        rows = await queries.list_outbox(session, state=state, limit=limit)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"no {state + ' ' if state else ''}outgoing mail")
        return
    print_table(
        ("ID", "Kind", "Ticket", "To", "State", "Tries", "Created", "Sent/next", "Last error"),
        (
            (
                r.id,
                r.kind,
                r.ticket_number or "-",
                r.rcpt_to,
                r.state + (" (uncertain)" if r.uncertain else ""),
                r.attempts,
                when(r.created_at),
                when(r.sent_at if r.state == "sent" else r.next_attempt_at),
                first_line(r.last_error, 60),
            )
            for r in rows
        ),
    )


@outbox.command("retry")
@click.argument("ids", metavar="[ID]...", nargs=-1, type=ID)
@click.option("--all", "retry_all", is_flag=True, help="Every failed row.")
@pass_context
@run_async
async def outbox_retry(context: Context, ids: tuple[int, ...], retry_all: bool) -> None:
    """Put failed outgoing mail back in the queue; the daemon (or `run --once`) sends it.

    Attempts start again from zero; the earlier count and last error are kept in the
    row's last error. Sent and pending rows are left alone.

    \b
    Examples:
      mailbridge outbox retry 17 18
      mailbridge outbox retry --all && mailbridge run --once
    """
    from mailbridge.adapters.db import queries
    from mailbridge.app import open_app

    if bool(ids) == retry_all:
        raise click.UsageError("give outbox IDs or --all (not both)")
    async with open_app(context.settings) as app, app.sessions.begin() as session:
        if ids:
            states = await queries.outbox_states(session, ids)
            missing = [i for i in ids if i not in states]
            if missing:
                fail(f"no outbox message {missing[0]}")
            for outbox_id in ids:
                if states[outbox_id] != "failed":
                    click.echo(
                        f"outbox {outbox_id}: {states[outbox_id]}, not failed: nothing to do"
                    )
        retried = await queries.retry_outbox(session, list(ids) if ids else None)
    for outbox_id in retried:
        click.echo(f"outbox {outbox_id}: queued again")
    if retry_all and not retried:
        click.echo("no failed outgoing mail: nothing to do")


@main.group()
def customers() -> None:
    """Known customers: they outrank unknown senders and fix the reply language."""


CUSTOMER_COLUMNS = ("email", "name", "company", "language", "priority")
LANGUAGES = frozenset({"ro", "sr", "en", ""})
PRIORITIES = ("low", "normal", "high", "urgent")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


class CsvError(Exception):
    """A bad CSV row, as `line N, column C: what is wrong`."""


def parse_customers(text: str) -> tuple[list[queries.CustomerRecord], frozenset[str]]:
    """Validate a whole customers CSV; returns the records and the columns it has."""
    from mailbridge.adapters.db import queries

    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header or not any(cell.strip() for cell in header):
        raise CsvError("line 1: no header row (expected " + ",".join(CUSTOMER_COLUMNS) + ")")
    names = [cell.strip().lower() for cell in header]
    for name in names:
        if name not in CUSTOMER_COLUMNS:
            raise CsvError(f"line 1, column {name!r}: unknown column")
    if len(set(names)) != len(names):
        raise CsvError("line 1: a column is named twice")
    if "email" not in names:
        raise CsvError("line 1: no 'email' column")
    records: list[queries.CustomerRecord] = []
    seen: dict[str, int] = {}
    for cells in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(names):
            raise CsvError(f"line {line}: {len(cells)} fields, the header has {len(names)}")
        row = dict(zip(names, (cell.strip() for cell in cells), strict=True))
        email = row["email"].lower()
        if not _EMAIL.match(email) or len(email) > 320:
            raise CsvError(f"line {line}, column email: not an address: {row['email']!r}")
        if email in seen:
            raise CsvError(f"line {line}, column email: {email} already on line {seen[email]}")
        seen[email] = line
        language = row.get("language", "").lower()
        if language not in LANGUAGES:
            raise CsvError(f"line {line}, column language: {language!r} is not one of ro, sr, en")
        priority = row.get("priority", "").lower() or "high"
        if priority not in PRIORITIES:
            raise CsvError(
                f"line {line}, column priority: {priority!r} is not one of {', '.join(PRIORITIES)}"
            )
        for column in ("name", "company"):
            if len(row.get(column, "")) > 255:
                raise CsvError(f"line {line}, column {column}: longer than 255 characters")
        records.append(
            queries.CustomerRecord(
                email=email,
                name=row.get("name", ""),
                company=row.get("company", ""),
                language=language or None,
                priority=priority,
            )
        )
    return records, frozenset(names)


@customers.command("import")
@click.argument("file")  # read here, not checked by click: unreadable is exit 1, as for ingest
@pass_context
def customers_import(context: Context, file: str) -> None:
    """Add or update customers from a CSV file (UTF-8, header row required).

    \b
    Columns: email,name,company,language,priority — only `email` is required.
      language  ro, sr, en, or empty (detect from the mail)
      priority  low, normal, high, urgent; empty means high
    Rows are matched by email, case-insensitively. Columns left out of the file keep
    their current values. One bad row stops the import, naming its line and column;
    nothing is written then.

    \b
    Examples:
      mailbridge customers import customers.csv
      printf 'email,name,priority\\nana@customer.test,Ana,urgent\\n' | mailbridge customers import -
    """
    data = read_input(file)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        fail(f"{file}: line {line}: not UTF-8 text")
    try:
        records, columns = parse_customers(text)
    except (CsvError, csv.Error) as error:
        fail(f"{file}: {error}")
    new, updated = run_command(_upsert(context.settings, records, columns))
    click.echo(f"imported {len(records)} customer(s): {new} new, {updated} updated")


async def _upsert(
    settings: Settings, records: list[queries.CustomerRecord], columns: frozenset[str]
) -> tuple[int, int]:
    from mailbridge.adapters.db import queries
    from mailbridge.app import open_app

    async with open_app(settings) as app, app.sessions.begin() as session:
        return await queries.upsert_customers(session, records, columns)


@customers.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON array instead of a table.")
@pass_context
@run_async
async def customers_list(context: Context, as_json: bool) -> None:
    """List known customers.

    \b
    Examples:
      mailbridge customers list
      mailbridge customers list --json > customers.json
    """
    from mailbridge.adapters.db import queries
    from mailbridge.app import open_app

    async with open_app(context.settings) as app, app.sessions() as session:
        rows = await queries.list_customers(session)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no customers")
        return
    print_table(
        ("Email", "Name", "Company", "Language", "Priority"),
        ((c.email, c.name, c.company, c.language or "-", c.priority) for c in rows),
    )
