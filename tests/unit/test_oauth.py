"""OAuth2 token providers: the cache, the command provider (real subprocesses), Google's
service account (google-auth) and Microsoft's client credentials (msal) against local token
endpoints — real HTTP(S) on loopback, never the providers' own servers."""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog

from mailbridge.adapters import oauth
from mailbridge.adapters.oauth import (
    AccessToken,
    CommandFetcher,
    OAuthError,
    TokenSource,
    parse_command_output,
    token_source,
)
from mailbridge.app import make_token_sources
from mailbridge.settings import ConfigError, OAuthSettings, Settings, load_settings
from tests.servers.smtp import make_tls_files


class FakeFetcher:
    def __init__(self, lifetime: float | None = 3600.0, delay: float = 0.0) -> None:
        self.calls = 0
        self.lifetime = lifetime
        self.delay = delay
        self.now: Callable[[], float] = time.time

    async def fetch(self) -> AccessToken:
        self.calls += 1
        await asyncio.sleep(self.delay)
        expires = None if self.lifetime is None else self.now() + self.lifetime
        return AccessToken(f"token-{self.calls}", expires)


async def test_a_token_is_reused_until_the_margin_before_expiry() -> None:
    clock = [1000.0]
    fetcher = FakeFetcher(lifetime=600)
    fetcher.now = lambda: clock[0]
    source = TokenSource(fetcher, name="t", margin=60, clock=lambda: clock[0])
    assert await source.token() == "token-1"
    clock[0] += 500
    assert await source.token() == "token-1"
    assert source.expires_at == 1600.0
    clock[0] += 50  # 50 s before expiry, inside the 60 s margin
    assert await source.token() == "token-2"
    assert fetcher.calls == 2


async def test_fresh_fetches_again_and_concurrent_callers_share_one_fetch() -> None:
    fetcher = FakeFetcher(delay=0.05)
    source = TokenSource(fetcher, name="t")
    tokens = await asyncio.gather(*(source.token() for _ in range(5)))
    assert tokens == ["token-1"] * 5
    assert fetcher.calls == 1
    # After a refusal, two folders of one account ask for a fresh token at once: one fetch.
    fresh = await asyncio.gather(source.token(fresh=True), source.token(fresh=True))
    assert fresh == ["token-2", "token-2"]
    assert fetcher.calls == 2


async def test_unknown_expiry_uses_the_configured_lifetime() -> None:
    clock = [0.0]
    source = TokenSource(
        FakeFetcher(lifetime=None),
        name="t",
        default_lifetime=100,
        margin=10,
        clock=lambda: clock[0],
    )
    await source.token()
    assert source.expires_at == 100.0


async def test_tokens_never_reach_the_logs() -> None:
    fetcher = FakeFetcher()
    source = TokenSource(fetcher, name="imap:default")
    with structlog.testing.capture_logs() as logs:
        token = await source.token()
    assert logs
    assert token not in repr(logs)
    assert token not in repr(AccessToken(token, None))


@pytest.mark.parametrize(
    ("output", "token", "expires"),
    [
        (b"abc.def-ghi\n", "abc.def-ghi", None),
        (b'{"access_token": "xyz", "expires_in": 120}', "xyz", 1120.0),
        (b'{"access_token": "xyz", "expires_at": 5000}', "xyz", 5000.0),
        (b'  {"access_token": "xyz"}\n', "xyz", None),
    ],
)
def test_command_output(output: bytes, token: str, expires: float | None) -> None:
    got = parse_command_output(output, now=1000.0)
    assert (got.value, got.expires_at) == (token, expires)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b'{"token": "x"}', "without an access_token"),
        (b"two\nlines\n", "one token"),
        (b"has a space", "one token"),
        (b"", "one token"),
    ],
)
def test_bad_command_output(output: bytes, message: str) -> None:
    with pytest.raises(OAuthError, match=message):
        parse_command_output(output, now=0)


def script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "get-token.py"
    path.write_text("import json, os, sys, time\n" + body)
    return [sys.executable, str(path)]


async def test_command_provider_runs_the_program_with_the_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")  # never for a child
    argv = script(
        tmp_path,
        "user = os.environ['MAILBRIDGE_OAUTH_USER']\n"
        "service = os.environ['MAILBRIDGE_OAUTH_SERVICE']\n"
        "leak = 'NOTIFY_SOCKET' in os.environ\n"
        "print(json.dumps({'access_token': f'{service}-{user}-{leak}', 'expires_in': 3600}))\n",
    )
    settings = OAuthSettings(provider="command", command=argv)
    source = token_source(
        settings, user="support@example.test", name="imap:default", service="imap"
    )
    assert source is not None
    before = time.time()
    assert await source.token() == "imap-support@example.test-False"
    assert source.expires_at is not None
    assert before + 3590 < source.expires_at < time.time() + 3610


async def test_command_failures_say_why_without_the_output(tmp_path: Path) -> None:
    failing = script(
        tmp_path, "print('secret-token')\nprint('vault: sealed', file=sys.stderr)\nsys.exit(3)\n"
    )
    with pytest.raises(OAuthError, match="exited 3: vault: sealed") as caught:
        await CommandFetcher(failing, user="u", service="imap", timeout=10).fetch()
    assert "secret-token" not in str(caught.value)

    slow = script(tmp_path, "time.sleep(30)\n")
    started = time.monotonic()
    with pytest.raises(OAuthError, match="timed out"):
        await CommandFetcher(slow, user="u", service="imap", timeout=0.5).fetch()
    assert time.monotonic() - started < 10

    with pytest.raises(OAuthError, match="no-such-program"):
        await CommandFetcher(
            [str(tmp_path / "no-such-program")], user="u", service="imap", timeout=5
        ).fetch()


def test_settings_name_what_a_provider_is_missing(tmp_path: Path) -> None:
    config = tmp_path / "m.toml"
    config.write_text('[imap.oauth]\nprovider = "microsoft"\ntenant_id = "t"\n')
    with pytest.raises(ConfigError, match=r"imap\.oauth: .*needs client_id"):
        load_settings(config)
    config.write_text('[accounts.office.oauth]\nprovider = "command"\n')
    with pytest.raises(ConfigError, match=r"accounts\.office\.oauth: .*needs command"):
        load_settings(config)


def test_secret_files_fill_oauth_and_account_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "imap__oauth__client_secret").write_text("s3cret-client\n")
    (tmp_path / "accounts__office__password").write_text("s3cret-office\n")
    monkeypatch.setenv("MAILBRIDGE_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("MAILBRIDGE_ACCOUNTS__OFFICE__HOST", "imap.office.test")
    monkeypatch.setenv("MAILBRIDGE_ACCOUNTS__OFFICE__USER", "office@example.test")
    settings = load_settings()
    assert settings.imap.oauth.client_secret.get_secret_value() == "s3cret-client"
    office = settings.accounts["office"]
    assert (office.host, office.user) == ("imap.office.test", "office@example.test")
    assert office.password.get_secret_value() == "s3cret-office"
    # [imap] has no user and accounts exist: only the accounts are read.
    assert list(settings.imap_accounts) == ["office"]
    assert "office@example.test" in settings.own_addresses


def test_a_missing_provider_library_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = oauth.importlib.util.find_spec
    monkeypatch.setattr(
        oauth.importlib.util, "find_spec", lambda name: None if name == "msal" else real(name)
    )
    settings = Settings(
        smtp={
            "oauth": {
                "provider": "microsoft",
                "tenant_id": "t",
                "client_id": "c",
                "client_secret": "s",
            }
        }
    )
    with pytest.raises(
        ConfigError, match=r"smtp\.oauth\.provider: .*pip install 'mailbridge\[oauth\]'"
    ):
        make_token_sources(settings)


# --- real providers against local token endpoints ---------------------------------------------


class TokenEndpoint:
    """A loopback HTTP(S) server: GET answers `documents[path]`, POST answers `reply(form)`."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.forms: list[dict[str, str]] = []
        self.documents: dict[str, Any] = {}
        self.reply: Callable[[dict[str, str]], tuple[int, Any]] = lambda form: (500, {})
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, data: Any) -> None:
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                found = endpoint.documents.get(self.path)
                self._send(200 if found is not None else 404, found or {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                endpoint.forms.append(form)
                self._send(*endpoint.reply(form))

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.base = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_endpoint() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint()
    yield endpoint
    endpoint.close()


@pytest.fixture
def https_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenEndpoint]:
    files = make_tls_files(tmp_path / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert_file, files.key_file)
    # How an operator behind a private CA or TLS proxy points requests (msal, google-auth) at it.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(files.ca_file))
    endpoint = TokenEndpoint(context)
    yield endpoint
    endpoint.close()


async def test_google_service_account_token(http_endpoint: TokenEndpoint, tmp_path: Path) -> None:
    pytest.importorskip("google.oauth2.service_account")
    jwt = pytest.importorskip("jwt")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    token_uri = f"{http_endpoint.base}/token"
    account_file = tmp_path / "service-account.json"
    account_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "mailbridge-test",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "mailbridge@mailbridge-test.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": token_uri,
            }
        )
    )
    http_endpoint.reply = lambda form: (200, {"access_token": "ya29.test", "expires_in": 3599})
    settings = OAuthSettings(provider="google", service_account_file=account_file)
    source = token_source(
        settings, user="support@example.test", name="imap:default", service="imap"
    )
    assert source is not None
    assert await source.token() == "ya29.test"
    assert source.expires_at is not None
    assert source.expires_at > time.time() + 3000

    (form,) = http_endpoint.forms
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    # Google's assertion names Google's token endpoint as its audience, whatever token_uri is.
    claims = jwt.decode(
        form["assertion"],
        key.public_key(),
        algorithms=["RS256"],
        audience="https://oauth2.googleapis.com/token",
    )
    assert claims["sub"] == "support@example.test"  # acting as the mailbox user
    assert claims["scope"] == "https://mail.google.com/"

    http_endpoint.reply = lambda form: (
        400,
        {"error": "unauthorized_client", "error_description": "Client is unauthorized"},
    )
    with pytest.raises(OAuthError, match="google: RefreshError"):
        await source.token(fresh=True)


async def test_microsoft_client_credentials_token(https_endpoint: TokenEndpoint) -> None:
    pytest.importorskip("msal")
    tenant = "contoso-tenant"
    base = f"{https_endpoint.base}/{tenant}"
    https_endpoint.documents[f"/{tenant}/v2.0/.well-known/openid-configuration"] = {
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "issuer": f"{base}/v2.0",
    }
    https_endpoint.reply = lambda form: (
        200,
        {"token_type": "Bearer", "expires_in": 3599, "access_token": "eyJ0eXAi.ms"},
    )
    settings = OAuthSettings(
        provider="microsoft",
        tenant_id=tenant,
        client_id="11111111-2222-3333-4444-555555555555",
        client_secret="app-secret",
        authority=https_endpoint.base,
    )
    source = token_source(settings, user="support@contoso.test", name="smtp:smtp", service="smtp")
    assert source is not None
    assert await source.token() == "eyJ0eXAi.ms"
    (form,) = https_endpoint.forms
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == "https://outlook.office365.com/.default"
    assert form["client_id"] == settings.client_id
    assert form["client_secret"] == "app-secret"

    https_endpoint.reply = lambda form: (
        401,
        {
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.",
        },
    )
    with pytest.raises(OAuthError, match="AADSTS7000215"):
        await source.token(fresh=True)
