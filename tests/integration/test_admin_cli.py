"""The admin commands driven as an admin would: `mailbridge -c FILE …`, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select, update

from mailbridge.adapters.db.models import Customer, Outbox
from mailbridge.app import open_app
from mailbridge.cli import main
from mailbridge.cli_types import SINCE
from mailbridge.settings import DatabaseSettings, Settings, StorageSettings
from tests.integration.harness import DbState, make_mail, png, read_db, write_config
from tests.servers.dovecot import Mailbox
from tests.servers.smtp import SmtpSink

pytestmark = pytest.mark.integration

SUPPORT = "support@example.test"
UNREACHABLE_DB = "postgresql+asyncpg://postgres@127.0.0.1:1/x"
BIG = "99999999999999999999999"  # past 2**63 - 1, the largest id SQLite or PostgreSQL holds


@dataclass
class Admin:
    """The `mailbridge` command with a config file of its own, and a view of its database."""

    config: Path
    data_dir: Path
    database_url: str

    def __call__(
        self, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
    ) -> Result:
        runner = CliRunner()
        return runner.invoke(
            main, ["-c", str(self.config), *args], input=stdin, env=env, catch_exceptions=False
        )

    def json(self, *args: str) -> Any:
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    @property
    def settings(self) -> Settings:
        return Settings(
            database=DatabaseSettings(url=self.database_url),
            storage=StorageSettings(data_dir=self.data_dir),
        )

    def db(self) -> DbState:
        return asyncio.run(read_db(self.settings))

    def break_store(self) -> None:
        """A regular file where the attachment directory belongs: every write fails."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "attachments").write_text("not a directory")

    def fix_store(self) -> None:
        (self.data_dir / "attachments").unlink()

    def file(self, name: str, data: bytes) -> str:
        path = self.config.parent / name
        path.write_bytes(data)
        return str(path)


MakeAdmin = Callable[..., Admin]


@pytest.fixture
def make_admin(database_url: str, tmp_path: Path) -> MakeAdmin:
    def build(**sections: dict[str, Any]) -> Admin:
        data_dir = tmp_path / "data"
        config: dict[str, dict[str, Any]] = {
            "database": {"url": database_url},
            "storage": {"data_dir": str(data_dir)},
            "ack": {"from_address": SUPPORT},
            "log": {"level": "warning"},
        }
        for name, values in sections.items():
            config.setdefault(name, {}).update(values)
        path = write_config(tmp_path / "mailbridge.toml", config)
        return Admin(path, data_dir, database_url)

    return build


@pytest.fixture
def admin(make_admin: MakeAdmin) -> Admin:
    return make_admin()


def screenshot_mail(**kwargs: Any) -> bytes:
    return make_mail(
        to=SUPPORT,
        subject="Eroare la plată",
        body="Bună ziua, primesc o eroare la plată. Vedeți captura.",
        images=[("captura.png", png())],
        **kwargs,
    )


def one_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def fail_one(admin: Admin, message_id: str = "<fails@customer.test>") -> tuple[int, bytes]:
    """Ingest a mail with an attachment while the store is broken: one failed record."""
    raw = screenshot_mail(message_id=message_id)
    admin.break_store()
    result = admin("ingest", admin.file("fails.eml", raw))
    assert result.exit_code == 0, result.output
    assert "still failing at store" in result.stdout
    (record,) = admin.json("failed", "list")
    return int(record["id"]), raw


def blob_path(admin: Admin, sha256: str) -> Path:
    return admin.data_dir / "attachments" / sha256[:2] / sha256[2:4] / sha256


def fail_large(admin: Admin) -> tuple[Any, bytes, Path]:
    """A large message whose screenshot cannot be stored, while the message itself can."""
    image_prefix = hashlib.sha256(png()).hexdigest()[:2]
    raw = next(
        mail
        for n in range(1000)
        if hashlib.sha256(
            mail := screenshot_mail(message_id=f"<large{n}@customer.test>")
        ).hexdigest()[:2]
        != image_prefix
    )
    blocked = admin.data_dir / "attachments" / image_prefix
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a directory")
    result = admin("ingest", admin.file("large.eml", raw))
    assert result.exit_code == 0, result.output
    assert "still failing at store" in result.stdout
    (inbound,) = admin.db().inbound
    return inbound, raw, blocked


def test_a_large_failed_message_kept_in_the_blob_store_is_shown_and_replayed(
    make_admin: MakeAdmin,
) -> None:
    admin = make_admin(storage={"raw_inline_max_bytes": 1024})
    inbound, raw, blocked = fail_large(admin)
    assert (inbound.raw, inbound.size, len(raw) > 1024) == (b"", len(raw), True)
    assert blob_path(admin, inbound.sha256).read_bytes() == raw

    (record,) = admin.json("failed", "list")
    assert record["headers"]["message-id"] == inbound.message_id
    assert admin("failed", "show", str(inbound.id), "--raw").stdout_bytes == raw

    blocked.unlink()
    replayed = admin("failed", "replay", str(inbound.id))
    assert replayed.exit_code == 0, replayed.output
    assert replayed.stdout.strip() == f"{inbound.id}: ticket created MB-000001"


def test_a_large_message_whose_file_is_gone_stays_listed_and_each_command_says_so(
    make_admin: MakeAdmin,
) -> None:
    admin = make_admin(storage={"raw_inline_max_bytes": 1024})
    inbound, _raw, blocked = fail_large(admin)
    blocked.unlink()
    path = blob_path(admin, inbound.sha256)
    path.unlink()  # e.g. the database restored without the attachment store

    (record,) = admin.json("failed", "list")
    assert (record["id"], record["stage"]) == (inbound.id, "store")
    shown = admin("failed", "show", str(inbound.id))
    assert shown.exit_code == 0, shown.output
    assert "store" in shown.stdout
    for args in (("failed", "show", str(inbound.id), "--raw"), ("failed", "replay", "--all")):
        result = admin(*args)
        assert result.exit_code == 1, result.output
        assert "unreadable in the attachment store" in result.output
        assert str(path) in result.output
    assert admin.db().tickets == []

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"cut short")
    result = admin("failed", "show", str(inbound.id), "--raw")
    assert result.exit_code == 1
    assert f"raw message is 9 bytes in the attachment store, not {inbound.size}" in one_line(result)


def test_a_large_message_stays_in_its_row_when_the_store_refuses_it(
    make_admin: MakeAdmin,
) -> None:
    admin = make_admin(storage={"raw_inline_max_bytes": 1024})
    raw = screenshot_mail(message_id="<refused@customer.test>")
    admin.break_store()

    assert "still failing at store" in admin("ingest", admin.file("a.eml", raw)).stdout
    (failed,) = admin.db().inbound
    assert failed.raw == raw

    admin.fix_store()
    later = screenshot_mail(message_id="<later@customer.test>")
    assert "ticket created" in admin("ingest", admin.file("b.eml", later)).stdout
    stored = next(i for i in admin.db().inbound if i.message_id == "<later@customer.test>")
    assert (stored.raw, stored.outcome) == (b"", "ticket_created")
    assert blob_path(admin, stored.sha256).read_bytes() == later


def test_failed_message_is_listed_shown_replayed_once(admin: Admin) -> None:
    inbound_id, raw = fail_one(admin)

    listed = admin("failed", "list")
    assert listed.exit_code == 0
    assert str(inbound_id) in listed.stdout
    assert "store" in listed.stdout
    assert "Eroare la plată" in listed.stdout
    (record,) = admin.json("failed", "list")
    assert record["state"] == "failed"
    assert record["stage"] == "store"
    assert record["error_class"] == "PermanentError"
    assert "Not a directory" in record["error"]
    assert record["headers"]["subject"] == "Eroare la plată"
    assert record["headers"]["message-id"] == "<fails@customer.test>"
    assert record["received_at"].endswith("+00:00")
    assert admin.json("failed", "list", "--stage", "parse") == []
    assert len(admin.json("failed", "list", "--error", "NOT A DIRECTORY")) == 1
    assert len(admin.json("failed", "list", "--since", "1h")) == 1
    assert len(admin.json("failed", "list", "--since", "2000-01-01")) == 1
    assert admin.json("failed", "list", "--since", "2999-01-01T00:00:00+00:00") == []

    shown = admin("failed", "show", str(inbound_id))
    assert shown.exit_code == 0
    for text in ("store", "Not a directory", "Attempts:    1", "ana@customer.test"):
        assert text in shown.stdout
    assert "Message-ID:  <fails@customer.test>" in shown.stdout
    raw_out = admin("failed", "show", str(inbound_id), "--raw")
    assert raw_out.exit_code == 0
    assert raw_out.stdout_bytes == raw

    before = admin.db()
    dry = admin("failed", "replay", str(inbound_id), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would still fail at store" in dry.stdout
    admin.fix_store()
    dry = admin("failed", "replay", "--all", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"{inbound_id}: would create a ticket" in dry.stdout
    assert "nothing written" in dry.stdout
    after = admin.db()
    assert after.tickets == []
    assert after.outbox == []
    assert [(i.state, i.attempts) for i in after.inbound] == [
        (i.state, i.attempts) for i in before.inbound
    ]

    replayed = admin("failed", "replay", str(inbound_id))
    assert replayed.exit_code == 0, replayed.output
    assert replayed.stdout.strip() == f"{inbound_id}: ticket created MB-000001"
    state = admin.db()
    assert [t.number for t in state.tickets] == ["MB-000001"]
    (inbound,) = state.inbound
    assert (inbound.state, inbound.outcome, inbound.attempts) == ("done", "ticket_created", 2)
    assert inbound.error is None
    assert inbound.stage is None
    assert [o.kind for o in state.outbox] == ["ack"]

    again = admin("failed", "replay", str(inbound_id))
    assert again.exit_code == 0, again.output
    assert "not failed: nothing to do" in again.stdout
    assert "MB-000001" in again.stdout
    assert len(admin.db().tickets) == 1
    assert admin.json("failed", "list") == []
    assert "no failed messages" in admin("failed", "replay", "--all").stdout

    sha = hashlib.sha256(png()).hexdigest()
    ticket = admin("tickets", "show", "MB-000001")
    assert ticket.exit_code == 0
    assert f"sha256 {sha}" in ticket.stdout
    assert "captura.png" in ticket.stdout


def test_replay_that_still_fails_says_so_and_exits_1(admin: Admin) -> None:
    inbound_id, _ = fail_one(admin)

    result = admin("failed", "replay", str(inbound_id))

    assert result.exit_code == 1
    assert f"{inbound_id}: still failing at store" in result.stdout
    assert "1 message(s) still failing" in result.stderr
    (inbound,) = admin.db().inbound
    assert (inbound.state, inbound.attempts) == ("failed", 2)
    assert admin.db().tickets == []


def test_discard_keeps_an_audit_record(admin: Admin) -> None:
    inbound_id, raw = fail_one(admin)

    no_reason = admin("failed", "discard", str(inbound_id))
    assert no_reason.exit_code == 2
    assert "--reason" in one_line(no_reason)
    result = admin("failed", "discard", str(inbound_id), "--reason", "test mail, not a customer")
    assert result.exit_code == 0, result.output

    assert admin.json("failed", "list") == []
    (record,) = admin.json("failed", "list", "--all-states")
    assert record["state"] == "discarded"
    assert record["outcome"] == "discarded"
    assert record["discard_reason"] == "test mail, not a customer"
    assert record["error_class"] == "PermanentError"  # the error stays for the audit
    assert "discarded" in admin("failed", "list", "--all-states").stdout
    shown = admin("failed", "show", str(inbound_id))
    assert "Discarded:   test mail, not a customer" in shown.stdout
    assert admin("failed", "show", str(inbound_id), "--raw").stdout_bytes == raw

    again = admin("failed", "discard", str(inbound_id), "--reason", "twice")
    assert again.exit_code == 1
    assert "already discarded" in one_line(again)
    replay = admin("failed", "replay", str(inbound_id))
    assert replay.exit_code == 0
    assert "nothing to do" in replay.stdout
    state = admin.db()
    assert state.tickets == []
    assert [i.state for i in state.inbound] == ["discarded"]


def test_rejected_mail_is_visible_with_all_states_and_explained(admin: Admin) -> None:
    raw = make_mail(to=SUPPORT, cc=["boss@customer.test"], message_id="<cc@customer.test>")
    result = admin("ingest", admin.file("cc.eml", raw))
    assert result.exit_code == 0, result.output
    assert "rejected" in result.stdout

    assert admin.json("failed", "list") == []
    (record,) = admin.json("failed", "list", "--all-states")
    assert record["state"] == "done"
    assert record["outcome"] == "rejected"
    assert any("boss@customer.test" in r["detail"] for r in record["reasons"])
    assert "rejected" in admin("failed", "list", "--all-states").stdout
    shown = admin("failed", "show", str(record["id"]))
    assert shown.exit_code == 0
    assert "Reason:" in shown.stdout
    assert "boss@customer.test" in shown.stdout
    replay = admin("failed", "replay", str(record["id"]))
    assert replay.exit_code == 0
    assert "not failed: nothing to do" in replay.stdout


def test_export_writes_the_bytes_and_the_metadata(admin: Admin, tmp_path: Path) -> None:
    inbound_id, raw = fail_one(admin)
    target = tmp_path / "evidence" / "inner"

    result = admin("failed", "export", str(inbound_id), str(target))

    assert result.exit_code == 0, result.output
    assert (target / f"{inbound_id}.eml").read_bytes() == raw
    meta = json.loads((target / f"{inbound_id}.json").read_text(encoding="utf-8"))
    assert meta["id"] == inbound_id
    assert meta["stage"] == "store"
    assert meta["sha256"] == hashlib.sha256(raw).hexdigest()
    assert meta["headers"]["from"] == "Ana Popescu <ana@customer.test>"


def test_ingest_from_stdin_tempfails_while_the_database_is_away(admin: Admin) -> None:
    raw = make_mail(to=SUPPORT, message_id="<piped@customer.test>")

    away = admin("ingest", "-", stdin=raw, env={"MAILBRIDGE_DATABASE__URL": UNREACHABLE_DB})
    assert away.exit_code == 75, away.output
    assert "temporary failure" in one_line(away)
    assert admin.db().inbound == []

    back = admin("ingest", "-", stdin=raw)
    assert back.exit_code == 0, back.output
    assert back.stdout.strip() == "stdin: ticket created MB-000001"
    again = admin("ingest", "-", stdin=raw)  # the MTA retried a delivery we already took
    assert again.exit_code == 0
    assert "already held" in again.stdout
    assert [t.number for t in admin.db().tickets] == ["MB-000001"]


def test_empty_input_is_refused_and_the_other_inputs_still_make_tickets(admin: Admin) -> None:
    empty = admin("ingest", "-", stdin=b"")
    assert empty.exit_code == 1
    assert one_line(empty) == "mailbridge: error: stdin: empty input, nothing stored"
    assert empty.stdout == ""

    blank = admin.file("blank.eml", b" \r\n\t\n")
    good = admin.file("good.eml", make_mail(to=SUPPORT, message_id="<good@customer.test>"))
    mixed = admin("ingest", blank, good, "-", stdin=b"\n")
    assert mixed.exit_code == 1
    assert mixed.stdout == f"{good}: ticket created MB-000001\n"
    assert mixed.stderr.splitlines() == [
        f"mailbridge: error: {blank}: empty input, nothing stored",
        "mailbridge: error: stdin: empty input, nothing stored",
    ]
    state = admin.db()
    assert [t.number for t in state.tickets] == ["MB-000001"]
    assert len(state.inbound) == 1


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("failed", "show", "4242"), 1, "no failed message 4242"),
        (("failed", "replay", "4242"), 1, "no failed message 4242"),
        (("failed", "discard", "4242", "--reason", "x"), 1, "no failed message 4242"),
        (("failed", "export", "4242", "/tmp"), 1, "no failed message 4242"),
        (("failed", "list", "--since", "yesterdayish"), 2, "not a date: 'yesterdayish'"),
        (("tickets", "list", "--since", "3 fortnights"), 2, "not a date: '3 fortnights'"),
        (("failed", "replay"), 2, "give message IDs"),
        (("failed", "show", "abc"), 2, "'abc' is not a valid integer"),
        (("tickets", "show", "MB-999999"), 1, "no ticket MB-999999"),
        (("outbox", "retry", "4242"), 1, "no outbox message 4242"),
        (("outbox", "retry"), 2, "give outbox IDs or --all"),
        (("ingest", "/nonexistent/mail.eml"), 1, "cannot read /nonexistent/mail.eml"),
        (("customers", "import", "/nonexistent/c.csv"), 1, "cannot read /nonexistent/c.csv"),
        (("customers", "import", "/"), 1, "cannot read /: Is a directory"),
        (("ingest", "/"), 1, "cannot read /: Is a directory"),
        (("failed", "export", "4242"), 2, "Missing argument 'DIR'"),
        (("failed", "export", "/tmp"), 2, "Missing argument 'ID...'"),
        # Numbers and moments past what the database or a datetime holds are usage errors.
        (("failed", "show", BIG), 2, f"Invalid value for 'ID': {BIG} is not in the range"),
        (("failed", "replay", BIG), 2, "Invalid value for '[ID]...'"),
        (("outbox", "retry", BIG), 2, "Invalid value for '[ID]...'"),
        (("tickets", "show", BIG), 2, f"Invalid value for 'NUMBER': '{BIG}' is not a ticket"),
        (("tickets", "list", "--limit", BIG), 2, "Invalid value for '--limit'"),
        (("outbox", "list", "--limit", BIG), 2, "Invalid value for '--limit'"),
        (("failed", "list", "--since", "999999w"), 2, "'--since': out of range: '999999w'"),
        (("failed", "list", "--since", "0001-01-01"), 2, "'--since': out of range"),
        (("tickets", "list", "--since", "0001-01-01"), 2, "'--since': out of range"),
        (("failed", "list", "--since", "9999-12-31T23:59:59-05:00"), 2, "out of range"),
    ],
)
def test_bad_input_is_one_line_and_the_right_exit_code(
    admin: Admin, args: tuple[str, ...], code: int, message: str
) -> None:
    result = admin(*args)

    assert result.exit_code == code, result.output
    line = one_line(result)
    assert line.startswith("mailbridge: error: ")
    assert message in line
    assert result.stdout == ""


def test_tickets_list_and_show(make_admin: MakeAdmin) -> None:
    admin = make_admin(policy={"cc_mode": "flag"})
    shot = png()
    first = screenshot_mail(message_id="<one@customer.test>")
    second = make_mail(
        to=SUPPORT,
        sender="Ion Ionescu <ion@other.test>",
        subject="Factura lunii mai",
        body="Bună ziua, nu am primit factura.",
        cc=["boss@other.test"],
        message_id="<two@other.test>",
    )
    for name, raw in (("one.eml", first), ("two.eml", second)):
        assert admin("ingest", admin.file(name, raw)).exit_code == 0

    listed = admin.json("tickets", "list")
    assert [t["number"] for t in listed] == ["MB-000002", "MB-000001"]
    by_number = {t["number"]: t for t in listed}
    one, two = by_number["MB-000001"], by_number["MB-000002"]
    assert one["requester_email"] == "ana@customer.test"
    assert one["messages"] == 1
    assert two["cc_flag"] is True
    assert two["cc_addresses"] == ["boss@other.test"]
    assert set(one) >= {"status", "type", "department", "priority", "created_at"}
    assert len(admin.json("tickets", "list", "--limit", "1")) == 1
    same_type = [t["number"] for t in listed if t["type"] == one["type"]]
    by_type = admin.json("tickets", "list", "--type", one["type"].lower())
    assert [t["number"] for t in by_type] == same_type
    same_department = [t["number"] for t in listed if t["department"] == one["department"]]
    by_department = admin.json("tickets", "list", "--department", one["department"].upper())
    assert [t["number"] for t in by_department] == same_department
    assert admin.json("tickets", "list", "--department", "no-such-dept") == []
    assert len(admin.json("tickets", "list", "--status", "open", "--since", "1d")) == 2
    assert admin.json("tickets", "list", "--since", "2999-01-01") == []
    text = admin("tickets", "list")
    assert "MB-000001" in text.stdout
    assert "Factura lunii mai" in text.stdout

    detail = admin.json("tickets", "show", "MB-000001")
    (message,) = detail["messages"]
    assert message["sender_email"] == "ana@customer.test"
    assert "eroare la plată" in message["display_text"]
    (attachment,) = message["attachments"]
    assert attachment == {
        "filename": "captura.png",
        "content_type": "image/png",
        "size": len(shot),
        "sha256": hashlib.sha256(shot).hexdigest(),
        "inline": False,
        "content_id": None,
    }
    (ack,) = detail["acknowledgements"]
    assert ack["kind"] == "ack"
    assert ack["state"] == "pending"
    assert ack["rcpt_to"] == "ana@customer.test"

    shown = admin("tickets", "show", "mb-000002")
    assert shown.exit_code == 0
    assert "CC flag:      yes: boss@other.test" in shown.stdout
    assert "From:    Ion Ionescu <ion@other.test>" in shown.stdout
    assert "nu am primit factura" in shown.stdout
    assert "pending" in shown.stdout  # its acknowledgement, not yet sent
    assert "MB-000001" in admin("tickets", "show", "1").stdout  # by id


def test_customers_import_good_and_bad(admin: Admin) -> None:
    good = admin.file(
        "customers.csv",
        b"email,name,company,language,priority\n"
        b"Ana@Customer.TEST,Ana Popescu,Client SRL,ro,urgent\n"
        b'ion@other.test,"Ionescu, Ion",,,\n',
    )
    result = admin("customers", "import", good)
    assert result.exit_code == 0, result.output
    assert "2 new, 0 updated" in result.stdout
    customers = admin.json("customers", "list")
    assert all(c.pop("created_at").endswith("+00:00") for c in customers)
    assert customers == [
        {
            "email": "ana@customer.test",
            "name": "Ana Popescu",
            "company": "Client SRL",
            "language": "ro",
            "priority": "urgent",
        },
        {
            "email": "ion@other.test",
            "name": "Ionescu, Ion",
            "company": "",
            "language": None,
            "priority": "high",
        },
    ]
    update_only = admin.file("prio.csv", b"\xef\xbb\xbfemail,priority\nANA@customer.test,low\n")
    result = admin("customers", "import", update_only)
    assert result.exit_code == 0
    assert "0 new, 1 updated" in result.stdout
    (ana,) = [c for c in admin.json("customers", "list") if c["email"] == "ana@customer.test"]
    assert (ana["priority"], ana["name"], ana["language"]) == ("low", "Ana Popescu", "ro")
    assert "ana@customer.test" in admin("customers", "list").stdout

    bad_cases = {
        "email,name,language\na@x.test,A,en\nb@x.test,B,de\n": "line 3, column language",
        "email,priority\na@x.test,sometimes\n": "line 2, column priority",
        "a@x.test,A\n": "line 1, column 'a@x.test': unknown column",
        "name\nA\n": "line 1: no 'email' column",
        "email,name\nnot-an-address,A\n": "line 2, column email",
        "email\nc@x.test\nC@x.test\n": "line 3, column email: c@x.test already on line 2",
        "email,name\nd@x.test\n": "line 2: 1 fields, the header has 2",
    }
    for index, (text, message) in enumerate(bad_cases.items()):
        path = admin.file(f"bad{index}.csv", text.encode())
        result = admin("customers", "import", path)
        assert result.exit_code == 1, (text, result.output)
        assert message in one_line(result), text
    latin1 = admin.file("latin1.csv", "email,name\ne@x.test,Müller\n".encode("latin-1"))
    assert "line 2: not UTF-8" in one_line(admin("customers", "import", latin1))
    assert [c["email"] for c in admin.json("customers", "list")] == [
        "ana@customer.test",
        "ion@other.test",
    ]


async def _fail_outbox(settings: Settings, error: str) -> None:
    async with open_app(settings) as app, app.sessions.begin() as session:
        await session.execute(update(Outbox).values(state="failed", attempts=8, last_error=error))


async def _count_customers(settings: Settings) -> int:
    async with open_app(settings) as app, app.sessions() as session:
        return int(await session.scalar(select(func.count(Customer.id))) or 0)


def test_outbox_list_and_retry(admin: Admin) -> None:
    assert admin("ingest", admin.file("m.eml", make_mail(to=SUPPORT))).exit_code == 0
    (pending,) = admin.json("outbox", "list")
    assert pending["state"] == "pending"
    assert pending["ticket_number"] == "MB-000001"
    asyncio.run(_fail_outbox(admin.settings, "550 5.1.1 mailbox unavailable"))

    (failed_row,) = admin.json("outbox", "list", "--state", "failed")
    assert failed_row["last_error"] == "550 5.1.1 mailbox unavailable"
    assert admin.json("outbox", "list", "--state", "sent") == []
    assert "550 5.1.1" in admin("outbox", "list").stdout

    result = admin("outbox", "retry", str(failed_row["id"]))
    assert result.exit_code == 0, result.output
    assert f"outbox {failed_row['id']}: queued again" in result.stdout
    (row,) = admin.db().outbox
    assert (row.state, row.attempts) == ("pending", 0)
    assert row.last_error is not None
    assert "after 8 attempt(s)" in row.last_error
    assert "550 5.1.1" in row.last_error

    again = admin("outbox", "retry", str(row.id))
    assert again.exit_code == 0
    assert "pending, not failed: nothing to do" in again.stdout
    assert "nothing to do" in admin("outbox", "retry", "--all").stdout
    assert asyncio.run(_count_customers(admin.settings)) == 0


def test_imap_failure_replay_and_outbox_retry_end_to_end(
    make_admin: MakeAdmin, mailbox: Mailbox, smtp_sink: SmtpSink
) -> None:
    imap = mailbox.settings(idle_renew_seconds=5, poll_seconds=1)
    smtp = smtp_sink.settings(backoff_base_seconds=0.01, backoff_max_seconds=0.05)
    admin = make_admin(
        imap=imap.model_dump(exclude_none=True, exclude={"oauth"}),  # a [imap.oauth] table
        smtp=smtp.model_dump(exclude_none=True, exclude={"oauth"}),
        ack={"from_address": mailbox.user},
    )
    raw = make_mail(
        to=mailbox.user, images=[("screen.png", png())], message_id="<imap@customer.test>"
    )
    mailbox.append(raw)
    admin.break_store()

    assert admin("run", "--once").exit_code == 0
    (record,) = admin.json("failed", "list")
    assert record["mailbox"].endswith("/INBOX")
    assert record["stage"] == "store"
    assert mailbox.messages("Quarantine") == [raw]
    assert f"/INBOX UID {record['uid']}" in admin("failed", "show", str(record["id"])).stdout

    admin.fix_store()
    smtp_sink.reply(550, "5.1.1 no such user")
    replayed = admin("failed", "replay", str(record["id"]))
    assert replayed.exit_code == 0, replayed.output
    assert "ticket created MB-000001" in replayed.stdout
    assert "IMAP copy stays in Quarantine" in replayed.stdout

    assert admin("run", "--once").exit_code == 0
    (failed_ack,) = admin.json("outbox", "list", "--state", "failed")
    assert "550" in (failed_ack["last_error"] or "")
    smtp_sink.accept()
    assert admin("outbox", "retry", "--all").exit_code == 0
    assert admin("run", "--once").exit_code == 0
    (sent,) = admin.json("outbox", "list", "--state", "sent")
    assert sent["id"] == failed_ack["id"]
    (ack,) = smtp_sink.messages
    assert ack.message["Subject"].startswith("[#MB-000001]")
    assert mailbox.messages("Quarantine") == [raw]  # stays; the ticket does not depend on it
    assert len(admin.db().tickets) == 1


def test_since_takes_dates_datetimes_and_ages() -> None:
    now = datetime.now(UTC)
    two_hours = SINCE.convert("2h", None, None)
    assert abs((now - two_hours) - timedelta(hours=2)) < timedelta(seconds=5)
    assert abs((now - SINCE.convert(" 3D ", None, None)) - timedelta(days=3)) < timedelta(seconds=5)
    offset = SINCE.convert("2026-05-01T10:00:00+02:00", None, None)
    assert offset == datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    local_midnight = datetime(2026, 5, 1).astimezone()
    assert SINCE.convert("2026-05-01", None, None) == local_midnight
    for bad in ("yesterdayish", "2h ago", "2026-13-01", ""):
        with pytest.raises(click.BadParameter, match="not a date"):
            SINCE.convert(bad, None, None)
    for far in ("999999w", "0001-01-01", "9999-12-31T23:59:59-05:00", "0001-01-01T00:00+01:00"):
        with pytest.raises(click.BadParameter, match="out of range"):
            SINCE.convert(far, None, None)
    # The edges themselves are fine.
    assert SINCE.convert("0001-01-01T00:00+00:00", None, None) == datetime(1, 1, 1, tzinfo=UTC)
    assert SINCE.convert("9999-12-31T23:59+00:00", None, None).year == 9999
