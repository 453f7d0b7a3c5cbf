"""Run the real daemon in a subprocess, with its own TOML config, and check the invariants.

The invariants every fault test ends with (the promises the README makes):

1. every injected Message-ID has exactly one inbound record, in a terminal state: a ticket,
   a follow-up, a rejection, or a quarantined record with its stage and error;
2. one ticket per ticket-making message, each with exactly one message;
3. at most one acknowledgement accepted by the SMTP sink per Message-ID of an ack and per
   message answered (exactly one when `acks="all"`);
4. INBOX is empty, and every message is in exactly one of Processed / Rejected / Quarantine,
   once, in the folder that matches its record.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import make_msgid
from pathlib import Path
from typing import Any, Literal

from mailbridge.settings import Settings, load_settings
from tests.integration.harness import make_mail, read_db, write_config
from tests.servers.dovecot import Mailbox
from tests.servers.smtp import SmtpSink

REPO = Path(__file__).resolve().parents[2]
LONG = os.environ.get("MAILBRIDGE_FAULT_LONG", "") not in ("", "0")
TERMINAL_DONE = {"ticket_created", "follow_up", "rejected"}
FOLDER_OF = {
    "ticket_created": "Processed",
    "follow_up": "Processed",
    "rejected": "Rejected",
    "quarantined": "Quarantine",
}


def norm(message_id: str | None) -> str:
    return (message_id or "").strip().strip("<>").strip()


# --- configuration -----------------------------------------------------------------------------


@dataclass
class Rig:
    """One test's daemon configuration: a Dovecot user, an SMTP sink, a database, a data dir."""

    mailbox: Mailbox
    sink: SmtpSink
    database_url: str
    workdir: Path
    imap_port: int | None = None  # a proxy's port instead of Dovecot's plain port
    imap: dict[str, Any] = field(default_factory=dict)
    smtp: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    _runs: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def config(self) -> Path:
        path = self.workdir / "mailbridge.toml"
        server = self.mailbox.server
        return write_config(
            path,
            {
                "imap": {
                    "host": server.host,
                    "port": self.imap_port or server.port,
                    "security": "plain",
                    "user": self.mailbox.user,
                    "password": self.mailbox.password,
                    "fetch_batch": 2,
                    "idle_renew_seconds": 4.0,
                    "poll_seconds": 1.0,
                    "timeout_seconds": 4.0,
                    "backoff_max_seconds": 1.0,
                    **self.imap,
                },
                "smtp": {
                    "host": self.sink.host,
                    "port": self.sink.port,
                    "security": "plain",
                    "local_hostname": "mailbridge.test",
                    "timeout_seconds": 4.0,
                    "backoff_base_seconds": 0.05,
                    "backoff_max_seconds": 0.3,
                    "poll_seconds": 0.3,
                    **self.smtp,
                },
                "database": {"url": self.database_url},
                "storage": {"data_dir": str(self.data_dir)},
                "policy": {"cc_mode": "reject", **self.policy},
                "ack": {"from_address": self.mailbox.user},
                "log": {"level": "info", "format": "json"},
            },
        )

    def settings(self) -> Settings:
        return load_settings(self.config)

    def start(
        self, *args: str, crash: dict[str, str] | None = None, once: bool = False
    ) -> DaemonProcess:
        """`mailbridge -c CONF run [--once]` under the crash wrapper, logging to a file."""
        number = next(self._runs)
        log_path = self.workdir / f"daemon-{number}.log"
        env = {**os.environ, **(crash or {})}
        env.pop("MAILBRIDGE_CONFIG", None)
        command = [sys.executable, "-m", "tests.fault.crashrun", "-c", str(self.config), "run"]
        command += ["--once"] if once else []
        command += list(args)
        handle = log_path.open("wb")
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT
        )
        handle.close()
        return DaemonProcess(process, log_path)

    def run_once(self, crash: dict[str, str] | None = None, timeout: float = 90) -> DaemonProcess:
        daemon = self.start(crash=crash, once=True)
        daemon.wait(timeout)
        return daemon


@dataclass
class DaemonProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self, timeout: float = 90) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"daemon did not finish in {timeout}s:\n{self.tail()}") from None

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM (graceful stop) and wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict):
                    found.append(item)
        return found

    def saw(self, event: str) -> int:
        return sum(1 for item in self.events() if item.get("event") == event)

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until true; fail with `what` after `timeout` seconds (not a timing test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# --- mail --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Injected:
    message_id: str  # normalised, without <>
    data: bytes
    expect: Literal["ticket_created", "rejected"]


def mixed_mail(mailbox: Mailbox, count: int, *, tag: str = "m", png: bytes = b"") -> list[Injected]:
    """`count` messages: distinct senders (no rate cap), every 4th with a third party in Cc
    (rejected under cc_mode=reject), every 3rd with an image attachment."""
    made = []
    for n in range(count):
        message_id = make_msgid(idstring=f"{tag}{n}", domain="customer.test")
        cc = ["boss@other.test"] if n % 4 == 3 else []
        images = [(f"shot{n}.png", png + n.to_bytes(4, "big"))] if png and n % 3 == 1 else []
        data = make_mail(
            to=mailbox.user,
            sender=f"Customer {n} <c{tag}{n}@customer.test>",
            subject=f"Problem {tag}{n}: the invoice page shows an error",
            body=f"Hello,\n\nmessage {tag}{n}: the page fails since this morning.\n\nThanks",
            cc=cc,
            images=images,
            message_id=message_id,
        )
        made.append(Injected(norm(message_id), data, "rejected" if cc else "ticket_created"))
    return made


# --- invariants --------------------------------------------------------------------------------

_HEADERS = email.parser.BytesHeaderParser(policy=email.policy.compat32)


def _mid_of(data: bytes) -> str:
    return norm(_HEADERS.parsebytes(data).get("Message-ID"))


async def check_invariants(
    rig: Rig,
    injected: Sequence[Injected],
    *,
    acks: Literal["all", "at_most_one"] = "all",
    quarantined: set[str] | None = None,
    sources: Sequence[str] = ("INBOX",),
    copies: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Assert the four invariants (module docstring); returns counts for the test to add to."""
    settings = rig.settings()
    state = await read_db(settings)
    wanted = {mail.message_id: mail for mail in injected}
    quarantined = quarantined or set()

    # 1. one terminal record per Message-ID, nothing else
    rows = Counter(norm(row.message_id) for row in state.inbound)
    assert set(rows) == set(wanted), f"records {sorted(rows)} != injected {sorted(wanted)}"
    assert all(n == 1 for n in rows.values()), f"doubled records: {rows.most_common(3)}"
    outcome_of: dict[str, str] = {}
    for row in state.inbound:
        mid = norm(row.message_id)
        if row.state == "done":
            assert row.outcome in TERMINAL_DONE, (mid, row.outcome)
        else:
            assert row.state == "failed", (mid, row.state)
            assert row.outcome == "quarantined", (mid, row.outcome)
            assert row.stage, mid
            assert row.error, mid
        outcome_of[mid] = row.outcome or ""
        expected = "quarantined" if mid in quarantined else wanted[mid].expect
        assert row.outcome == expected, f"{mid}: {row.outcome} (expected {expected}): {row.error}"

    # 2. one ticket per ticket-making message
    by_inbound = {row.id: norm(row.message_id) for row in state.inbound}
    ticket_mids = [by_inbound[m.inbound_id] for t in state.tickets for m in t.messages]
    assert all(len(t.messages) == 1 for t in state.tickets)
    assert sorted(ticket_mids) == sorted(m for m, o in outcome_of.items() if o == "ticket_created")

    # 3. acknowledgements: at most one per ack Message-ID and per message answered
    accepted = rig.sink.messages
    ack_ids = Counter(norm(mail.message["Message-ID"]) for mail in accepted)
    answered = Counter(norm(mail.message["In-Reply-To"]) for mail in accepted)
    assert all(n == 1 for n in ack_ids.values()), f"an ack accepted twice: {ack_ids.most_common(3)}"
    assert all(n == 1 for n in answered.values()), f"a mail answered twice: {answered}"
    assert set(answered) <= set(wanted)
    per_inbound = Counter(row.inbound_id for row in state.outbox)
    assert all(n == 1 for n in per_inbound.values()), "two outbox rows for one message"
    outbox_mids = {by_inbound[row.inbound_id] for row in state.outbox if row.inbound_id}
    if acks == "all":
        assert [row.state for row in state.outbox if row.state != "sent"] == []
        assert set(answered) == outbox_mids, f"acks {set(answered)} != outbox {outbox_mids}"
        assert set(ack_ids) == {norm(row.message_id) for row in state.outbox}

    # 4. IMAP: INBOX empty, each message exactly once, in the folder matching its record
    #    (`copies`: a message appended twice, e.g. restored after a UIDVALIDITY change, is
    #    two messages on the server; both must end settled, next to each other)
    for source in sources:
        assert rig.mailbox.uids(source) == [], f"{source} not empty"
    placed: Counter[str] = Counter()
    for folder in ("Processed", "Rejected", "Quarantine"):
        for data in rig.mailbox.messages(folder):
            mid = _mid_of(data)
            placed[mid] += 1
            assert FOLDER_OF[outcome_of[mid]] == folder, f"{mid} in {folder}: {outcome_of[mid]}"
    assert set(placed) == set(wanted), f"missing on IMAP: {set(wanted) - set(placed)}"
    for mid, n in placed.items():
        assert n == (copies or {}).get(mid, 1), f"{mid}: {n} copies on IMAP"
    return {
        "tickets": len(state.tickets),
        "acks": len(accepted),
        "seen_by_sink": len(rig.sink.seen),
        "outbox": [
            (row.state, row.attempts, row.uncertain, row.last_error) for row in state.outbox
        ],
    }


async def check_moved_means_committed(rig: Rig) -> None:
    """Mid-crash state: every message already moved off INBOX has its committed record."""
    state = await read_db(rig.settings())
    recorded = {norm(row.message_id): row.outcome for row in state.inbound}
    for folder in ("Processed", "Rejected", "Quarantine"):
        for data in rig.mailbox.messages(folder):
            mid = _mid_of(data)
            assert mid in recorded, f"{mid} moved to {folder} without a committed record"
            assert FOLDER_OF[recorded[mid] or "quarantined"] == folder
