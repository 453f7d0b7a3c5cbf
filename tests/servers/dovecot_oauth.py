"""A second Dovecot that also takes XOAUTH2, checking tokens at a token-introspection endpoint
run by the test (RFC 7662 style: POST token=..., JSON {"active": true, "username": ...}).

Fixtures (import them into a test module; tests/servers/dovecot.py is left as it is):

- ``token_authority`` (session): a tiny HTTP introspection endpoint on loopback. ``issue(user)``
  makes a token valid for that user, ``revoke(token)`` ends it; ``requests`` counts the
  introspection calls Dovecot made.
- ``oauth_dovecot`` (session): a :class:`DovecotServer` whose auth accepts PLAIN/LOGIN with the
  passwd-file (so the stdlib helpers still work) and XOAUTH2/OAUTHBEARER through Dovecot's
  ``oauth2`` passdb asking ``token_authority``.
- ``oauth_mailbox``: a fresh user on it, like ``mailbox``.
"""

from __future__ import annotations

import atexit
import json
import secrets
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.servers import dovecot as base
from tests.servers.dovecot import DovecotServer, DovecotUnavailable, Mailbox

_PASSDBS = """\
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {root}/users
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {root}/oauth2.conf.ext
}}
"""

_OAUTH2_CONF = """\
introspection_mode = post
introspection_url = {url}
username_attribute = username
active_attribute = active
active_value = true
"""


class TokenAuthority:
    """An OAuth2 token-introspection endpoint for Dovecot, and the tokens it knows."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.requests = 0
        self._lock = threading.Lock()
        authority = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                token = (form.get("token") or [""])[0]
                with authority._lock:
                    authority.requests += 1
                    user = authority.tokens.get(token)
                body = {"active": True, "username": user} if user else {"active": False}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((base.HOST, 0), Handler)
        self.url = f"http://{base.HOST}:{self._server.server_address[1]}/introspect"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def issue(self, user: str) -> str:
        token = "tok-" + secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[token] = user
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self.tokens.pop(token, None)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class OAuthDovecotServer(DovecotServer):
    """DovecotServer with the oauth2 passdb beside the passwd-file one."""

    def __init__(self, introspection_url: str) -> None:
        self.introspection_url = introspection_url
        super().__init__()

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config.read_text()
        plain = base._CONFIG.split("passdb {{", 1)[1].split("}}", 1)[0]
        old_passdb = "passdb {" + plain.format(root=self.root) + "}\n"
        assert old_passdb in text, "tests/servers/dovecot.py changed its passdb block"
        text = text.replace(old_passdb, _PASSDBS.format(root=self.root))
        text = text.replace(
            "auth_mechanisms = plain login", "auth_mechanisms = plain login xoauth2 oauthbearer"
        )
        (self.root / "oauth2.conf.ext").write_text(_OAUTH2_CONF.format(url=self.introspection_url))
        self.config.write_text(text)


@pytest.fixture(scope="session")
def token_authority() -> Iterator[TokenAuthority]:
    authority = TokenAuthority()
    yield authority
    authority.close()


@pytest.fixture(scope="session")
def oauth_dovecot(token_authority: TokenAuthority) -> Iterator[OAuthDovecotServer]:
    try:
        server = OAuthDovecotServer(token_authority.url)
    except DovecotUnavailable as error:
        base._unavailable(str(error))
        raise
    atexit.register(server.cleanup)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
        atexit.unregister(server.cleanup)


@pytest.fixture
def oauth_mailbox(oauth_dovecot: OAuthDovecotServer) -> Mailbox:
    return Mailbox(oauth_dovecot, oauth_dovecot.new_user())
