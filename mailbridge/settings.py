"""Settings: a TOML file, then MAILBRIDGE_* environment variables, then secret files; built once."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from mailbridge.settings_groups import (
    WORKING_WEEK,
    AckSettings,
    CcMode,
    ClassifySettings,
    DaemonSettings,
    DatabaseSettings,
    Group,
    HoursSettings,
    HttpSettings,
    ImapSecurity,
    ImapSettings,
    LogSettings,
    OAuthProvider,
    OAuthSettings,
    PolicySettings,
    SmtpSecurity,
    SmtpSettings,
    StorageSettings,
    TicketSettings,
    Weekday,
    default_data_dir,
)

ENV_PREFIX = "MAILBRIDGE_"
DEFAULT_SECRET_DIRS = ("/run/secrets",)
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


__all__ = [
    "DEFAULT_ACCOUNT",
    "ENV_PREFIX",
    "WORKING_WEEK",
    "AckSettings",
    "CcMode",
    "ClassifySettings",
    "ConfigError",
    "DaemonSettings",
    "DatabaseSettings",
    "Group",
    "HoursSettings",
    "HttpSettings",
    "ImapSecurity",
    "ImapSettings",
    "LogSettings",
    "NestedSecretsSource",
    "OAuthProvider",
    "OAuthSettings",
    "PolicySettings",
    "Settings",
    "SmtpSecurity",
    "SmtpSettings",
    "StorageSettings",
    "TicketSettings",
    "Weekday",
    "default_data_dir",
    "describe_validation_error",
    "load_settings",
    "redacted",
]
