"""The only module that speaks SMTP: sends outbox mail over one pooled aiosmtplib connection."""

from __future__ import annotations

import asyncio
import random
import re
import ssl
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Literal

from aiosmtplib import (
    SMTP,
    SMTPAuthenticationError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupported,
    SMTPRecipientsRefused,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPStatus,
    SMTPTimeoutError,
)
from aiosmtplib.email import parse_address
from aiosmtplib.protocol import SMTPProtocol, normalize_message_line_endings
from aiosmtplib.typing import Default

from mailbridge.adapters.oauth import OAuthError, TokenSource
from mailbridge.logs import FilteringBoundLogger, get_logger
from mailbridge.records import OutgoingMail
from mailbridge.settings import SmtpSecurity, SmtpSettings

log = get_logger(__name__)

_LEADING_DOT = re.compile(rb"(?m)^\.")
# Unbounded exponents overflow floats; 2**64 times any sane base is far above any cap.
_MAX_EXPONENT = 64
_CLOSE_WAIT_SECONDS = 2.0


class SendStatus(StrEnum):
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SendResult:
    """How one send ended, for the outbox: SENT, RETRY later, or FAILED for good.

    `detail` is the server's reply (code and text) or the network error, never credentials.
    `refused` lists recipients the server refused while it accepted others (the send is
    SENT), or every refused recipient when it accepted none. `maybe_delivered` is true when
    the connection died or timed out after the whole message and its final dot were
    written: the server may have queued it, so a resend may duplicate it (the stable
    Message-ID lets the receiving side drop the copy).
    """

    status: SendStatus
    detail: str
    refused: tuple[str, ...] = ()
    maybe_delivered: bool = False


class _Connection(SMTP):
    """aiosmtplib's SMTP that records whether the message body went out.

    `SMTP.data` waits for the 354 and for the final reply inside one call, so a disconnect
    or timeout there cannot tell "never sent" from "sent, reply lost". This override sends
    the same bytes the same way (line endings normalised, leading dots doubled, ".") and
    sets `payload_sent` between the two waits. The caller holds its own lock, so no other
    command can interleave on the connection.
    """

    payload_sent: bool = False
    closing: list[SMTPProtocol] | None = None  # protocols closed here, for SmtpSender.close

    def close(self) -> None:
        if self.protocol is not None and self.closing is not None:
            self.closing.append(self.protocol)
        super().close()

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: float | Literal[Default.token] | None = Default.token,  # noqa: ASYNC109 (base signature)
    ) -> SMTPResponse:
        self.payload_sent = False
        if timeout is Default.token:
            timeout = self.timeout
        raw = message.encode("ascii") if isinstance(message, str) else message
        payload = _LEADING_DOT.sub(b"..", normalize_message_line_endings(raw)) + b".\r\n"
        start = await self.execute_command(b"DATA", timeout=timeout)
        if start.code != SMTPStatus.start_input:
            raise SMTPDataError(start.code, start.message)
        protocol = self.protocol
        if protocol is None:
            raise SMTPServerDisconnected("Connection lost")
        try:
            protocol.write(payload)
            self.payload_sent = True
            reply = await protocol.read_response(timeout=timeout)
        except (SMTPServerDisconnected, SMTPTimeoutError):
            self.close()
            raise
        if reply.code != SMTPStatus.completed:
            raise SMTPDataError(reply.code, reply.message)
        return reply


class _ConnectFailed(Exception):
    """Connecting, TLS, EHLO or AUTH failed; the message is not at fault."""


@dataclass(frozen=True, slots=True)
class _Outcome:
    result: SendResult
    stale: bool = False  # the connection died before any DATA: a fresh one may succeed


class SmtpSender:
    """Sends `OutgoingMail` over one kept-open connection, reconnecting when it was dropped.

    `send` never raises for SMTP or network trouble; it classifies it. Sends are serialised
    on the one connection. Failures that are not about the message (connect, TLS handshake
    or certificate, EHLO, AUTH) are always RETRY whatever the code: a wrong password or CA
    file must not fail every queued mail for good.
    """

    def __init__(self, settings: SmtpSettings, *, token_source: TokenSource | None = None) -> None:
        self._settings = settings
        self._token_source = token_source  # AUTH XOAUTH2 instead of the password when given
        self._connection: _Connection | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._closing: list[SMTPProtocol] = []  # closed, but the socket may still be open
        self._lock = asyncio.Lock()
        self._log = log.bind(smtp_host=settings.host, smtp_port=settings.port)

    async def __aenter__(self) -> SmtpSender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(self, mail: OutgoingMail) -> SendResult:
        """Send one message; reuse the open connection, or retry once on a fresh one."""
        logger = self._log.bind(message_id=mail.message_id, kind=mail.kind)
        problem = _envelope_problem(mail)
        if problem:
            logger.error("smtp_send_failed", detail=problem)
            return SendResult(SendStatus.FAILED, problem)
        async with self._lock:
            reused = self._connection is not None and self._connection.is_connected
            while True:
                try:
                    connection = await self._connected(logger)
                except _ConnectFailed as error:
                    result = SendResult(SendStatus.RETRY, str(error))
                    logger.warning("smtp_send_deferred", detail=result.detail)
                    return result
                outcome = await self._transaction(connection, mail)
                if outcome.stale and reused:
                    logger.info("smtp_reconnecting", detail=outcome.result.detail)
                    self._drop()
                    reused = False
                    continue
                self._log_result(logger, mail, outcome.result)
                return outcome.result

    async def close(self) -> None:
        """Say QUIT (bounded by the timeout) and drop the connection; `send` reopens it."""
        async with self._lock:
            connection, self._connection = self._connection, None
            if connection is not None and connection.is_connected:
                try:
                    await connection.quit(timeout=self._settings.timeout_seconds)
                except (SMTPException, OSError) as error:
                    self._log.debug("smtp_quit_failed", error=str(error))
                finally:
                    connection.close()
                self._log.debug("smtp_closed")
            await self._until_closed()

    async def _until_closed(self) -> None:
        """Wait until closed connections' sockets are really closed, so none outlives the loop.

        Closing a TLS transport first trades close_notify with the server; if the loop ends
        before that, the socket leaks (a ResourceWarning). Abort when the server is slow.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self._settings.timeout_seconds, _CLOSE_WAIT_SECONDS)
        while self._closing:
            self._closing[:] = [p for p in self._closing if p.transport is not None]
            if self._closing and loop.time() >= deadline:
                for protocol in self._closing:
                    if isinstance(protocol.transport, asyncio.Transport):
                        protocol.transport.abort()
                self._closing.clear()
                await asyncio.sleep(0)  # abort closes the socket on the next turn
            elif self._closing:
                await asyncio.sleep(0.005)

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _connected(self, logger: FilteringBoundLogger) -> _Connection:
        if self._connection is not None and self._connection.is_connected:
            return self._connection
        self._drop()
        settings = self._settings
        try:
            tls_context = await self._context() if settings.security != SmtpSecurity.PLAIN else None
        except (OSError, ValueError) as error:
            logger.error("smtp_tls_context_failed", error=str(error))
            raise _ConnectFailed(f"TLS set-up failed: {error}") from error
        self._closing[:] = [p for p in self._closing if p.transport is not None]
        password_login = bool(settings.user) and self._token_source is None
        connection = _Connection(
            hostname=settings.host,
            port=settings.port,
            local_hostname=settings.local_hostname,
            timeout=settings.timeout_seconds,
            use_tls=settings.security == SmtpSecurity.TLS,
            start_tls=settings.security == SmtpSecurity.STARTTLS,
            tls_context=tls_context,
            username=settings.user if password_login else None,
            password=settings.password.get_secret_value() if password_login else None,
        )
        connection.closing = self._closing
        try:
            await connection.connect()
            if connection.is_ehlo_or_helo_needed:
                try:
                    await connection.ehlo()
                except SMTPHeloError:
                    await connection.helo()
            if self._token_source is not None:
                await self._authenticate(connection, self._token_source, logger)
        except (SMTPException, OSError, OAuthError) as error:
            connection.close()
            detail = _describe(error)
            logger.warning("smtp_connect_failed", security=str(settings.security), detail=detail)
            raise _ConnectFailed(f"connect failed: {detail}") from error
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        logger.debug("smtp_connected", security=str(settings.security))
        return connection

    async def _authenticate(
        self, connection: _Connection, source: TokenSource, logger: FilteringBoundLogger
    ) -> None:
        """AUTH XOAUTH2 with the cached token and, if the server refuses it, a fresh one."""
        for fresh in (False, True):
            token = await source.token(fresh=fresh)
            try:
                await connection.auth_xoauth2(self._settings.user, token)
                return
            except SMTPAuthenticationError as error:
                if fresh:
                    raise
                logger.info("smtp_token_refused", detail=f"{error.code} {error.message}")

    async def _context(self) -> ssl.SSLContext:
        if self._tls_context is None:
            ca_file = self._settings.ca_file
            self._tls_context = await asyncio.to_thread(
                ssl.create_default_context, cafile=None if ca_file is None else str(ca_file)
            )
        return self._tls_context

    async def _transaction(self, connection: _Connection, mail: OutgoingMail) -> _Outcome:
        options = _mail_options(connection, mail)
        connection.payload_sent = False
        try:
            refused, reply = await connection.sendmail(
                mail.mail_from, list(mail.rcpt_to), mail.data, mail_options=options
            )
        except SMTPRecipientsRefused as error:
            codes = [item.code for item in error.recipients]
            detail = "; ".join(f"{i.recipient}: {i.code} {i.message}" for i in error.recipients)
            status = SendStatus.FAILED if all(_permanent(c) for c in codes) else SendStatus.RETRY
            result = SendResult(status, detail, tuple(i.recipient for i in error.recipients))
            return _Outcome(result, stale=SMTPStatus.domain_unavailable in codes)
        except SMTPNotSupported as error:  # an SMTPUTF8 address the server cannot take
            return _Outcome(SendResult(SendStatus.FAILED, error.message))
        except SMTPResponseException as error:
            if error.code == SMTPStatus.invalid_response:
                connection.close()  # the reply stream cannot be trusted any more
            status = SendStatus.FAILED if _permanent(error.code) else SendStatus.RETRY
            stale = error.code == SMTPStatus.domain_unavailable and not connection.payload_sent
            return _Outcome(SendResult(status, f"{error.code} {error.message}"), stale=stale)
        except (SMTPException, OSError) as error:
            connection.close()
            if connection.payload_sent:
                detail = f"{_describe(error)} after the final dot: the message may have arrived"
                return _Outcome(SendResult(SendStatus.RETRY, detail, maybe_delivered=True))
            stale = isinstance(error, ConnectionError)
            return _Outcome(SendResult(SendStatus.RETRY, _describe(error)), stale=stale)
        except ValueError as error:  # an address aiosmtplib refuses to put on the wire
            return _Outcome(SendResult(SendStatus.FAILED, f"invalid address: {error}"))
        except BaseException:
            connection.close()  # cancelled mid-transaction: the stream is out of step
            raise
        detail = f"{SMTPStatus.completed.value} {reply}"
        if refused:
            listed = "; ".join(f"{rcpt}: {r.code} {r.message}" for rcpt, r in refused.items())
            detail = f"{detail}; refused {listed}"
        return _Outcome(SendResult(SendStatus.SENT, detail, tuple(refused)))

    def _log_result(
        self,
        logger: FilteringBoundLogger,
        mail: OutgoingMail,
        result: SendResult,
    ) -> None:
        if result.status == SendStatus.SENT:
            # DEBUG: outbox_sent (INFO) has the reply; this line cost a twelfth of a send's CPU.
            logger.debug("smtp_sent", recipients=len(mail.rcpt_to), detail=result.detail)
            if result.refused:
                logger.warning("smtp_recipients_refused", refused=list(result.refused))
        elif result.status == SendStatus.RETRY:
            logger.warning(
                "smtp_send_deferred", detail=result.detail, maybe_delivered=result.maybe_delivered
            )
        else:
            logger.error("smtp_send_failed", detail=result.detail, refused=list(result.refused))


def retry_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1 = the first retry).

    Capped exponential backoff with full jitter above a floor: the delay is drawn uniformly
    from [base, min(cap, base * 2**attempt)], so the window doubles with each attempt until
    it reaches `cap`. Full jitter spreads the retries of many mails deferred by one outage;
    the floor of `base` (unlike AWS's [0, ceiling]) keeps a retry from coming back at once
    and burning an attempt against a server that just said "try later". When cap < base the
    delay is `cap`. `rng` makes the draw reproducible in tests.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if base <= 0 or cap <= 0:
        raise ValueError("base and cap must be positive")
    ceiling = min(cap, base * 2.0 ** min(attempt, _MAX_EXPONENT))
    floor = min(base, ceiling)
    draw = rng.uniform if rng is not None else random.uniform
    return draw(floor, ceiling)


def _envelope_problem(mail: OutgoingMail) -> str:
    """Why the envelope cannot go on the wire as given, or "".

    aiosmtplib parses addresses leniently ("a@b c" becomes "a@bc", "x>\\r\\nRCPT…" becomes
    "x"): send only what it would send unchanged, never a silently different address.
    """
    if not mail.rcpt_to:
        return "no recipients"
    for address in (mail.mail_from, *mail.rcpt_to):
        try:
            unchanged = parse_address(address) == address
        except ValueError:
            unchanged = False
        if not unchanged:
            return f"invalid address: {address!r}"
    return ""


def _mail_options(connection: SMTP, mail: OutgoingMail) -> list[str]:
    options: list[str] = []
    if not mail.data.isascii() and connection.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
    if not all(address.isascii() for address in (mail.mail_from, *mail.rcpt_to)):
        options.append("SMTPUTF8")  # sendmail raises SMTPNotSupported if the server lacks it
    return options


# 530/535/538: the server wants (other) authentication. That is our configuration, not the
# message: failing for good would fail every queued acknowledgement until an admin retries.
_CONFIGURATION_CODES = frozenset({530, 535, 538})


def _permanent(code: int) -> bool:
    return 500 <= code <= 599 and code not in _CONFIGURATION_CODES


def _describe(error: BaseException) -> str:
    if isinstance(error, SMTPResponseException):
        return f"{error.code} {error.message}"
    text = error.message if isinstance(error, SMTPException) else str(error)
    cause = error.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return text or type(error).__name__
