"""The `mailbridge` command: run, db upgrade, config check; admin commands register here too."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar

import click

from mailbridge import __version__
from mailbridge.errors import TransientError

if TYPE_CHECKING:
    from mailbridge.settings import Settings

# Start-up cost is per message under an MTA pipe (`ingest -`), and `--help` or `config check`
# should not pay for a database driver: this module and the command modules import only
# click and light helpers at the top; each command imports what it uses (SQLAlchemy,
# pydantic settings, structlog, the daemon, the IMAP and SMTP clients) in its body.
# tests/unit/test_startup.py keeps it that way.

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TEMPFAIL = 75  # sysexits.h EX_TEMPFAIL: an MTA keeps the message and retries

T = TypeVar("T")


class CommandError(click.ClickException):
    """A one-line error for the user, with the exit code it deserves."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        # click 8.5 types `exit_code` as a class variable: keep ours on the instance apart.
        self.status = exit_code


def fail(message: str, exit_code: int = EXIT_ERROR) -> NoReturn:
    raise CommandError(message, exit_code)


class OneLineErrors(click.Group):
    """Errors print as one line, `mailbridge: error: …`, never a usage dump or a traceback."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except click.exceptions.Abort:
            click.echo("mailbridge: aborted", err=True)
            sys.exit(EXIT_ERROR)
        except _NO_ARGS_IS_HELP as error:
            # A bare group (`mailbridge`, `mailbridge db`): its help, readable, and click's code.
            click.echo(error.format_message(), err=True)
            sys.exit(EXIT_USAGE)
        except click.UsageError as error:
            hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx else ""
            error_line(f"{error.format_message()}{hint}")
            sys.exit(EXIT_USAGE)
        except click.ClickException as error:
            error_line(error.format_message())
            sys.exit(error.status if isinstance(error, CommandError) else error.exit_code)


def error_line(message: str) -> None:
    """Print `mailbridge: error: …` on stderr, as one line (for errors that do not stop a run)."""
    click.echo(f"mailbridge: error: {_one_line(message)}", err=True)


# click >= 8.2 raises this for a group called with no arguments; 8.1 prints the help itself.
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Context:
    """Per-invocation state: where the config comes from, and the Settings once loaded."""

    def __init__(self, config: Path | None) -> None:
        self.config = config
        self._settings: Settings | None = None
        self._log_file: TextIO | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from mailbridge.settings import ConfigError, load_settings

            try:
                self._settings = load_settings(self.config)
            except ConfigError as error:
                fail(str(error), EXIT_USAGE)
            try:
                self.open_log()
            except OSError as error:
                fail(f"log.file: {error}", EXIT_USAGE)
        return self._settings

    def open_log(self) -> None:
        """Log to stderr, or append to `log.file`; called again on SIGHUP (after logrotate)."""
        from mailbridge import logs

        settings = self.settings
        stream: TextIO | None = None
        if settings.log.file is not None:
            stream = settings.log.file.open("a", encoding="utf-8", buffering=1)
        logs.configure(settings.log.level, settings.log.format, stream)
        old, self._log_file = self._log_file, stream
        if old is not None:
            old.close()


pass_context = click.make_pass_decorator(Context)


def run_async(function: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command body; database and schema trouble become one-line errors."""

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        import asyncio
        import socket

        from sqlalchemy.exc import DatabaseError, InterfaceError, OperationalError

        from mailbridge.adapters.db.engine import SchemaError
        from mailbridge.settings import ConfigError

        try:
            return asyncio.run(function(*args, **kwargs))
        except SchemaError as error:
            fail(str(error))
        except ConfigError as error:
            fail(str(error), EXIT_USAGE)
        except TransientError as error:
            fail(f"temporary failure, try again later: {error}", EXIT_TEMPFAIL)
        except (
            ConnectionError,
            TimeoutError,
            socket.gaierror,
            OperationalError,
            InterfaceError,
        ) as error:
            # The database (or its host) is away: worth retrying, and an MTA must keep the mail
            # (Postfix bounces on any exit status but the sysexits temporary ones).
            fail(f"temporary failure, try again later: {_one_line(str(error))}", EXIT_TEMPFAIL)
        except DatabaseError as error:
            if not _damaged_sqlite(error):
                raise
            fail(f"database.url: {_sqlite_file()}: {error.orig}")
        except OSError as error:
            fail(str(error))

    return wrapper


def _damaged_sqlite(error: Exception) -> bool:
    """Whether the database file is not SQLite at all, or a damaged one: no retry mends it."""
    name = getattr(getattr(error, "orig", None), "sqlite_errorname", None)
    return name in ("SQLITE_NOTADB", "SQLITE_CORRUPT")


def _sqlite_file() -> str:
    """The file database.url names, for the error line (SQLite's own message names none)."""
    from sqlalchemy.engine import make_url

    ctx = click.get_current_context(silent=True)
    context = ctx.find_object(Context) if ctx is not None else None
    if context is None:
        return "the database file"
    return make_url(context.settings.database_url).database or "the database file"


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="MAILBRIDGE_CONFIG",
    help="TOML settings file (default: $MAILBRIDGE_CONFIG; environment and secrets override).",
)
@click.version_option(__version__, prog_name="mailbridge")
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """mailbridge: support mail in over IMAP, tickets in a database, acknowledgements out.

    \b
    Examples:
      mailbridge -c mailbridge.toml db upgrade
      mailbridge -c mailbridge.toml run
      mailbridge -c mailbridge.toml run --once      # drain mailbox and outbox, then exit
      mailbridge -c mailbridge.toml config check

    Exit codes: 0 ok, 1 failure, 2 bad usage or settings, 75 temporary failure (retry).
    """
    ctx.obj = Context(config)


@main.command()
@click.option("--once", is_flag=True, help="Drain the mailbox and the outbox, then exit.")
@pass_context
@run_async
async def run(context: Context, once: bool) -> None:
    """Run the daemon: IDLE on each folder of each account, make tickets, send acknowledgements.

    SIGTERM or SIGINT lets the messages in hand and the send in flight finish, then stops
    (within daemon.shutdown_timeout_seconds). SIGHUP reopens the log file and reloads the
    templates. Under systemd (Type=notify) it reports READY, STATUS and WATCHDOG.
    """
    from mailbridge.adapters.allocator import return_large_blocks, share_arenas
    from mailbridge.adapters.holiday_table import compute_in_child_process
    from mailbridge.adapters.systemd import Notifier
    from mailbridge.app import open_app, upgrade_schema
    from mailbridge.logs import get_logger

    log = get_logger(__name__)
    return_large_blocks()
    share_arenas()
    compute_in_child_process()  # before the settings check asks for the country list
    settings = context.settings
    if settings.database.upgrade_on_start:
        await upgrade_schema(settings)
    async with open_app(settings) as app:
        if once:
            handled, pending = await app.daemon().run_once()
            click.echo(f"handled {handled} message(s); {pending} acknowledgement(s) still queued")
            return
        daemon = app.daemon(notifier=Notifier.from_environ())

        def reload() -> None:
            context.open_log()
            app.reload()

        daemon.on_reload = reload
        daemon.install_signal_handlers()
        async with app.serving(daemon):
            log.info(
                "daemon_started",
                version=__version__,
                accounts=sorted(settings.imap_accounts),
                folders=[worker.key for worker in daemon.workers],
            )
            await daemon.run()


@main.group()
def db() -> None:
    """Database schema commands."""


def _known_revision(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """An upgrade target the migration scripts know: head, or a revision id (or its start)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from mailbridge.adapters.db.engine import alembic_config

    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))  # the URL is not read
    try:
        # Alembic asserts on "" and maps "base" or "-1" to no script: none is an upgrade target.
        found = scripts.get_revisions(value) if value.strip() else ()
    except CommandError:
        found = ()
    if not any(hasattr(script, "revision") for script in found):
        known = ", ".join(["head", *sorted(script.revision for script in scripts.walk_revisions())])
        raise click.BadParameter(f"{value!r} is not a revision to upgrade to (known: {known})")
    return value


@db.command("upgrade")
@click.option(
    "--revision",
    default="head",
    show_default=True,
    callback=_known_revision,
    help="Target revision.",
)
@pass_context
@run_async
async def db_upgrade(context: Context, revision: str) -> None:
    """Apply the schema migrations (safe to run on every start)."""
    from alembic.util import CommandError

    from mailbridge.adapters.db.engine import current_revision, head_revision, make_engine, upgrade

    url = context.settings.database_url
    engine = make_engine(url)
    try:
        await upgrade(engine, url, revision)
        now = await current_revision(engine)
    except CommandError as error:  # e.g. a target behind the database's own revision
        fail(f"cannot upgrade to {revision}: {_one_line(str(error))}")
    finally:
        await engine.dispose()
    click.echo(f"database schema at {now} (head {head_revision()})")


@main.group("config")
def config_group() -> None:
    """Settings commands."""


@config_group.command("check")
@pass_context
def config_check(context: Context) -> None:
    """Validate the settings and print the effective values, secrets redacted."""
    from mailbridge.settings import redacted

    click.echo(json.dumps(redacted(context.settings), indent=2, default=str))


@config_group.command("reference")
def config_reference() -> None:
    """Print every setting as a Markdown table: key, type, default, environment variable."""
    from mailbridge.settings_doc import reference_markdown

    click.echo(reference_markdown(), nl=False)


def run_command(awaitable: Awaitable[T]) -> T:
    """For admin modules: run one coroutine the same way commands do."""

    async def runner() -> T:
        return await awaitable

    return run_async(runner)()


def _register_admin_commands() -> None:
    """Commands that live in their own modules attach themselves to `main` here."""
    import importlib

    for name in (
        "mailbridge.cli_mail",
        "mailbridge.cli_admin",
        "mailbridge.cli_failed",
        "mailbridge.cli_replay",
        "mailbridge.cli_tickets",
        "mailbridge.cli_ops",
    ):
        importlib.import_module(name)  # a missing one is a packaging bug: let it fail loudly


_register_admin_commands()
