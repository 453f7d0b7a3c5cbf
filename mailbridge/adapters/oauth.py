"""OAuth2 access tokens for XOAUTH2 logins (IMAP and SMTP), cached and refreshed before expiry.

Three ways to get one, chosen by `[imap.oauth] provider` (or `[smtp.oauth]`):

- ``command``: run an argv (no shell) and read the token from its standard output, either
  bare or as JSON ``{"access_token": "...", "expires_in": 3599}`` (or ``"expires_at"``,
  Unix time). The child gets ``MAILBRIDGE_OAUTH_USER`` and ``MAILBRIDGE_OAUTH_SERVICE``.
- ``microsoft``: Microsoft 365 client credentials with msal (``acquire_token_for_client``).
- ``google``: a Google service account with domain-wide delegation, with google-auth.

msal and google-auth are imported only when their provider is used (the ``oauth`` extra).
A token is never logged: errors carry the provider's message, never the token.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from mailbridge.adapters.systemd import NOTIFY_VARIABLES
from mailbridge.errors import TransientError
from mailbridge.logs import get_logger
from mailbridge.settings import OAuthProvider, OAuthSettings

log = get_logger(__name__)

MICROSOFT_SCOPES = ("https://outlook.office365.com/.default",)
GOOGLE_SCOPES = ("https://mail.google.com/",)
_MAX_OUTPUT = 64 * 1024
_EXTRA_HINT = "install the oauth extra: pip install 'mailbridge[oauth]'"


class OAuthError(TransientError):
    """No token could be had now (provider down, command failed, credentials refused)."""


class OAuthUnavailable(ValueError):
    """The provider's library is not installed: a configuration problem, not a transient one."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str = field(repr=False)
    expires_at: float | None  # Unix time; None: unknown (treated as token_lifetime_seconds)


class TokenFetcher(Protocol):
    async def fetch(self) -> AccessToken: ...


class TokenSource:
    """One account's token: fetched when needed, reused until `margin` before it expires.

    `token(fresh=True)` (after the server refused the cached one) always fetches anew.
    Concurrent callers (several folders of one account) share one fetch.
    """

    def __init__(
        self,
        fetcher: TokenFetcher,
        *,
        name: str,
        margin: float = 300.0,
        default_lifetime: float = 3300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fetcher = fetcher
        self.name = name
        self.margin = margin
        self.default_lifetime = default_lifetime
        self.clock = clock
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0
        self.last_error: str | None = None

    @property
    def expires_at(self) -> float | None:
        return self._token.expires_at if self._token is not None else None

    def _usable(self, token: AccessToken | None) -> bool:
        if token is None or token.expires_at is None:
            return False
        return self.clock() < token.expires_at - self.margin

    def invalidate(self) -> None:
        self._token = None

    async def token(self, *, fresh: bool = False) -> str:
        seen = self._token
        if not fresh and seen is not None and self._usable(seen):
            return seen.value
        async with self._lock:
            current = self._token
            if current is not None and self._usable(current) and not (fresh and current is seen):
                return current.value  # still good, or another caller fetched a new one meanwhile
            try:
                got = await self.fetcher.fetch()
            except OAuthError as error:
                self.last_error = str(error)
                log.warning("oauth_token_failed", source=self.name, error=str(error))
                raise
            if not got.value:
                self.last_error = "the provider returned an empty token"
                raise OAuthError(f"{self.name}: the provider returned an empty token")
            if got.expires_at is None:
                got = AccessToken(got.value, self.clock() + self.default_lifetime)
            self._token, self.last_error = got, None
            self.fetches += 1
            log.info(
                "oauth_token_fetched",
                source=self.name,
                expires_at=datetime.fromtimestamp(got.expires_at or 0, UTC).isoformat(),
            )
            return got.value


def _child_environment(user: str, service: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOTIFY_VARIABLES}
    env["MAILBRIDGE_OAUTH_USER"] = user
    env["MAILBRIDGE_OAUTH_SERVICE"] = service
    return env


def parse_command_output(output: bytes, now: float) -> AccessToken:
    """A bare token, or JSON with access_token and expires_in / expires_at."""
    text = output.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as error:
            raise OAuthError(f"token command printed invalid JSON: {error.args[0]}") from None
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise OAuthError("token command printed JSON without an access_token")
        expires_at: float | None = None
        if isinstance(data.get("expires_in"), int | float):
            expires_at = now + float(data["expires_in"])
        elif isinstance(data.get("expires_at"), int | float):
            expires_at = float(data["expires_at"])
        return AccessToken(token.strip(), expires_at)
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1 or any(c.isspace() for c in lines[0]):
        raise OAuthError("token command must print one token, or JSON with access_token")
    return AccessToken(lines[0], None)


class CommandFetcher:
    """Runs the configured argv and reads the token it prints (a vault, oauth2ms, a script)."""

    def __init__(self, argv: list[str], *, user: str, service: str, timeout: float) -> None:
        self.argv = list(argv)
        self.user = user
        self.service = service
        self.timeout = timeout

    async def fetch(self) -> AccessToken:
        name = Path(self.argv[0]).name
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=_child_environment(self.user, self.service),
            )
        except OSError as error:
            raise OAuthError(f"token command {name}: {error.strerror or error}") from None
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), self.timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise OAuthError(f"token command {name} timed out after {self.timeout:g}s") from None
        if process.returncode != 0:
            last = (stderr.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:200]
            raise OAuthError(f"token command {name} exited {process.returncode}: {last}")
        if len(stdout) > _MAX_OUTPUT:
            raise OAuthError(f"token command {name} printed more than {_MAX_OUTPUT} bytes")
        return parse_command_output(stdout, time.time())


def _require(module: str, provider: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise OAuthUnavailable(f"oauth provider {provider!r} needs {module}: {_EXTRA_HINT}")


class MicrosoftFetcher:
    """Microsoft 365 (Entra ID) client credentials: an app-only token for IMAP/SMTP."""

    def __init__(self, settings: OAuthSettings, *, scopes: tuple[str, ...]) -> None:
        _require("msal", "microsoft")
        self.client_id = settings.client_id
        self.secret = settings.client_secret
        self.authority = f"{settings.authority.rstrip('/')}/{settings.tenant_id}"
        self.scopes = list(settings.scopes or scopes)
        self.timeout = settings.timeout_seconds

    def _acquire(self) -> dict[str, Any]:
        import msal

        # A new application per fetch: msal's own cache would hand back the token the server
        # just refused; ours (TokenSource) does the reuse.
        # The authority is the operator's own setting: no instance discovery round trip.
        app = msal.ConfidentialClientApplication(
            self.client_id,
            client_credential=self.secret.get_secret_value(),
            authority=self.authority,
            timeout=self.timeout,
            instance_discovery=False,
        )
        result: dict[str, Any] = app.acquire_token_for_client(scopes=self.scopes)
        return result

    async def fetch(self) -> AccessToken:
        try:
            result = await asyncio.wait_for(asyncio.to_thread(self._acquire), self.timeout * 2)
        except TimeoutError:
            raise OAuthError("microsoft: token request timed out") from None
        except Exception as error:  # msal raises ValueError and requests' errors alike
            raise OAuthError(f"microsoft: {type(error).__name__}: {error}") from None
        token = result.get("access_token")
        if not token:
            detail = result.get("error_description") or result.get("error") or "no access_token"
            raise OAuthError(f"microsoft: {str(detail).splitlines()[0][:300]}")
        expires_in = result.get("expires_in")
        expires_at = time.time() + float(expires_in) if expires_in else None
        return AccessToken(str(token), expires_at)


class GoogleFetcher:
    """A Google Workspace service account acting as the mailbox user (domain-wide delegation)."""

    def __init__(self, settings: OAuthSettings, *, user: str, scopes: tuple[str, ...]) -> None:
        _require("google.oauth2", "google")
        _require("requests", "google")
        assert settings.service_account_file is not None  # the settings validator says so
        self.file = settings.service_account_file
        self.subject = settings.subject or user
        self.scopes = list(settings.scopes or scopes)
        self.timeout = settings.timeout_seconds

    def _refresh(self) -> tuple[str, datetime | None]:
        from google.auth.transport.requests import Request
        from google.oauth2 import service_account

        credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            str(self.file), scopes=self.scopes, subject=self.subject
        )
        credentials.refresh(Request())
        return str(credentials.token), credentials.expiry

    async def fetch(self) -> AccessToken:
        try:
            token, expiry = await asyncio.wait_for(asyncio.to_thread(self._refresh), self.timeout)
        except TimeoutError:
            raise OAuthError("google: token request timed out") from None
        except Exception as error:  # google.auth.exceptions.*, OSError, ValueError
            text = str(error).splitlines()[0][:300] if str(error) else ""
            raise OAuthError(f"google: {type(error).__name__}: {text}") from None
        # google-auth keeps expiry as a naive UTC datetime.
        expires_at = expiry.replace(tzinfo=UTC).timestamp() if expiry is not None else None
        return AccessToken(token, expires_at)


def token_source(
    settings: OAuthSettings, *, user: str, name: str, service: str
) -> TokenSource | None:
    """The cached token source for one account's settings, or None for password logins.

    Raises OAuthUnavailable when the provider's library is missing.
    """
    fetcher: TokenFetcher
    if settings.provider is OAuthProvider.NONE:
        return None
    if settings.provider is OAuthProvider.COMMAND:
        fetcher = CommandFetcher(
            settings.command, user=user, service=service, timeout=settings.timeout_seconds
        )
    elif settings.provider is OAuthProvider.MICROSOFT:
        fetcher = MicrosoftFetcher(settings, scopes=MICROSOFT_SCOPES)
    else:
        fetcher = GoogleFetcher(settings, user=user, scopes=GOOGLE_SCOPES)
    return TokenSource(
        fetcher,
        name=name,
        margin=settings.refresh_margin_seconds,
        default_lifetime=settings.token_lifetime_seconds,
    )
