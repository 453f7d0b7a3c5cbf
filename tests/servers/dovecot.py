"""A real Dovecot IMAP server for the tests, on loopback ports, with stdlib-imaplib helpers.

Fixtures (this module is a pytest plugin, registered in tests/conftest.py):

- ``dovecot`` (session scope): a running :class:`DovecotServer`. It listens on
  ``127.0.0.1`` with plain IMAP on ``.port`` and implicit-TLS IMAPS on ``.tls_port``; the
  certificate is self-signed for ``127.0.0.1`` and ``localhost`` (SAN) and its CA file is
  ``.ca_file``. The users ``support@example.test`` and ``office@example.test`` (password
  ``secret``) always exist; ``add_user()`` makes more, and Dovecot picks up a new line in its
  passwd-file at the next login (no reload). Stopped at session end with
  ``doveadm -c CONF stop`` (and killed if it will not stop).
- ``mailbox`` (function scope): a :class:`Mailbox` — a fresh user with an empty INBOX, made
  for the one test. ``mailbox.settings(...)`` gives ``ImapSettings`` for it (TLS with the test
  CA by default; ``security="plain"`` for the plain port; ``timeout_seconds=10``; any other
  field as a keyword), and
  ``mailbox.append/uids/messages/folders/...`` call the server helpers for that user.

The helpers (``append``, ``append_many``, ``uids``, ``messages``, ``flags``, ``folders``,
``uidvalidity``, ``create_folder``, ``delete_folder``) talk to Dovecot with the stdlib
``imaplib`` over the plain port — never through the adapter under test. ``restart()`` stops
and starts Dovecot on the same ports (clients see BYE and a closed connection).

When ``dovecot`` is not installed (or we are not root) the fixtures skip, except with
``CI=true`` in the environment, where they fail: CI must not silently skip the IMAP tests.

Dovecot quirks handled here: it re-reads a changed passwd-file at most once a second, so
fresh users are written ahead in batches (a later batch costs one 1 s wait); its anvil "auth
penalty" (2-15 s delay after a failed login from an IP) is disabled; and its master exits on
``doveadm stop`` without ending imap processes that still have clients, so ``stop()`` also
ends the instance's process group.
"""

from __future__ import annotations

import atexit
import contextlib
import imaplib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailbridge.settings import ImapSettings

HOST = "127.0.0.1"
DEFAULT_USERS = ("support@example.test", "office@example.test")
DEFAULT_PASSWORD = "secret"
MAIL_UID = 65534  # the uid/gid owning the mail homes ("nobody")
START_TIMEOUT = 20.0
USER_BATCH = 50  # fresh users are written ahead in batches: each later write costs a 1 s wait

_CONFIG = """\
instance_name = {instance}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap
listen = {host}
ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:~/Maildir
mail_fsync = never
mail_max_userip_connections = 200
mailbox_idle_check_interval = 1 secs
first_valid_uid = {mail_uid}
last_valid_uid = {mail_uid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
# No auth penalty (after a failed login, anvil delays the next logins from the IP by 2-15 s):
# an auth process that cannot open this socket skips the penalty.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {port}
  }}
  inet_listener imaps {{
    address = {host}
    port = {tls_port}
    ssl = yes
  }}
}}
"""


class DovecotUnavailable(Exception):
    """Dovecot cannot run here (not installed, not root)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1.0):
            return True
        time.sleep(0.05)
    return False


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _make_certificate(root: Path) -> Path:
    """A self-signed CA and a server certificate for 127.0.0.1/localhost; returns the CA file."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=root)

    ext = root / "server.ext"
    ext.write_text(
        "basicConstraints = CA:FALSE\n"
        "keyUsage = digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
    )
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=mailbridge test CA", "-keyout", "ca.key", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "key.pem", "-out", "server.csr")  # fmt: skip
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", "cert.pem")  # fmt: skip
    return root / "ca.pem"


class DovecotServer:
    """One private Dovecot instance in a temporary directory; `start()` and `stop()` it."""

    def __init__(self) -> None:
        dovecot, doveadm = shutil.which("dovecot"), shutil.which("doveadm")
        if dovecot is None or doveadm is None or shutil.which("openssl") is None:
            raise DovecotUnavailable(
                "dovecot/doveadm/openssl not installed (apt-get install dovecot-imapd openssl)"
            )
        if os.geteuid() != 0:
            raise DovecotUnavailable(
                "the Dovecot test server needs root (mail homes are uid 65534)"
            )
        self._dovecot, self._doveadm = dovecot, doveadm
        self.host = HOST
        self.root = Path(tempfile.mkdtemp(prefix="mbdc-"))
        self.root.chmod(0o755)  # the auth process (user dovecot) reads the passwd-file in here
        self.config = self.root / "dovecot.conf"
        self.users_file = self.root / "users"
        self.homes = self.root / "home"
        self.homes.mkdir(mode=0o755)
        self.ca_file = _make_certificate(self.root)
        self.port = _free_port()
        self.tls_port = _free_port()
        while self.tls_port == self.port:
            self.tls_port = _free_port()
        self.passwords: dict[str, str] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._counter = itertools.count(1)
        self._pool: list[str] = []
        self.users_file.write_text("")
        self.users_file.chmod(0o644)
        self._write_users([(user, DEFAULT_PASSWORD) for user in DEFAULT_USERS])
        self._refill()  # fresh users written before Dovecot starts need no wait

    # --- lifecycle -------------------------------------------------------------------------

    def _write_config(self) -> None:
        self.config.write_text(
            _CONFIG.format(
                instance=f"mbtest-{self.root.name}",
                root=self.root,
                host=self.host,
                port=self.port,
                tls_port=self.tls_port,
                mail_uid=MAIL_UID,
            )
        )

    def start(self) -> None:
        """Run `dovecot -F -c CONF` and wait until both ports accept connections."""
        self._write_config()
        with (self.root / "stderr.log").open("ab") as stderr:
            self._process = subprocess.Popen(
                [self._dovecot, "-F", "-c", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # its own process group: see stop()
            )
        deadline = time.monotonic() + START_TIMEOUT
        for port in (self.port, self.tls_port):
            if not _wait_for_port(port, deadline) or self._process.poll() is not None:
                self.stop()
                raise RuntimeError(f"dovecot did not start on port {port}:\n{self.log_tail()}")

    def stop(self) -> None:
        """`doveadm stop`; then end what the master left behind, and wait for the ports."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            # doveadm polls the master's pid until it is gone, and a zombie child of ours still
            # counts: reap the master while doveadm waits instead of running doveadm to its end.
            doveadm = subprocess.Popen(
                [self._doveadm, "-c", str(self.config), "stop"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            try:
                doveadm.wait(timeout=10)
            except subprocess.TimeoutExpired:
                doveadm.kill()
                doveadm.wait()
        # Dovecot 2.3's master exits without ending imap processes that still have a client
        # (nor their log/stats helpers): end this instance's process group ourselves.
        self._end_group(process.pid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._port_in_use():
            time.sleep(0.05)

    @staticmethod
    def _end_group(pgid: int) -> None:
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)

    def _port_in_use(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.5):
            return True
        return False

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        """The end of Dovecot's log and of the master's stderr (config errors land there)."""
        tail = []
        for name in ("stderr.log", "dovecot.log"):
            path = self.root / name
            if path.exists():
                tail.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(tail) or "(no log)"

    # --- users -----------------------------------------------------------------------------

    def add_user(self, user: str, password: str = DEFAULT_PASSWORD) -> str:
        """Add a passwd-file line and wait until Dovecot will see it; returns `user`."""
        self._write_users([(user, password)])
        return user

    def _write_users(self, users: list[tuple[str, str]]) -> None:
        lines = []
        for user, password in users:
            if ":" in user + password or "\n" in user + password:
                raise ValueError("user and password must not contain ':' or newlines")
            home = self.homes / user
            home.mkdir(mode=0o700)
            os.chown(home, MAIL_UID, MAIL_UID)
            lines.append(f"{user}:{{PLAIN}}{password}:{MAIL_UID}:{MAIL_UID}::{home}::\n")
        with self.users_file.open("a") as users_file:
            users_file.write("".join(lines))
        self.passwords.update(users)
        if self._process is not None:
            # Dovecot re-reads a changed passwd-file at most once per second (it stamps the
            # last check with the current second): a line written now may be missed by a
            # login in this same second, so wait out the second.
            time.sleep(1.1)

    def new_user(self) -> str:
        """A fresh user with an empty mailbox, unique within the session."""
        if not self._pool:
            self._refill()
        return self._pool.pop(0)

    def _refill(self) -> None:
        fresh = [f"user{next(self._counter)}@example.test" for _ in range(USER_BATCH)]
        self._write_users([(user, DEFAULT_PASSWORD) for user in fresh])
        self._pool.extend(fresh)

    # --- stdlib imaplib helpers ------------------------------------------------------------

    @contextlib.contextmanager
    def session(self, user: str) -> Iterator[imaplib.IMAP4]:
        """A logged-in stdlib IMAP connection on the plain port."""
        conn = imaplib.IMAP4(self.host, self.port, timeout=30)
        try:
            conn.login(user, self.passwords[user])
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()
            with contextlib.suppress(Exception):
                conn.shutdown()

    @staticmethod
    def _check(result: tuple[str, Any], what: str) -> Any:
        status, data = result
        if status != "OK":
            raise AssertionError(f"{what}: {status} {data!r}")
        return data

    def append(self, user: str, folder: str, data: bytes, flags: str = "") -> int:
        """APPEND one message; returns its UID (from APPENDUID)."""
        return self.append_many(user, folder, [data], flags)[0]

    def append_many(
        self, user: str, folder: str, messages: Iterable[bytes], flags: str = ""
    ) -> list[int]:
        """APPEND many messages over one connection; returns their UIDs."""
        uids: list[int] = []
        with self.session(user) as conn:
            for data in messages:
                reply = self._check(
                    conn.append(_quote(folder), f"({flags})" if flags else None, None, data),
                    f"APPEND to {folder}",
                )
                match = re.search(rb"APPENDUID \d+ (\d+)", reply[0])
                assert match, reply
                uids.append(int(match.group(1)))
        return uids

    def _select(self, conn: imaplib.IMAP4, folder: str) -> None:
        self._check(conn.select(_quote(folder), readonly=True), f"SELECT {folder}")

    def uids(self, user: str, folder: str = "INBOX") -> list[int]:
        with self.session(user) as conn:
            self._select(conn, folder)
            data = self._check(conn.uid("SEARCH", "ALL"), "UID SEARCH")
            return sorted(int(uid) for uid in data[0].split())

    def messages(self, user: str, folder: str = "INBOX") -> list[bytes]:
        """The raw bytes of every message in the folder, in UID order."""
        return list(self.messages_by_uid(user, folder).values())

    def messages_by_uid(self, user: str, folder: str = "INBOX") -> dict[int, bytes]:
        with self.session(user) as conn:
            self._select(conn, folder)
            data = self._check(conn.uid("FETCH", "1:*", "(UID BODY.PEEK[])"), "UID FETCH")
            found: dict[int, bytes] = {}
            for item in data:
                if isinstance(item, tuple):
                    match = re.search(rb"UID (\d+)", item[0])
                    assert match, item
                    found[int(match.group(1))] = item[1]
            return dict(sorted(found.items()))

    def flags(self, user: str, folder: str = "INBOX") -> dict[int, set[str]]:
        with self.session(user) as conn:
            self._select(conn, folder)
            data = self._check(conn.uid("FETCH", "1:*", "(UID FLAGS)"), "UID FETCH FLAGS")
            found: dict[int, set[str]] = {}
            for item in data:
                if not item:
                    continue
                match = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+)", item)
                assert match, item
                uid = match.group(1) or match.group(4)
                names = match.group(2) if match.group(1) else match.group(3)
                found[int(uid)] = set(names.decode().split())
            return found

    def folders(self, user: str) -> list[str]:
        with self.session(user) as conn:
            data = self._check(conn.list(), "LIST")
            names = []
            for line in data:
                match = re.match(rb'\([^)]*\) (?:NIL|"(?:[^"\\]|\\.)*") (.*)$', line)
                assert match, line
                name = match.group(1).decode()
                if name.startswith('"'):
                    name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
                names.append(name)
            return sorted(names)

    def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        with self.session(user) as conn:
            data = self._check(conn.status(_quote(folder), "(UIDVALIDITY)"), "STATUS")
            match = re.search(rb"UIDVALIDITY (\d+)", data[0])
            assert match, data
            return int(match.group(1))

    def create_folder(self, user: str, folder: str) -> None:
        with self.session(user) as conn:
            self._check(conn.create(_quote(folder)), f"CREATE {folder}")

    def delete_folder(self, user: str, folder: str) -> None:
        with self.session(user) as conn:
            self._check(conn.delete(_quote(folder)), f"DELETE {folder}")


@dataclass
class Mailbox:
    """One test's own user on the shared server, with the helpers bound to that user."""

    server: DovecotServer
    user: str

    @property
    def password(self) -> str:
        return self.server.passwords[self.user]

    def settings(self, security: str = "tls", **overrides: Any) -> ImapSettings:
        values: dict[str, Any] = {
            "host": self.server.host,
            "port": self.server.tls_port if security == "tls" else self.server.port,
            "security": security,
            "ca_file": self.server.ca_file if security == "tls" else None,
            "user": self.user,
            "password": self.password,
            "timeout_seconds": 10.0,
        }
        values.update(overrides)
        return ImapSettings(**values)

    def append(self, data: bytes, folder: str = "INBOX", flags: str = "") -> int:
        return self.server.append(self.user, folder, data, flags)

    def append_many(self, messages: Iterable[bytes], folder: str = "INBOX") -> list[int]:
        return self.server.append_many(self.user, folder, messages)

    def uids(self, folder: str = "INBOX") -> list[int]:
        return self.server.uids(self.user, folder)

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        return self.server.messages(self.user, folder)

    def flags(self, folder: str = "INBOX") -> dict[int, set[str]]:
        return self.server.flags(self.user, folder)

    def folders(self) -> list[str]:
        return self.server.folders(self.user)

    def uidvalidity(self, folder: str = "INBOX") -> int:
        return self.server.uidvalidity(self.user, folder)

    def create_folder(self, folder: str) -> None:
        self.server.create_folder(self.user, folder)

    def delete_folder(self, folder: str) -> None:
        self.server.delete_folder(self.user, folder)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Dovecot is required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    try:
        server = DovecotServer()
    except DovecotUnavailable as error:
        _unavailable(str(error))
        raise  # unreachable: skip/fail raise
    atexit.register(server.cleanup)  # also when the session ends abnormally
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
        atexit.unregister(server.cleanup)


@pytest.fixture
def mailbox(dovecot: DovecotServer) -> Mailbox:
    return Mailbox(dovecot, dovecot.new_user())
