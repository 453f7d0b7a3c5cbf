"""Settings: a TOML file, then MAILBRIDGE_* environment variables, then secret files; built once."""

from __future__ import annotations

import os
import re
from datetime import date, time
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "MAILBRIDGE_"
DEFAULT_SECRET_DIRS = ("/run/secrets",)


class Group(BaseModel):
    """A settings group: unknown keys are errors, so a typo in the TOML file is caught."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
    service_account_file: Path | None = None
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
    ca_file: Path | None = None
    user: str = ""
    password: SecretStr = SecretStr("")
    folders: list[str] = Field(default_factory=lambda: ["INBOX"], min_length=1)
    processed_folder: str = "Processed"
    rejected_folder: str = "Rejected"
    quarantine_folder: str = "Quarantine"
    done_keyword: str = "MailbridgeDone"
    fetch_batch: int = Field(10, ge=1, le=200)
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
    ca_file: Path | None = None
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


def default_data_dir() -> Path:
    """systemd's StateDirectory= ($STATE_DIRECTORY, the first when several) or ./data."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) if state else Path("data")


class StorageSettings(Group):
    data_dir: Path = Field(default_factory=default_data_dir)
    max_message_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    max_attachment_bytes: int = Field(20 * 1024 * 1024, ge=1)


class PolicySettings(Group):
    cc_mode: CcMode = CcMode.REJECT
    own_addresses: list[str] = Field(default_factory=list)
    own_domains: list[str] = Field(default_factory=list)
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
    from_address: str = "support@example.com"
    from_name: str = "Support"
    envelope_sender: str | None = None
    message_id_domain: str = "mailbridge.invalid"
    loop_header_value: str = "mailbridge"
    templates_dir: Path | None = None
    default_language: Literal["en", "ro", "sr"] = "en"
    company: str = "Support team"
    emergency_phone: str = ""
    max_per_recipient_hour: int = Field(10, ge=0)
    max_per_recipient_day: int = Field(40, ge=0)


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
        import holidays

        if value and value.upper() not in holidays.list_supported_countries():
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


DEFAULT_ACCOUNT = "default"
_ACCOUNT_NAME = re.compile(r"[a-z0-9_]{1,40}")


class Settings(BaseSettings):
    """The whole configuration; see config/mailbridge.example.toml for every key."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    imap: ImapSettings = Field(default_factory=ImapSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    tickets: TicketSettings = Field(default_factory=TicketSettings)
    ack: AckSettings = Field(default_factory=AckSettings)
    hours: HoursSettings = Field(default_factory=HoursSettings)
    classify: ClassifySettings = Field(default_factory=ClassifySettings)
    log: LogSettings = Field(default_factory=LogSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    accounts: dict[str, ImapSettings] = Field(default_factory=dict)

    @field_validator("accounts")
    @classmethod
    def _account_names(cls, value: dict[str, ImapSettings]) -> dict[str, ImapSettings]:
        for name in value:
            if not _ACCOUNT_NAME.fullmatch(name):
                raise ValueError(f"account name {name!r}: use lowercase letters, digits and _")
            if name == DEFAULT_ACCOUNT:
                raise ValueError(f"account name {name!r} is taken by the [imap] account")
        return value

    @property
    def imap_accounts(self) -> dict[str, ImapSettings]:
        """Every mailbox account by name: `[imap]` as "default" (unless it has no user and
        `[accounts.*]` are configured), then each `[accounts.NAME]`."""
        found: dict[str, ImapSettings] = {}
        if self.imap.user or not self.accounts:
            found[DEFAULT_ACCOUNT] = self.imap
        found.update(self.accounts)
        return found

    @property
    def database_url(self) -> str:
        """The configured URL, or SQLite in the data directory (the embedded default)."""
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{(self.storage.data_dir / 'mailbridge.db').resolve()}"

    @property
    def own_addresses(self) -> frozenset[str]:
        """Addresses that are ours: never a third party in Cc, never acknowledged."""
        mine = {address.lower() for address in self.policy.own_addresses}
        mine.add(self.ack.from_address.lower())
        for account in (self.imap, *self.accounts.values()):
            if account.user and "@" in account.user:
                mine.add(account.user.lower())
        return frozenset(mine)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest priority first: explicit values, environment, secret files, the TOML file.
        toml_path = _CONFIG_PATH.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        sources.append(NestedSecretsSource(settings_cls, _secret_dirs()))
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)


# pydantic-settings builds sources from class state; this holds the file chosen for one load.
_CONFIG_PATH: dict[str, Path | None] = {}


def _secret_dirs() -> list[Path]:
    dirs = [Path(d) for d in DEFAULT_SECRET_DIRS]
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        dirs.append(Path(credentials))
    extra = os.environ.get("MAILBRIDGE_SECRETS_DIR")
    if extra:
        dirs.append(Path(extra))
    return [d for d in dirs if d.is_dir()]


class NestedSecretsSource(PydanticBaseSettingsSource):
    """Secret files named like the variables: `imap__password` or `MAILBRIDGE_IMAP__PASSWORD`,
    and deeper: `imap__oauth__client_secret`, `accounts__office__password`.

    The built-in secrets source cannot fill nested groups, and systemd's LoadCredential= and
    Docker secrets both hand over one file per value.
    """

    def __init__(self, settings_cls: type[BaseSettings], dirs: list[Path]) -> None:
        super().__init__(settings_cls)
        self._dirs = dirs

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for directory in self._dirs:
            for path in sorted(directory.iterdir()):
                name = path.name.lower()
                if name.startswith(ENV_PREFIX.lower()):
                    name = name[len(ENV_PREFIX) :]
                parts = name.split("__")
                if len(parts) < 2 or not all(parts):
                    continue
                if parts[0] not in self.settings_cls.model_fields or not path.is_file():
                    continue
                value = path.read_text(encoding="utf-8").strip()
                group = found
                for part in parts[:-1]:
                    group = group.setdefault(part, {})
                    if not isinstance(group, dict):
                        break
                else:
                    group[parts[-1]] = value
        return found


class ConfigError(Exception):
    """A setting is missing or wrong; the message is one line naming the key."""


def load_settings(config_path: Path | str | None = None) -> Settings:
    """Build Settings from the TOML file (argument or MAILBRIDGE_CONFIG), env and secret files."""
    path_text = config_path if config_path is not None else os.environ.get("MAILBRIDGE_CONFIG")
    path = Path(path_text) if path_text else None
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path}: not found or not a file")
    _CONFIG_PATH["path"] = path
    try:
        return Settings()
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"config file {path}: {error}") from None
    finally:
        _CONFIG_PATH.pop("path", None)


def describe_validation_error(error: ValidationError) -> str:
    """One line: each bad key with what is wrong with it."""
    parts = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(root)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown setting"
        parts.append(f"{key}: {message}")
    return "invalid setting " + "; ".join(parts)


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, every secret shown as '**********'."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    data["database"]["effective_url"] = _redact_url(settings.database_url)
    data["database"]["url"] = _redact_url(settings.database.url)
    return data


def _redact_url(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1**********@", url)
