"""SmtpSender against a real aiosmtpd server, and retry_delay's bounds."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiosmtplib.protocol import normalize_message_line_endings
from structlog.testing import capture_logs

from mailbridge.adapters.smtp import SendResult, SendStatus, SmtpSender, retry_delay
from mailbridge.records import OutgoingMail
from mailbridge.settings import SmtpSettings
from tests.servers.smtp import SINK_PASSWORD, SmtpSink

pytestmark = pytest.mark.integration

SinkFactory = Callable[..., SmtpSink]

# CRLF line ends, a line that starts with a dot (dot-stuffing must round-trip), 8-bit UTF-8.
ACK = (
    b"From: Support <support@example.com>\r\n"
    b"To: Ana <ana@example.org>\r\n"
    b"Subject: [#MB-000042] We got your message\r\n"
    b"Message-ID: <ack-42@mailbridge.invalid>\r\n"
    b"Auto-Submitted: auto-replied\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Bun\xc4\x83 ziua, Ana.\r\n"
    b".a line that starts with a dot\r\n"
    b"..and one with two\r\n"
    b"\r\n"
    b"-- \r\n"
    b"Support\r\n"
)


def outgoing(*rcpt: str, mail_from: str = "bounces@example.com", number: int = 42) -> OutgoingMail:
    """The ACK message, its Message-ID numbered, to `rcpt` (Ana when none given)."""
    message_id = f"<ack-{number}@mailbridge.invalid>"
    return OutgoingMail(
        kind="ack",
        message_id=message_id,
        mail_from=mail_from,
        rcpt_to=rcpt or ("ana@example.org",),
        data=ACK.replace(b"<ack-42@mailbridge.invalid>", message_id.encode()),
    )


@pytest.fixture
async def open_sender() -> AsyncIterator[Callable[[SmtpSettings], SmtpSender]]:
    """Make SmtpSenders that are closed after the test."""
    senders: list[SmtpSender] = []

    def make(settings: SmtpSettings) -> SmtpSender:
        sender = SmtpSender(settings)
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        await sender.close()


@pytest.fixture
def sender(smtp_sink: SmtpSink, open_sender: Callable[[SmtpSettings], SmtpSender]) -> SmtpSender:
    return open_sender(smtp_sink.settings())


def assert_sent(result: SendResult) -> None:
    assert result.status == SendStatus.SENT, result
    assert result.detail.startswith("250 ")
    assert result.refused == ()
    assert not result.maybe_delivered


# --- delivery ----------------------------------------------------------------------------


async def test_send_arrives_byte_exact_with_its_envelope(
    smtp_sink: SmtpSink, sender: SmtpSender
) -> None:
    result = await sender.send(outgoing("ana@example.org", "team@example.com"))

    assert_sent(result)
    [received] = smtp_sink.messages
    assert received.data == ACK
    assert received.mail_from == "bounces@example.com"
    assert received.rcpt_tos == ("ana@example.org", "team@example.com")
    assert "BODY=8BITMIME" in received.mail_options
    message = received.message
    assert message["Message-ID"] == "<ack-42@mailbridge.invalid>"
    assert message["Subject"] == "[#MB-000042] We got your message"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message.get_content() == ACK.partition(b"\r\n\r\n")[2].decode("utf-8")
    assert "Bună ziua, Ana.\r\n.a line that starts with a dot\r\n..and one" in message.get_content()


async def test_null_sender_goes_out_as_empty_reverse_path(
    smtp_sink: SmtpSink, sender: SmtpSender
) -> None:
    result = await sender.send(outgoing(mail_from=""))

    assert_sent(result)
    [received] = smtp_sink.messages
    assert received.mail_from == ""
    assert received.data == ACK


async def test_bare_line_ends_and_a_leading_dot_go_out_as_aiosmtplib_would_send_them(
    smtp_sink: SmtpSink, sender: SmtpSender
) -> None:
    data = b".a first line starting with a dot\nbare LF\rlone CR\r\n.\r\nno final line end"
    mail = OutgoingMail("ack", "<ack-7@mailbridge.invalid>", "bounces@example.com", ("a@b",), data)

    assert_sent(await sender.send(mail))

    [received] = smtp_sink.messages
    wire = b".a first line starting with a dot\r\nbare LF\r\nlone CR\r\n.\r\nno final line end\r\n"
    assert received.data == wire == normalize_message_line_endings(data)
    assert f"SIZE={len(wire)}" in [option.upper() for option in received.mail_options]


async def test_one_connection_carries_three_sends(smtp_sink: SmtpSink, sender: SmtpSender) -> None:
    results = [await sender.send(outgoing(number=n)) for n in range(3)]

    assert [r.status for r in results] == [SendStatus.SENT] * 3
    assert smtp_sink.connections == 1
    assert [m.connection for m in smtp_sink.messages] == [1, 1, 1]
    assert [m.message["Message-ID"] for m in smtp_sink.messages] == [
        f"<ack-{n}@mailbridge.invalid>" for n in range(3)
    ]


async def test_utf8_address_asks_for_smtputf8(smtp_sink: SmtpSink, sender: SmtpSender) -> None:
    result = await sender.send(outgoing("ioana.bălan@example.ro"))

    assert_sent(result)
    [received] = smtp_sink.messages
    assert received.rcpt_tos == ("ioana.bălan@example.ro",)
    assert "SMTPUTF8" in received.mail_options


@pytest.mark.parametrize(
    "address",
    ["ana@example.org>\r\nRCPT TO:<evil@example.net", "ana@exam ple.org", "Ana <ana@example.org>"],
)
async def test_address_that_would_be_rewritten_fails_without_sending(
    smtp_sink: SmtpSink, sender: SmtpSender, address: str
) -> None:
    result = await sender.send(outgoing(address))

    assert result.status == SendStatus.FAILED
    assert result.detail.startswith("invalid address")
    assert smtp_sink.connections == 0


# --- classification of replies -----------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "code", "text"),
    [
        ("mail", 421, "4.3.2 Service shutting down"),
        ("mail", 451, "4.3.0 Try again later"),
        ("rcpt", 450, "4.2.1 Mailbox busy"),
        ("data", 451, "4.3.0 Queue full"),
    ],
)
async def test_temporary_reply_means_retry(
    smtp_sink: SmtpSink, sender: SmtpSender, stage: Any, code: int, text: str
) -> None:
    smtp_sink.reply(code, text, stage=stage)

    result = await sender.send(outgoing())

    assert result.status == SendStatus.RETRY
    assert f"{code} {text}" in result.detail
    assert not result.maybe_delivered
    assert smtp_sink.messages == []


@pytest.mark.parametrize(
    ("stage", "code", "text"),
    [
        ("mail", 553, "5.1.8 Sender address rejected"),
        ("rcpt", 550, "5.1.1 No such user here"),
        ("data", 554, "5.7.1 Message rejected as spam"),
    ],
)
async def test_permanent_reply_means_failed_with_the_server_text(
    smtp_sink: SmtpSink, sender: SmtpSender, stage: Any, code: int, text: str
) -> None:
    smtp_sink.reply(code, text, stage=stage)

    result = await sender.send(outgoing())

    assert result.status == SendStatus.FAILED
    assert f"{code} {text}" in result.detail
    assert smtp_sink.messages == []


async def test_connection_stays_usable_after_a_refusal(
    smtp_sink: SmtpSink, sender: SmtpSender
) -> None:
    smtp_sink.reply(550, "5.1.1 No such user here", stage="rcpt", times=1)
    assert (await sender.send(outgoing())).status == SendStatus.FAILED

    assert_sent(await sender.send(outgoing()))
    assert smtp_sink.connections == 1


async def test_partial_refusal_is_sent_and_names_the_refused(
    smtp_sink: SmtpSink, sender: SmtpSender
) -> None:
    smtp_sink.reply(550, "5.1.1 No such user", stage="rcpt", recipients={"gone@example.org"})

    result = await sender.send(outgoing("ana@example.org", "gone@example.org", "bo@example.org"))

    assert result.status == SendStatus.SENT
    assert result.refused == ("gone@example.org",)
    assert "gone@example.org: 550 5.1.1 No such user" in result.detail
    [received] = smtp_sink.messages
    assert received.rcpt_tos == ("ana@example.org", "bo@example.org")


async def test_every_recipient_refused_goes_by_code(
    smtp_sink: SmtpSink, sender: SmtpSender
) -> None:
    gone = {"gone@example.org", "left@example.org"}
    smtp_sink.reply(550, "5.1.1 No such user", stage="rcpt", recipients=gone)
    result = await sender.send(outgoing("gone@example.org", "left@example.org"))
    assert result.status == SendStatus.FAILED
    assert result.refused == ("gone@example.org", "left@example.org")

    smtp_sink.reply(452, "4.2.2 Over quota", stage="rcpt", recipients={"full@example.org"})
    result = await sender.send(outgoing("full@example.org"))
    assert result.status == SendStatus.RETRY
    assert result.refused == ("full@example.org",)
    assert "452 4.2.2 Over quota" in result.detail


# --- the network -------------------------------------------------------------------------


async def test_server_down_means_retry_and_up_again_means_sent(
    smtp_sink: SmtpSink, sender: SmtpSender
) -> None:
    assert_sent(await sender.send(outgoing(number=1)))
    smtp_sink.stop()

    down = await sender.send(outgoing(number=2))

    assert down.status == SendStatus.RETRY
    assert down.detail.startswith("connect failed")
    assert not down.maybe_delivered

    smtp_sink.start()
    assert_sent(await sender.send(outgoing(number=3)))
    assert [m.message["Message-ID"] for m in smtp_sink.messages] == [
        "<ack-1@mailbridge.invalid>",
        "<ack-3@mailbridge.invalid>",
    ]


async def test_dropped_idle_connection_is_replaced_transparently(
    smtp_sink: SmtpSink, sender: SmtpSender
) -> None:
    assert_sent(await sender.send(outgoing(number=1)))
    smtp_sink.drop_connections()

    assert_sent(await sender.send(outgoing(number=2)))
    assert smtp_sink.connections == 2
    assert [m.connection for m in smtp_sink.messages] == [1, 2]


async def test_pooled_connection_cut_at_mail_is_retried_once_on_a_fresh_one(
    smtp_sink: SmtpSink, sender: SmtpSender
) -> None:
    assert_sent(await sender.send(outgoing(number=1)))
    smtp_sink.drop("mail", times=1)

    with capture_logs() as logs:
        result = await sender.send(outgoing(number=2))

    assert_sent(result)
    assert [m.connection for m in smtp_sink.messages] == [1, 2]
    assert [e["event"] for e in logs if e["event"] == "smtp_reconnecting"] == ["smtp_reconnecting"]


async def test_fresh_connection_cut_before_data_is_retry_not_maybe_delivered(
    smtp_sink: SmtpSink, sender: SmtpSender
) -> None:
    smtp_sink.drop("rcpt")

    result = await sender.send(outgoing())

    assert result.status == SendStatus.RETRY
    assert not result.maybe_delivered
    assert smtp_sink.connections == 1  # a fresh connection is not retried at once
    assert smtp_sink.seen == []


async def test_drop_after_final_dot_is_retry_maybe_delivered(
    smtp_sink: SmtpSink, sender: SmtpSender
) -> None:
    smtp_sink.drop_after_data()

    result = await sender.send(outgoing())

    assert result.status == SendStatus.RETRY
    assert result.maybe_delivered
    assert "may have arrived" in result.detail
    assert smtp_sink.messages == []
    [seen] = smtp_sink.seen
    assert seen.data == ACK

    smtp_sink.accept()
    assert_sent(await sender.send(outgoing()))
    assert smtp_sink.connections == 2


async def test_no_reply_after_final_dot_times_out_as_maybe_delivered(
    smtp_sink: SmtpSink, open_sender: Callable[[SmtpSettings], SmtpSender]
) -> None:
    sender = open_sender(smtp_sink.settings(timeout_seconds=0.5))
    smtp_sink.hang_after_data()

    result = await sender.send(outgoing())

    assert result.status == SendStatus.RETRY
    assert result.maybe_delivered
    assert "Timed out" in result.detail
    assert len(smtp_sink.seen) == 1
    assert smtp_sink.messages == []


async def test_close_then_send_opens_a_new_connection(
    smtp_sink: SmtpSink, sender: SmtpSender
) -> None:
    assert_sent(await sender.send(outgoing()))
    await sender.close()
    await sender.close()  # idempotent

    assert_sent(await sender.send(outgoing()))
    assert smtp_sink.connections == 2


# --- TLS and AUTH ------------------------------------------------------------------------


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_tls_with_the_ca_file_delivers(
    smtp_sink_factory: SinkFactory,
    open_sender: Callable[[SmtpSettings], SmtpSender],
    security: str,
) -> None:
    sink = smtp_sink_factory(security=security)
    sender = open_sender(sink.settings())

    assert_sent(await sender.send(outgoing()))
    [received] = sink.messages
    assert received.secure
    assert received.data == ACK


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_tls_with_the_wrong_ca_is_retry_and_sends_nothing(
    smtp_sink_factory: SinkFactory,
    open_sender: Callable[[SmtpSettings], SmtpSender],
    security: str,
) -> None:
    # RETRY, not FAILED: the certificate is about the server and our configuration, not this
    # message; FAILED would fail every queued ack for good until someone replays them.
    sink = smtp_sink_factory(security=security)
    assert sink.tls_files is not None
    sender = open_sender(sink.settings(ca_file=sink.tls_files.other_ca_file))

    result = await sender.send(outgoing())

    assert result.status == SendStatus.RETRY
    assert "CERTIFICATE_VERIFY_FAILED" in result.detail
    assert sink.seen == []


async def test_starttls_required_but_not_offered_never_falls_back_to_plain(
    smtp_sink: SmtpSink, open_sender: Callable[[SmtpSettings], SmtpSender]
) -> None:
    sender = open_sender(smtp_sink.settings(security="starttls"))

    result = await sender.send(outgoing())

    assert result.status == SendStatus.RETRY
    assert "STARTTLS" in result.detail
    assert smtp_sink.seen == []


async def test_plain_never_upgrades_even_when_starttls_is_offered(
    smtp_sink_factory: SinkFactory, open_sender: Callable[[SmtpSettings], SmtpSender]
) -> None:
    sink = smtp_sink_factory(security="starttls", require_starttls=False)
    sender = open_sender(sink.settings(security="plain"))

    assert_sent(await sender.send(outgoing()))
    assert not sink.messages[0].secure


@pytest.mark.parametrize("security", ["plain", "starttls"])
async def test_auth_with_the_right_credentials_delivers(
    smtp_sink_factory: SinkFactory,
    open_sender: Callable[[SmtpSettings], SmtpSender],
    security: str,
) -> None:
    sink = smtp_sink_factory(security=security, auth=True)
    sender = open_sender(sink.settings())

    with capture_logs() as logs:
        result = await sender.send(outgoing())

    assert_sent(result)
    assert sink.messages[0].login == sink.user
    assert SINK_PASSWORD not in repr(logs)


async def test_auth_with_a_wrong_password_is_retry_and_never_logs_it(
    smtp_sink_factory: SinkFactory, open_sender: Callable[[SmtpSettings], SmtpSender]
) -> None:
    sink = smtp_sink_factory(auth=True)
    sender = open_sender(sink.settings(password="not-the-Passw0rd"))

    with capture_logs() as logs:
        result = await sender.send(outgoing())

    assert result.status == SendStatus.RETRY
    assert "535" in result.detail
    assert "not-the-Passw0rd" not in repr(logs) + result.detail
    assert sink.seen == []


async def test_missing_auth_is_retried_not_failed_for_good(
    smtp_sink_factory: SinkFactory, open_sender: Callable[[SmtpSettings], SmtpSender]
) -> None:
    # 530 means our settings lack credentials: every queued ack would fail for good if it
    # counted as the message's fault. It also guards the AUTH tests above.
    sink = smtp_sink_factory(auth=True)
    sender = open_sender(sink.settings(user="", password=""))

    result = await sender.send(outgoing())

    assert result.status == SendStatus.RETRY
    assert "530" in result.detail
    assert sink.messages == []


# --- retry_delay -------------------------------------------------------------------------


def test_retry_delay_stays_within_its_window() -> None:
    rng = random.Random(7)
    for attempt in range(1, 30):
        ceiling = min(3600.0, 30.0 * 2**attempt)
        for _ in range(50):
            delay = retry_delay(attempt, 30.0, 3600.0, rng)
            assert 30.0 <= delay <= ceiling


def test_retry_delay_never_exceeds_the_cap_even_for_huge_attempts() -> None:
    rng = random.Random(1)
    assert all(retry_delay(10_000, 30.0, 3600.0, rng) <= 3600.0 for _ in range(100))
    assert retry_delay(3, 30.0, 10.0, rng) == 10.0  # a cap below the base wins


def test_retry_delay_grows_with_the_attempt() -> None:
    def mean(attempt: int) -> float:
        rng = random.Random(attempt)
        return sum(retry_delay(attempt, 1.0, 1000.0, rng) for _ in range(2000)) / 2000

    means = [mean(attempt) for attempt in range(1, 8)]
    assert means == sorted(means)
    assert means[-1] > 10 * means[0]


def test_retry_delay_is_jittered_and_reproducible() -> None:
    first = [retry_delay(4, 30.0, 3600.0, random.Random(5)) for _ in range(3)]
    again = [retry_delay(4, 30.0, 3600.0, random.Random(5)) for _ in range(3)]
    spread = {retry_delay(4, 30.0, 3600.0, random.Random(seed)) for seed in range(20)}

    assert first == again
    assert len(spread) == 20


@pytest.mark.parametrize(("attempt", "base", "cap"), [(0, 1.0, 2.0), (1, 0.0, 2.0), (1, 1.0, 0.0)])
def test_retry_delay_rejects_nonsense(attempt: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError, match=r"attempt|positive"):
        retry_delay(attempt, base, cap)
