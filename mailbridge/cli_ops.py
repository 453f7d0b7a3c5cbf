"""Operator commands: `mailbridge health` (for Docker's HEALTHCHECK, monitoring and scripts)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import click

from mailbridge.cli import EXIT_ERROR, EXIT_OK, Context, main, pass_context, run_command
from mailbridge.cli_types import HTTP_URL, SECONDS

if TYPE_CHECKING:
    from mailbridge.health import Check
    from mailbridge.settings import HttpSettings, Settings

_LOCAL = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 (mapping, not binding)


def endpoint_url(http: HttpSettings, path: str) -> str:
    """Where the running daemon answers: a wildcard listen address is asked on loopback."""
    host = _LOCAL.get(http.host, http.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{http.port}{path}"


def ask_endpoint(url: str, timeout: float) -> list[Check]:
    """GET a /healthz or /readyz URL; its checks, or one failed check saying why not."""
    from mailbridge.health import Check

    if not url.startswith(("http://", "https://")):
        return [Check("http", False, f"not an http(s) URL: {url}")]
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (checked above)
            body: Any = json.loads(answer.read())
    except urllib.error.HTTPError as error:  # 503 carries the failed checks
        try:
            body = json.loads(error.read())
        except ValueError:
            return [Check("http", False, f"{url}: HTTP {error.code}")]
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        return [Check("http", False, f"cannot reach {url}: {reason}")]
    checks = body.get("checks") if isinstance(body, dict) else None
    if not isinstance(checks, list):
        return [Check("http", False, f"{url}: unexpected answer")]
    return [Check(str(c.get("name")), bool(c.get("ok")), str(c.get("detail"))) for c in checks]


async def direct_checks(settings: Settings) -> list[Check]:
    """Without a running daemon's endpoint: the database (and its schema) and a login to
    every mailbox account."""
    from mailbridge.adapters.db.engine import make_engine
    from mailbridge.adapters.imap import ImapClient
    from mailbridge.app import make_token_sources
    from mailbridge.health import database_check, imap_login_check

    engine = make_engine(settings.database_url)
    try:
        checks = [await database_check(engine, schema=True)]
    finally:
        await engine.dispose()
    sources = make_token_sources(settings)
    for name, account in settings.imap_accounts.items():
        client = ImapClient(account, token_source=sources.get(("imap", name)))
        checks.append(await imap_login_check(name, account, client))
    return checks


@main.command()
@click.option("--ready", is_flag=True, help="Readiness (/readyz) instead of liveness (/healthz).")
@click.option(
    "--url", type=HTTP_URL, help="Ask this endpoint (default: from [http] when it is enabled)."
)
@click.option(
    "--timeout",
    type=SECONDS,
    default=10.0,
    show_default=True,
    help="Seconds to wait for the endpoint.",
)
@pass_context
def health(context: Context, ready: bool, url: str | None, timeout: float) -> None:
    """Check that mailbridge is healthy; exit 0 when it is, 1 when not, one line per check.

    With [http] enabled (the Docker image) it asks the running daemon's /healthz (or, with
    --ready, /readyz): every loop making progress and every folder polled recently.
    Otherwise it checks the database and logs in to every mailbox account itself.
    """
    from mailbridge import logs

    settings = context.settings
    if settings.log.level == "info":
        logs.configure("warning", settings.log.format)  # the checks' lines are the report
    if url is not None or settings.http.enabled:
        target = url or endpoint_url(settings.http, "/readyz" if ready else "/healthz")
        checks = ask_endpoint(target, timeout)
    else:
        checks = run_command(direct_checks(settings))
    for check in checks:
        click.echo(f"{'ok' if check.ok else 'FAIL':<4} {check.name}: {check.detail}")
    # SystemExit, not ctx.exit(): click returns (not raises) ctx.exit's code outside
    # standalone mode, and `python -m mailbridge` would lose it.
    raise SystemExit(EXIT_OK if checks and all(c.ok for c in checks) else EXIT_ERROR)
