"""XOAUTH2 logins end to end: a real Dovecot that checks tokens at an introspection endpoint
(tests/servers/dovecot_oauth.py), an aiosmtpd server that takes AUTH XOAUTH2, and tokens from
the "command" provider (a real program that prints them)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from mailbridge.adapters.imap import ImapAuthError, ImapClient
from mailbridge.adapters.oauth import token_source
from mailbridge.adapters.smtp import SendStatus, SmtpSender
from mailbridge.app import open_app, upgrade_schema
from mailbridge.records import OutgoingMail
from mailbridge.settings import (
    AckSettings,
    DatabaseSettings,
    HttpSettings,
    OAuthSettings,
    Settings,
    SmtpSettings,
    StorageSettings,
)
from tests.integration.harness import make_mail, read_db
from tests.integration.test_operations import aget, free_port, metric, write_config
from tests.servers.dovecot import Mailbox
from tests.servers.dovecot_oauth import TokenAuthority
from tests.servers.smtp import SmtpSink

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


class TokenFile:
    """The store a token command reads: the test puts a token there, the command prints it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "current-token"
        self.log = directory / "command-runs"
        self.command = directory / "get-token.py"
        self.command.write_text(
            "import json, os, sys\n"
            f"open({str(self.log)!r}, 'a').write(os.environ['MAILBRIDGE_OAUTH_USER'] + '\\n')\n"
            f"token = open({str(self.path)!r}).read().strip()\n"
            "if not token:\n"
            "    print('no token in the vault', file=sys.stderr); sys.exit(2)\n"
            "print(json.dumps({'access_token': token, 'expires_in': 3600}))\n"
        )

    @property
    def argv(self) -> list[str]:
        return [sys.executable, str(self.command)]

    def put(self, token: str) -> None:
        self.path.write_text(token)

    @property
    def runs(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0


@pytest.fixture
def token_file(tmp_path: Path) -> TokenFile:
    return TokenFile(tmp_path)


def oauth_imap(mailbox: Mailbox, token_file: TokenFile, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "password": "",  # no password at all: XOAUTH2 only
        "idle_renew_seconds": 5.0,
        "poll_seconds": 1.0,
        "timeout_seconds": 5.0,
        "backoff_max_seconds": 1.0,
        "oauth": OAuthSettings(provider="command", command=token_file.argv),
    }
    values.update(overrides)
    return mailbox.settings(**values)


# --- IMAP -------------------------------------------------------------------------------------


async def test_imap_logs_in_with_a_token_from_the_command(
    oauth_mailbox: Mailbox, token_authority: TokenAuthority, token_file: TokenFile
) -> None:
    token_file.put(token_authority.issue(oauth_mailbox.user))
    settings = oauth_imap(oauth_mailbox, token_file)
    source = token_source(settings.oauth, user=settings.user, name="imap:default", service="imap")
    client = ImapClient(settings, token_source=source)
    with structlog.testing.capture_logs() as logs:
        await client.connect()
        state = await client.select("INBOX")
        await client.close()
    assert state.exists == 0
    assert token_file.runs == 1
    assert token_file.path.read_text() not in repr(logs)


async def test_a_refused_token_is_replaced_once_and_the_login_goes_on(
    oauth_mailbox: Mailbox, token_authority: TokenAuthority, token_file: TokenFile
) -> None:
    first = token_authority.issue(oauth_mailbox.user)
    token_file.put(first)
    settings = oauth_imap(oauth_mailbox, token_file)
    source = token_source(settings.oauth, user=settings.user, name="imap:default", service="imap")
    assert source is not None
    client = ImapClient(settings, token_source=source)
    await client.connect()
    await client.close()

    # The provider revoked the cached token early (password change, admin action): the
    # next login is refused, a fresh token is fetched once, and the login succeeds.
    token_authority.revoke(first)
    token_file.put(token_authority.issue(oauth_mailbox.user))
    await client.connect()
    await client.close()
    assert source.fetches == 2
    assert token_file.runs == 2


async def test_a_dead_token_fails_fast_as_an_auth_error_not_a_hang(
    oauth_mailbox: Mailbox, token_file: TokenFile
) -> None:
    token_file.put("tok-nobody-issued-this")
    settings = oauth_imap(oauth_mailbox, token_file, timeout_seconds=20.0)
    source = token_source(settings.oauth, user=settings.user, name="imap:default", service="imap")
    client = ImapClient(settings, token_source=source)
    started = time.monotonic()
    with pytest.raises(ImapAuthError, match="refused"):
        await client.connect()
    # Dovecot answers a bad XOAUTH2 token with a challenge; it is answered, not waited on.
    assert time.monotonic() - started < 10
    assert token_file.runs == 2  # the cached token, then one fresh one
    assert not client.connected


async def test_daemon_with_oauth_makes_tickets_and_shows_token_trouble(
    oauth_mailbox: Mailbox,
    token_authority: TokenAuthority,
    token_file: TokenFile,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    token_file.put(token_authority.issue(oauth_mailbox.user))
    settings = Settings(
        imap=oauth_imap(oauth_mailbox, token_file),
        smtp=smtp_sink.settings(poll_seconds=0.2),
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'mb.db'}"),
        storage=StorageSettings(data_dir=tmp_path / "data"),
        ack=AckSettings(from_address=oauth_mailbox.user),
        http=HttpSettings(enabled=True, port=0),
    )
    await upgrade_schema(settings)
    oauth_mailbox.append(make_mail(to=oauth_mailbox.user))
    async with open_app(settings) as app:
        daemon = app.daemon()
        async with app.serving(daemon) as server:
            assert server is not None
            base = f"http://127.0.0.1:{server.port}"
            task = asyncio.create_task(daemon.run())
            try:
                await asyncio.wait_for(smtp_sink.wait_for(1, timeout=30), 40)
                _, text = await aget(f"{base}/metrics")
                expiry = metric(
                    text,
                    "mailbridge_oauth_token_expiry_timestamp_seconds",
                    account="default",
                    service="imap",
                )
                assert expiry is not None
                assert time.time() + 3000 < expiry < time.time() + 3700

                # The vault stops handing out tokens and the connection drops: the worker
                # keeps trying, and health says why.
                token_file.put("")
                app.token_sources[("imap", "default")].invalidate()
                oauth_mailbox.server.restart()
                worker = daemon.workers[0]

                def failing() -> bool:
                    return "no token in the vault" in (worker.status.last_error or "")

                deadline = time.monotonic() + 30
                while not failing():
                    assert time.monotonic() < deadline, worker.status
                    await asyncio.sleep(0.1)
                status, body = await aget(f"{base}/readyz")
                assert status == 503
                assert "token command" in body
            finally:
                daemon.stop.set()
                await asyncio.wait_for(task, 30)
    state = await read_db(settings)
    assert len(state.tickets) == 1


def test_run_once_from_a_toml_file_with_the_command_provider(
    oauth_mailbox: Mailbox,
    token_authority: TokenAuthority,
    token_file: TokenFile,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    """The operator's path: settings file, `mailbridge db upgrade`, `mailbridge run --once`."""
    token_file.put(token_authority.issue(oauth_mailbox.user))
    server = oauth_mailbox.server
    config = write_config(
        tmp_path / "mailbridge.toml",
        {
            "imap": {
                "host": server.host,
                "port": server.port,
                "security": "plain",
                "user": oauth_mailbox.user,
                "timeout_seconds": 5.0,
            },
            "imap.oauth": {"provider": "command", "command": token_file.argv},
            "smtp": {"host": smtp_sink.host, "port": smtp_sink.port, "security": "plain"},
            "database": {
                "url": f"sqlite+aiosqlite:///{tmp_path / 'mb.db'}",
                "upgrade_on_start": True,
            },
            "storage": {"data_dir": tmp_path / "data"},
            "ack": {"from_address": oauth_mailbox.user},
        },
    )
    oauth_mailbox.append(make_mail(to=oauth_mailbox.user))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBRIDGE_")}
    result = subprocess.run(
        [sys.executable, "-m", "mailbridge", "-c", str(config), "run", "--once"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "handled 1 message(s)" in result.stdout
    assert token_file.path.read_text() not in result.stderr  # never logged
    assert oauth_mailbox.uids("INBOX") == []
    assert len(smtp_sink.messages) == 1


# --- SMTP -------------------------------------------------------------------------------------


class XOAuth2Handler:
    """aiosmtpd handler with an AUTH XOAUTH2 mechanism; MAIL needs a logged-in session."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.valid: set[str] = set()
        self.attempts: list[str] = []
        self.received: list[Envelope] = []

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        decoded = base64.b64decode(args[1]).decode() if len(args) > 1 else ""
        fields = dict(part.split("=", 1) for part in decoded.split("\x01") if "=" in part)
        token = fields.get("auth", "").removeprefix("Bearer ")
        self.attempts.append(token)
        if fields.get("user") == self.user and token in self.valid:
            return AuthResult(success=True, auth_data=self.user)
        # As Gmail does: an error challenge, the client's empty answer, then 535.
        error = json.dumps(
            {"status": "401", "schemes": "Bearer", "scope": "https://mail.google.com/"}
        )
        await server.challenge_auth(base64.b64encode(error.encode()).decode(), encode_to_b64=False)
        return AuthResult(
            success=False, handled=False, message="535 5.7.8 Username and Password not accepted"
        )

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(envelope)
        return "250 2.0.0 queued"


@pytest.fixture
def xoauth2_smtp() -> Iterator[tuple[XOAuth2Handler, int]]:
    handler = XOAuth2Handler("mailbridge@example.test")
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, auth_require_tls=False)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


async def test_smtp_sends_with_xoauth2_and_replaces_a_refused_token(
    xoauth2_smtp: tuple[XOAuth2Handler, int], token_file: TokenFile
) -> None:
    handler, port = xoauth2_smtp
    token_file.put("smtp-token-1")
    handler.valid.add("smtp-token-1")
    settings = SmtpSettings(
        host="127.0.0.1",
        port=port,
        security="plain",
        user=handler.user,
        local_hostname="mailbridge.test",
        timeout_seconds=5.0,
        oauth=OAuthSettings(provider="command", command=token_file.argv),
    )
    source = token_source(settings.oauth, user=settings.user, name="smtp:smtp", service="smtp")
    mail = OutgoingMail(
        "ack",
        "<a1@mailbridge.test>",
        handler.user,
        ("ana@customer.test",),
        b"Subject: x\r\n\r\nhi\r\n",
    )
    async with SmtpSender(settings, token_source=source) as sender:
        assert (await sender.send(mail)).status is SendStatus.SENT

    # The token was revoked: refused once, a fresh one fetched, the mail goes out.
    handler.valid = {"smtp-token-2"}
    token_file.put("smtp-token-2")
    async with SmtpSender(settings, token_source=source) as sender:
        assert (await sender.send(mail)).status is SendStatus.SENT
    assert handler.attempts == ["smtp-token-1", "smtp-token-1", "smtp-token-2"]
    assert len(handler.received) == 2

    # No valid token at all: the send is retried later, never failed for good.
    handler.valid = set()
    async with SmtpSender(settings, token_source=source) as sender:
        result = await sender.send(mail)
    assert result.status is SendStatus.RETRY
    assert "535" in result.detail
    assert "smtp-token" not in result.detail
