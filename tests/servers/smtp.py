"""A real aiosmtpd server for tests: records what it accepts and fails on demand."""

from __future__ import annotations

import asyncio
import email.policy
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Literal

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailbridge.settings import SmtpSecurity, SmtpSettings

Stage = Literal["mail", "rcpt", "data"]
Security = Literal["plain", "starttls", "tls"]

SINK_HOST = "127.0.0.1"
SINK_USER = "mailbridge@example.test"
SINK_PASSWORD = "sink-Passw0rd-7c1f"
_HANG_SECONDS = 3600.0  # "forever": ended by the client timing out, a drop, or stop()


@dataclass(frozen=True)
class ReceivedMail:
    """One message the sink saw after the final dot, with its envelope as the server read it."""

    mail_from: str  # "" for the null reverse-path MAIL FROM:<>
    rcpt_tos: tuple[str, ...]
    data: bytes  # exactly the bytes of the DATA phase, dot-unstuffed, final dot removed
    mail_options: tuple[str, ...]
    connection: int  # which accepted TCP connection carried it, counting from 1
    secure: bool  # the session was under TLS (implicit or after STARTTLS)
    login: str | None  # the AUTH user, when the client logged in
    message: EmailMessage = field(repr=False)


@dataclass(frozen=True)
class TlsFiles:
    """A throw-away CA, a server certificate it signed (localhost, 127.0.0.1), and another CA."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    other_ca_file: Path  # signed nothing the sink serves: a client trusting it must fail


@dataclass
class _Fault:
    kind: Literal["reply", "drop", "hang"]
    stage: Stage
    code: int = 0
    text: str = ""
    recipients: frozenset[str] | None = None
    remaining: int | None = None  # None: until accept() is called


class _SinkSMTP(SMTP):
    """aiosmtpd's SMTP with the number of the connection it serves."""

    connection_number = 0


class _SinkController(Controller):
    def __init__(self, sink: SmtpSink, **kwargs: Any) -> None:
        super().__init__(_Handler(sink), **kwargs)
        self._sink = sink

    def factory(self) -> _SinkSMTP:
        server = _SinkSMTP(self.handler, **self.SMTP_kwargs)
        self._sink._register(server)
        return server


class _Handler:
    """aiosmtpd hooks; they run on the server's own thread and loop."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_MAIL(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if self._sink.auth_required and not session.authenticated:
            return "530 5.7.0 Authentication required"
        status = await self._sink._fault("mail", server)
        if status:
            return status
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        status = await self._sink._fault("rcpt", server, address)
        if status:
            return status
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        auth = session.auth_data
        mail = ReceivedMail(
            mail_from="" if envelope.mail_from in (None, "<>") else envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=data,
            mail_options=tuple(envelope.mail_options),
            connection=server.connection_number,
            secure=_is_tls(server.transport),
            login=auth.login.decode() if isinstance(auth, LoginPassword) else None,
            message=BytesParser(policy=email.policy.default).parsebytes(data),
        )
        self._sink._saw(mail)
        status = await self._sink._fault("data", server)
        if status:
            return status
        number = self._sink._accept(mail)
        return f"250 2.0.0 OK queued as SINK{number}"


class SmtpSink:
    """An aiosmtpd server on 127.0.0.1 that records mail and fails on demand.

    Faults (switch at any time, from the test's thread): `accept()`, `reply(code, text,
    stage=..., recipients=..., times=...)`, `drop(stage)` / `drop_after_data()`,
    `hang_after_data()`; `stop()` / `start()` take it down and up on the same port;
    `drop_connections()` cuts live connections and keeps listening.
    """

    def __init__(
        self,
        *,
        security: Security = "plain",
        auth: bool = False,
        require_starttls: bool = True,
        tls_files: TlsFiles | None = None,
    ) -> None:
        if security != "plain" and tls_files is None:
            raise ValueError(f"security={security!r} needs tls_files")
        self.host = SINK_HOST
        self.port = _free_port()
        self.security: Security = security
        self.auth_required = auth
        self.user = SINK_USER if auth else ""
        self.password = SINK_PASSWORD if auth else ""
        self.tls_files = tls_files
        self._require_starttls = require_starttls
        self._lock = threading.Lock()
        self._messages: list[ReceivedMail] = []
        self._seen: list[ReceivedMail] = []
        self._servers: list[_SinkSMTP] = []
        self._fault_now: _Fault | None = None
        self._controller: _SinkController | None = None
        self._starting = False

    # --- what the sink saw -------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMail]:
        """Messages the sink accepted (answered 250 after the final dot), in order."""
        with self._lock:
            return list(self._messages)

    @property
    def seen(self) -> list[ReceivedMail]:
        """Every message whose final dot arrived, accepted or not (dropped, refused, hung)."""
        with self._lock:
            return list(self._seen)

    @property
    def connections(self) -> int:
        """TCP connections accepted so far (the Controller's start-up probe not counted)."""
        with self._lock:
            return len(self._servers)

    @property
    def ca_file(self) -> Path | None:
        return self.tls_files.ca_file if self.tls_files else None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()
            self._seen.clear()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMail]:  # noqa: ASYNC109
        """Wait until at least `count` messages were accepted; return them all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(messages := self.messages) < count:
            if loop.time() >= deadline:
                raise TimeoutError(f"sink accepted {len(messages)} of {count} messages")
            await asyncio.sleep(0.01)
        return messages

    def settings(self, **overrides: Any) -> SmtpSettings:
        """SmtpSettings that reach this sink with its security, CA file and credentials."""
        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "security": SmtpSecurity(self.security),
            "ca_file": self.ca_file,
            "user": self.user,
            "password": self.password,
            "local_hostname": "mailbridge.test",
            "timeout_seconds": 5.0,
        }
        values.update(overrides)
        return SmtpSettings(**values)

    # --- faults ------------------------------------------------------------------------

    def accept(self) -> None:
        """Back to normal: accept everything."""
        with self._lock:
            self._fault_now = None

    def reply(
        self,
        code: int,
        text: str,
        *,
        stage: Stage = "data",
        recipients: set[str] | frozenset[str] | None = None,
        times: int | None = None,
    ) -> None:
        """Answer `code text` at MAIL, RCPT (only to `recipients` when given) or after DATA."""
        wanted = frozenset(r.lower() for r in recipients) if recipients is not None else None
        self._set(_Fault("reply", stage, code, text, wanted, times))

    def drop(self, stage: Stage = "data", *, times: int | None = None) -> None:
        """Cut the connection without answering: on MAIL, on RCPT, or after the final dot."""
        self._set(_Fault("drop", stage, remaining=times))

    def drop_after_data(self, *, times: int | None = None) -> None:
        """Take all the bytes and the final dot, then cut the connection without a reply."""
        self.drop("data", times=times)

    def hang_after_data(self) -> None:
        """Take the final dot and never answer (until the client gives up or stop())."""
        self._set(_Fault("hang", "data"))

    def _set(self, fault: _Fault) -> None:
        with self._lock:
            self._fault_now = fault

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Listen (again) on the same port."""
        if self._controller is not None:
            return
        kwargs: dict[str, Any] = {
            "hostname": self.host,
            "port": self.port,
            "server_hostname": "sink.test",  # the default calls getfqdn()
            "authenticator": self._authenticate,
            "auth_require_tls": self.security == "starttls",
        }
        if self.security != "plain":
            assert self.tls_files is not None
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.tls_files.cert_file, self.tls_files.key_file)
            if self.security == "tls":
                kwargs["ssl_context"] = context
            else:
                kwargs["tls_context"] = context
                kwargs["require_starttls"] = self._require_starttls
        controller = _SinkController(self, **kwargs)
        self._starting = True
        try:
            controller.start()
        finally:
            self._starting = False
        self._controller = controller

    def stop(self) -> None:
        """Cut every connection and stop listening; start() listens again on the same port."""
        controller, self._controller = self._controller, None
        if controller is None:
            return
        self._cut_all(controller)
        controller.stop()

    def drop_connections(self) -> None:
        """Cut every live connection (as an idle timeout or a restart would); keep listening."""
        if self._controller is not None:
            self._cut_all(self._controller)

    def _cut_all(self, controller: _SinkController) -> None:
        future = asyncio.run_coroutine_threadsafe(self._abort_live(), controller.loop)
        future.result(timeout=10)

    async def _abort_live(self) -> None:
        with self._lock:
            live = [server for server in self._servers if server.transport is not None]
        for server in live:
            _abort(server)
        for _ in range(500):  # connection_lost runs on a later turn of this loop
            if all(server.transport is None for server in live):
                return
            await asyncio.sleep(0.01)

    # --- called from the handler, on the server's thread ----------------------------------

    def _register(self, server: _SinkSMTP) -> None:
        if self._starting:
            return  # the Controller's own start-up probe
        with self._lock:
            self._servers.append(server)
            server.connection_number = len(self._servers)

    def _saw(self, mail: ReceivedMail) -> None:
        with self._lock:
            self._seen.append(mail)

    def _accept(self, mail: ReceivedMail) -> int:
        with self._lock:
            self._messages.append(mail)
            return len(self._messages)

    async def _fault(self, stage: Stage, server: _SinkSMTP, recipient: str | None = None) -> str:
        with self._lock:
            fault = self._fault_now
            if fault is None or fault.stage != stage:
                return ""
            if fault.recipients is not None and (recipient or "").lower() not in fault.recipients:
                return ""
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._fault_now = None
        if fault.kind == "reply":
            return f"{fault.code} {fault.text}"
        if fault.kind == "drop":
            _abort(server)
        # Dropped or hanging: wait until connection_lost() cancels this handler.
        await asyncio.sleep(_HANG_SECONDS)
        return "421 4.4.2 sink gave up waiting"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            self.auth_required
            and isinstance(data, LoginPassword)
            and data.login == self.user.encode()
            and data.password == self.password.encode()
        )
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)


def _abort(server: SMTP) -> None:
    """Cut the connection at once (no TLS close_notify, no waiting for the client)."""
    if isinstance(server.transport, asyncio.Transport):
        server.transport.abort()


def _is_tls(transport: asyncio.BaseTransport | None) -> bool:
    return transport is not None and transport.get_extra_info("sslcontext") is not None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((SINK_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, a server certificate for localhost and 127.0.0.1 signed by it, and a second CA."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "openssl.cnf"
    config.write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n"
        "[ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\n"
        "[server]\nbasicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n"
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
    )

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    def key(path: Path) -> Path:
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
        return path

    def ca(name: str) -> tuple[Path, Path]:
        ca_key, ca_cert = key(directory / f"{name}.key"), directory / f"{name}.pem"
        subject = f"/CN=mailbridge test {name}"
        openssl(
            *("req", "-config", config, "-x509", "-new", "-key", ca_key, "-sha256", "-days", "2"),
            *("-subj", subject, "-extensions", "ca", "-out", ca_cert),
        )
        return ca_key, ca_cert

    ca_key, ca_cert = ca("ca")
    _, other_ca = ca("other-ca")
    server_key, csr, cert = (
        key(directory / "server.key"),
        directory / "server.csr",
        directory / "server.pem",
    )
    openssl(
        "req", "-config", config, "-new", "-key", server_key, "-subj", "/CN=localhost", "-out", csr
    )
    openssl(
        *("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-set_serial", "2"),
        *("-days", "2", "-sha256", "-extfile", config, "-extensions", "server", "-out", cert),
    )
    return TlsFiles(ca_file=ca_cert, cert_file=cert, key_file=server_key, other_ca_file=other_ca)


@pytest.fixture(scope="session")
def smtp_tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """One throw-away CA and server certificate for the whole run."""
    return make_tls_files(tmp_path_factory.mktemp("smtp-tls"))


@pytest.fixture
def smtp_sink_factory(request: pytest.FixtureRequest) -> Iterator[Any]:
    """`make(security="plain"|"starttls"|"tls", auth=False, require_starttls=True)`: a started sink.

    Every sink made is stopped after the test.
    """
    sinks: list[SmtpSink] = []

    def make(**options: Any) -> SmtpSink:
        if options.get("security", "plain") != "plain":
            options.setdefault("tls_files", request.getfixturevalue("smtp_tls_files"))
        sink = SmtpSink(**options)
        sink.start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.stop()


@pytest.fixture
def smtp_sink(smtp_sink_factory: Any) -> SmtpSink:
    """A started plain sink without AUTH, stopped after the test."""
    sink: SmtpSink = smtp_sink_factory()
    return sink
