"""Settings: a TOML file, then MAILBRIDGE_* environment variables, then secret files; built once."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
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
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
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
        sources: list[PydanticBaseSettingsSource] = [init_settings, NamedEnvSource(settings_cls)]
        sources.append(NestedSecretsSource(settings_cls, _secret_dirs()))
        if toml_path is not None:
            sources.append(_toml_source(settings_cls, toml_path))
        return tuple(sources)


# pydantic-settings builds sources from class state; this holds the file chosen for one load.
_CONFIG_PATH: dict[str, Path | None] = {}


def _toml_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    try:
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"config file {path}: {error}") from None


def _secret_dirs() -> list[Path]:
    dirs = [Path(d) for d in DEFAULT_SECRET_DIRS]
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        dirs.append(Path(credentials))
    extra = os.environ.get("MAILBRIDGE_SECRETS_DIR")
    if extra:
        dirs.append(Path(extra))
    return [d for d in dirs if d.is_dir()]


def _env_names() -> dict[str, str]:
    """MAILBRIDGE_* variables by lower-case name (pydantic-settings ignores case), to the
    name as set."""
    return {name.lower(): name for name in os.environ if name.upper().startswith(ENV_PREFIX)}


def _dotted(env_name: str) -> str:
    return env_name[len(ENV_PREFIX) :].lower().replace("__", ".")


class _VariableError(ValueError):
    """A variable's value is not the JSON its setting needs (a ValueError, so that
    pydantic-settings still ignores it where it tolerates non-JSON)."""


class NamedEnvSource(EnvSettingsSource):
    """The environment, with errors that name the variable instead of its top-level group."""

    def __call__(self) -> dict[str, Any]:
        groups = self.settings_cls.model_fields
        for name in _env_names().values():
            # Only MAILBRIDGE_<GROUP>__<KEY> reads as a setting: MAILBRIDGE_CONFIG,
            # MAILBRIDGE_SECRETS_DIR and the test and bench knobs have no "__".
            group, nested, _ = name[len(ENV_PREFIX) :].lower().partition("__")
            if nested and group not in groups:
                raise ConfigError(f"environment variable {name}: {_no_group(group, groups)}")
        return super().__call__()

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError as error:
            name = self._variable(field_name, value)
            raise _VariableError(
                f"environment variable {name} ({_dotted(name)}): not valid JSON ({error}); "
                'lists and tables are written as JSON, e.g. ["INBOX"]'
            ) from error

    def _variable(self, field_name: str, value: Any) -> str:
        suffix = field_name.lower()
        for lower, name in _env_names().items():
            if os.environ[name] == value and (
                lower == ENV_PREFIX.lower() + suffix or lower.endswith("__" + suffix)
            ):
                return name
        return f"{ENV_PREFIX}…{suffix.upper()}"


def _no_group(group: str, groups: Iterable[str]) -> str:
    return f"no settings group {group!r} (known: {', '.join(groups)})"


def secret_files(dirs: list[Path], groups: Iterable[str]) -> dict[tuple[str, ...], Path]:
    """Each secret file by its key, e.g. ("imap", "password"); a later folder wins.

    A name with "__" follows mailbridge's naming, so an unknown group in it is a typo to
    report, not a file to skip. Every folder read is mailbridge's alone: the one in
    $MAILBRIDGE_SECRETS_DIR; $CREDENTIALS_DIRECTORY, which systemd fills per unit from its
    LoadCredential= lines; /run/secrets, which Docker fills per container from the secrets
    granted to it. Other credentials there (a TLS key, `db_password`) have no "__" and are
    left alone.
    """
    known = set(groups)
    found: dict[tuple[str, ...], Path] = {}
    for directory in dirs:
        try:
            paths = sorted(directory.iterdir())
        except OSError as error:
            raise ConfigError(f"secrets folder {directory}: {error.strerror or error}") from None
        for path in paths:
            name = path.name.lower().removeprefix(ENV_PREFIX.lower())
            key = tuple(name.split("__"))
            if len(key) < 2 or not all(key) or path.name.startswith("."):
                continue
            if key[0] not in known:
                raise ConfigError(f"secret file {path}: {_no_group(key[0], groups)}")
            if path.is_file():
                found[key] = path
    return found


def _read_secret(path: Path, key: tuple[str, ...]) -> str:
    """The file's text without surrounding white space (`echo` adds a newline)."""
    where = f"secret file {path} ({'.'.join(key)})"
    try:
        value = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    except OSError as error:
        raise ConfigError(f"{where}: cannot read it: {error.strerror or error}") from None
    if not value:
        # An empty file would silently replace the TOML value with "".
        raise ConfigError(f"{where}: empty; delete it to use the config file's value")
    return value


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
        for key, path in secret_files(self._dirs, self.settings_cls.model_fields).items():
            value = _read_secret(path, key)
            group = found
            for part in key[:-1]:
                group = group.setdefault(part, {})
                if not isinstance(group, dict):
                    break
            else:
                group[key[-1]] = value
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
        raise ConfigError(describe_validation_error(error, _origin)) from None
    except SettingsError as error:
        raise ConfigError(_settings_error(error)) from None
    finally:
        _CONFIG_PATH.pop("path", None)


def _settings_error(error: SettingsError) -> str:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, _VariableError):
            return str(cause)
        cause = cause.__cause__
    return " ".join(f"{error}: {error.__cause__ or ''}".split())


def _origin(loc: tuple[str | int, ...]) -> str:
    """Where a bad value came from, if not the config file: " (from VARIABLE)" or
    " (from secret file PATH)"; an error on a group names everything set inside it."""
    key = tuple(str(part).lower() for part in loc)

    def related(other: tuple[str, ...]) -> bool:
        return key[: len(other)] == other or other[: len(key)] == key

    env = _env_names()
    names = sorted(env[n] for n in env if related(tuple(_dotted(env[n]).split("."))))
    if not names:
        files = secret_files(_secret_dirs(), Settings.model_fields)
        names = sorted(f"secret file {path}" for k, path in files.items() if related(k))
    return f" (from {', '.join(names)})" if names else ""


def describe_validation_error(
    error: ValidationError, origin: Callable[[tuple[str | int, ...]], str] | None = None
) -> str:
    """One line: each bad key with what is wrong with it (and, given `origin`, where it was
    set)."""
    parts = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(root)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown setting"
        where = origin(item["loc"]) if origin is not None else ""
        parts.append(f"{key}{where}: {message}")
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
