"""The settings groups ([imap], [smtp], [ack] …): typed, frozen, unknown keys refused."""

from __future__ import annotations

import os
import re
from datetime import date, time
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from mailbridge.pipeline.mailsafe import ack_message_id
from mailbridge.settings_checks import (
    Address,
    Directory,
    OwnAddress,
    OwnDomain,
    ReadableFile,
    database_url_problem,
    usable_address,
)


class Group(BaseModel):
    """A settings group: unknown keys are errors, so a typo in the TOML file is caught."""

    # inf passes `gt=0` (nan fails it only because every comparison with nan is false), and
    # `config check` would print `Infinity`, which is not JSON; no setting here means "never".
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WORKING_WEEK: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri")


class ImapSecurity(StrEnum):
    TLS = "tls"
    PLAIN = "plain"


class SmtpSecurity(StrEnum):
    TLS = "tls"
    STARTTLS = "starttls"
    PLAIN = "plain"


class OAuthProvider(StrEnum):
    NONE = "none"
    COMMAND = "command"
    MICROSOFT = "microsoft"
    GOOGLE = "google"


class CcMode(StrEnum):
    REJECT = "reject"
    FLAG = "flag"
    ALLOW = "allow"


class OAuthSettings(Group):
    """Where an XOAUTH2 access token comes from, instead of a password (`provider = "none"`).

    - `command`: runs `command` (an argv list, no shell) and reads the token from its standard
      output: either the bare token (valid `token_lifetime_seconds`) or JSON
      `{"access_token": "...", "expires_in": 3599}`.
    - `microsoft`: Microsoft 365 client credentials (msal): `tenant_id`, `client_id`,
      `client_secret`; the app needs the IMAP.AccessAsApp / SMTP.SendAsApp permission.
    - `google`: a Google service account with domain-wide delegation (google-auth):
      `service_account_file`, acting as `subject` (default: the account's user).

    Tokens are cached, refreshed `refresh_margin_seconds` before they expire and once more
    when the server refuses one. The msal and google-auth libraries come with the `oauth`
    extra: `pip install 'mailbridge[oauth]'`.
    """

    provider: OAuthProvider = OAuthProvider.NONE
    command: list[str] = Field(default_factory=list)
    token_lifetime_seconds: float = Field(3300.0, gt=0)
    tenant_id: str = ""
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    authority: str = "https://login.microsoftonline.com"
    service_account_file: ReadableFile | None = None
    subject: str = ""
    scopes: list[str] = Field(default_factory=list)
    refresh_margin_seconds: float = Field(300.0, ge=0)
    timeout_seconds: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _provider_complete(self) -> OAuthSettings:
        needed: dict[OAuthProvider, tuple[str, ...]] = {
            OAuthProvider.COMMAND: ("command",),
            OAuthProvider.MICROSOFT: ("tenant_id", "client_id", "client_secret"),
            OAuthProvider.GOOGLE: ("service_account_file",),
        }
        for name in needed.get(self.provider, ()):
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if not value:
                raise ValueError(f"provider {self.provider.value!r} needs {name}")
        return self

    @property
    def enabled(self) -> bool:
        return self.provider is not OAuthProvider.NONE


class ImapSettings(Group):
    host: str = "localhost"
    port: int = Field(993, ge=1, le=65535)
    security: ImapSecurity = ImapSecurity.TLS
    ca_file: ReadableFile | None = None
    user: str = ""
    password: SecretStr = SecretStr("")
    folders: list[str] = Field(default_factory=lambda: ["INBOX"], min_length=1)
    processed_folder: str = "Processed"
    rejected_folder: str = "Rejected"
    quarantine_folder: str = "Quarantine"
    done_keyword: str = "MailbridgeDone"
    fetch_batch: int = Field(25, ge=1, le=200)
    fetch_batch_bytes: int = Field(16 * 1024 * 1024, ge=1024 * 1024)
    idle: bool = True
    idle_renew_seconds: float = Field(540.0, gt=0, le=1740)
    poll_seconds: float = Field(30.0, gt=0)
    timeout_seconds: float = Field(30.0, gt=0)
    backoff_max_seconds: float = Field(300.0, gt=0)
    oauth: OAuthSettings = Field(default_factory=OAuthSettings)

    @property
    def wait_seconds(self) -> float:
        """The longest a healthy worker waits between two looks at its folder."""
        return max(self.idle_renew_seconds if self.idle else 0.0, self.poll_seconds)


class SmtpSettings(Group):
    host: str = "localhost"
    port: int = Field(587, ge=1, le=65535)
    security: SmtpSecurity = SmtpSecurity.STARTTLS
    ca_file: ReadableFile | None = None
    user: str = ""
    password: SecretStr = SecretStr("")
    local_hostname: str = "mailbridge.localdomain"
    timeout_seconds: float = Field(30.0, gt=0)
    max_attempts: int = Field(8, ge=1)
    backoff_base_seconds: float = Field(30.0, gt=0)
    backoff_max_seconds: float = Field(3600.0, gt=0)
    poll_seconds: float = Field(5.0, gt=0)
    oauth: OAuthSettings = Field(default_factory=OAuthSettings)


class DatabaseSettings(Group):
    url: str = ""
    echo: bool = False
    upgrade_on_start: bool = False

    @field_validator("url")
    @classmethod
    def _supported(cls, value: str) -> str:
        problem = database_url_problem(value) if value else None
        if problem:
            raise ValueError(problem)
        return value


def default_data_dir() -> Path:
    """systemd's StateDirectory= ($STATE_DIRECTORY, the first when several) or ./data."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) if state else Path("data")


class StorageSettings(Group):
    data_dir: Path = Field(default_factory=default_data_dir)
    max_message_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    max_attachment_bytes: int = Field(20 * 1024 * 1024, ge=1)
    # A raw message larger than this is kept in the blob store (by its sha256, like an
    # attachment), not in its database row: a database driver copies what it is given twice.
    raw_inline_max_bytes: int = Field(1024 * 1024, ge=0)


class PolicySettings(Group):
    cc_mode: CcMode = CcMode.REJECT
    own_addresses: list[OwnAddress] = Field(default_factory=list)
    own_domains: list[OwnDomain] = Field(default_factory=list)
    noreply_pattern: str = (
        r"^(mailer-daemon|postmaster|no-?reply|do-?not-?reply|bounces?|notifications?)([+@.-]|$)"
    )

    @field_validator("noreply_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a regular expression: {error}") from error
        return value


class TicketSettings(Group):
    number_format: str = "MB-{id:06d}"

    @field_validator("number_format")
    @classmethod
    def _has_id(cls, value: str) -> str:
        try:
            rendered = value.format(id=1)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"must format with {{id}}: {error}") from error
        if rendered == value.format(id=2):
            raise ValueError("must contain {id}")
        return value


class AckSettings(Group):
    enabled: bool = True
    from_address: Address = "support@example.com"
    from_name: str = "Support"
    envelope_sender: str | None = None
    message_id_domain: str = "mailbridge.invalid"
    loop_header_value: str = "mailbridge"
    # A missing folder would silently send the packaged templates instead.
    templates_dir: Directory | None = None
    default_language: Literal["en", "ro", "sr"] = "en"
    company: str = "Support team"
    emergency_phone: str = ""
    max_per_recipient_hour: int = Field(10, ge=0)
    max_per_recipient_day: int = Field(40, ge=0)

    @field_validator("envelope_sender")
    @classmethod
    def _sender_usable(cls, value: str | None) -> str | None:
        # "" is the null reverse-path (MAIL FROM:<>), a legitimate choice for automatic mail.
        return usable_address(value) if value else value

    @field_validator("message_id_domain")
    @classmethod
    def _id_domain_usable(cls, value: str) -> str:
        try:
            ack_message_id("ack", "check", value)  # what every answer's Message-ID goes through
        except ValueError:
            raise ValueError(f"{value!r} is not a usable domain name") from None
        return value


class HoursSettings(Group):
    timezone: str = "Europe/Bucharest"
    working_days: list[Weekday] = Field(default_factory=lambda: list(WORKING_WEEK))
    open: time = time(8, 0)
    close: time = time(17, 0)
    holidays_country: str = "RO"
    closed_dates: list[date] = Field(default_factory=list)

    @field_validator("working_days")
    @classmethod
    def _some_days(cls, value: list[Weekday]) -> list[Weekday]:
        if not value:
            raise ValueError("at least one working day is needed")
        return value

    @field_validator("holidays_country")
    @classmethod
    def _known_country(cls, value: str) -> str:
        from mailbridge.adapters.holiday_table import supported_countries
        from mailbridge.errors import TransientError

        try:
            known = supported_countries() if value else frozenset()
        except TransientError as error:
            raise ValueError(str(error)) from None
        if value and value.upper() not in known:
            raise ValueError(f"the holidays package does not know country {value!r}")
        return value.upper()

    @model_validator(mode="after")
    def _opens_before_closing(self) -> HoursSettings:
        if self.open >= self.close:
            raise ValueError(f"open ({self.open}) must be before close ({self.close})")
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"unknown time zone {value!r}") from error
        return value


class ClassifySettings(Group):
    departments: dict[str, str] = Field(
        default_factory=lambda: {
            "support": "Support",
            "financiar": "Billing",
            "financial": "Billing",
            "billing": "Billing",
            "office": "Sales",
        }
    )
    default_department: str = "Support"
    urgent_words: list[str] = Field(
        default_factory=lambda: [
            "site down",
            "website down",
            "site-ul nu merge",
            "site-ul nu functioneaza",
            "site-ul nu funcționează",
            "sajt ne radi",
            "сајт не ради",
            "hitno",
            "хитно",
            "urgent",
        ]
    )
    type_keywords: dict[str, list[str]] = Field(default_factory=dict)


class LogSettings(Group):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    file: Path | None = None


class DaemonSettings(Group):
    shutdown_timeout_seconds: float = Field(30.0, gt=0)
    stall_seconds: float = Field(180.0, gt=0)


class HttpSettings(Group):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)
