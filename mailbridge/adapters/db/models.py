"""SQLAlchemy 2 table mappings; they mirror the Alembic migrations, the schema's only source."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
Id = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class MailboxCheckpoint(Base):
    """How far a mailbox folder has been read, valid only for its UIDVALIDITY."""

    __tablename__ = "mailbox_checkpoint"

    mailbox: Mapped[str] = mapped_column(String(255), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class InboundMessage(Base):
    """Every message that reached us, with its raw bytes, from IMAP or a pipe.

    `dedupe_key` (Message-ID, or the sha256 when there is none) is unique: a re-fetch after a
    crash or a UIDVALIDITY change finds the row instead of making a second ticket.
    """

    __tablename__ = "inbound_message"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    # Not an insert sentinel (see Outbox.message_id): a multi-row INSERT of raw messages
    # would be kept, bound, by SQLite's statement cache, one variant per batch size.
    dedupe_key: Mapped[str] = mapped_column(String(512), unique=True)
    source: Mapped[str] = mapped_column(String(16))
    mailbox: Mapped[str | None] = mapped_column(String(255))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    uid: Mapped[int | None] = mapped_column(BigInteger)
    message_id: Mapped[str | None] = mapped_column(String(998))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    # The raw bytes; or empty, for a non-empty message (size > 0) larger than
    # storage.raw_inline_max_bytes, whose bytes are in the blob store under sha256.
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16), index=True)
    outcome: Mapped[str | None] = mapped_column(String(32))
    stage: Mapped[str | None] = mapped_column(String(32))
    error_class: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("ticket.id"))
    reasons: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    discard_reason: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_inbound_location", "mailbox", "uidvalidity", "uid"),)

    # Set on new rows so one flush fills the foreign key; never loaded (lazy="raise").
    ticket: Mapped[Ticket | None] = relationship(lazy="raise")


class Ticket(Base):
    """A ticket; its number is formatted from the id, which neither database ever reuses."""

    __tablename__ = "ticket"
    # Without AUTOINCREMENT SQLite may hand out a deleted row's id again.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    number: Mapped[str | None] = mapped_column(String(64), unique=True)
    subject: Mapped[str] = mapped_column(Text)
    requester_email: Mapped[str] = mapped_column(String(320), index=True)
    requester_name: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(16), default="open")
    ticket_type: Mapped[str] = mapped_column(String(32))
    type_rule: Mapped[str] = mapped_column(String(255), default="")
    department: Mapped[str] = mapped_column(String(64))
    priority: Mapped[str] = mapped_column(String(16))
    priority_reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    language: Mapped[str] = mapped_column(String(8))
    cc_flag: Mapped[bool] = mapped_column(Boolean, default=False)
    cc_addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    linked_ticket_id: Mapped[int | None] = mapped_column(ForeignKey("ticket.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    messages: Mapped[list[TicketMessage]] = relationship(
        back_populates="ticket", order_by="TicketMessage.id"
    )
    participants: Mapped[list[TicketParticipant]] = relationship(back_populates="ticket")


class TicketParticipant(Base):
    """Who may add to a ticket by mail: the requester and, under the `flag` CC mode, its CCs."""

    __tablename__ = "ticket_participant"

    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id"), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))

    ticket: Mapped[Ticket] = relationship(back_populates="participants")


class TicketMessage(Base):
    __tablename__ = "ticket_message"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id"), index=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_message.id"))
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    sender_email: Mapped[str] = mapped_column(String(320))
    sender_name: Mapped[str] = mapped_column(String(255), default="")
    subject: Mapped[str] = mapped_column(Text)
    body_text: Mapped[str] = mapped_column(Text)
    display_text: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    defects: Mapped[list[str]] = mapped_column(JSON, default=list)
    omitted: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    ticket: Mapped[Ticket] = relationship(back_populates="messages")
    attachments: Mapped[list[AttachmentRow]] = relationship(order_by="AttachmentRow.id")
    inbound: Mapped[InboundMessage | None] = relationship(lazy="raise")


class AttachmentRow(Base):
    """Attachment metadata; the bytes live in the content-addressed store under `sha256`."""

    __tablename__ = "attachment"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    ticket_message_id: Mapped[int] = mapped_column(ForeignKey("ticket_message.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    inline: Mapped[bool] = mapped_column(Boolean, default=False)
    content_id: Mapped[str | None] = mapped_column(String(998))


class Outbox(Base):
    """A composed outgoing message, written in the ticket's transaction and sent after commit."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("ticket.id"), index=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_message.id"))
    # Unique and set by us: SQLAlchemy matches a multi-row INSERT's RETURNING rows by it, so
    # SQLite gets one INSERT per batch too (it has no ordered RETURNING of its own).
    message_id: Mapped[str] = mapped_column(String(998), unique=True, insert_sentinel=True)
    mail_from: Mapped[str] = mapped_column(String(320))
    rcpt_to: Mapped[str] = mapped_column(String(320))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # A send that timed out after the final dot may have arrived: it is tried once more only.
    uncertain: Mapped[bool] = mapped_column(Boolean, default=False)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_outbox_rcpt_created", "rcpt_to", "created_at"),)

    inbound: Mapped[InboundMessage | None] = relationship(lazy="raise")


class Customer(Base):
    """A known customer: outranks unknown senders and fixes the acknowledgement's language."""

    __tablename__ = "customer"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    company: Mapped[str] = mapped_column(String(255), default="")
    language: Mapped[str | None] = mapped_column(String(8))
    priority: Mapped[str] = mapped_column(String(16), default="high")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


__all__ = [
    "AttachmentRow",
    "Base",
    "Customer",
    "InboundMessage",
    "MailboxCheckpoint",
    "Outbox",
    "Ticket",
    "TicketMessage",
    "TicketParticipant",
]
