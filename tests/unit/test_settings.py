"""Settings: file, environment and secret files, in that order of weakness; one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from mailbridge.settings import ConfigError, Settings, load_settings, redacted

EXAMPLE = Path(__file__).parents[2] / "config" / "mailbridge.example.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MAILBRIDGE_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def _keys(data: dict[str, object], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key not in ("departments", "type_keywords"):
            keys |= _keys(value, f"{name}.")
        else:
            keys.add(name)
    return keys


def test_example_file_documents_every_key_with_its_default() -> None:
    assert load_settings(EXAMPLE) == Settings()
    text = EXAMPLE.read_text()
    written = _keys(tomllib.loads(text))
    model = _keys(Settings().model_dump())
    # Keys without a default (None) cannot be written in TOML: they are shown commented out.
    commented = {key for key in model - written if f"# {key.rsplit('.', 1)[1]} = " in text}
    assert model - written - commented == set(), "keys missing from the example file"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "m.toml"
    config.write_text('[imap]\nhost = "file.example"\nport = 143\n')
    monkeypatch.setenv("MAILBRIDGE_IMAP__HOST", "env.example")
    settings = load_settings(config)
    assert (settings.imap.host, settings.imap.port) == ("env.example", 143)


def test_config_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "m.toml"
    config.write_text('[policy]\ncc_mode = "flag"\n')
    monkeypatch.setenv("MAILBRIDGE_CONFIG", str(config))
    assert load_settings().policy.cc_mode == "flag"


def test_secret_files_fill_nested_passwords(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "imap__password").write_text("s3cret-imap\n")
    (tmp_path / "MAILBRIDGE_SMTP__PASSWORD").write_text("s3cret-smtp")
    (tmp_path / "unrelated").write_text("x")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    settings = load_settings()
    assert settings.imap.password.get_secret_value() == "s3cret-imap"
    assert settings.smtp.password.get_secret_value() == "s3cret-smtp"
    shown = str(redacted(settings))
    assert "s3cret" not in shown


def test_database_url_password_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILBRIDGE_DATABASE__URL", "postgresql+asyncpg://mb:hunter2@db/mb")
    shown = redacted(load_settings())
    assert "hunter2" not in str(shown)
    assert shown["database"]["url"] == "postgresql+asyncpg://mb:**********@db/mb"


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('[imap]\nport = "many"\n', "imap.port"),
        ('[policy]\ncc_mode = "maybe"\n', "policy.cc_mode"),
        ("[imap]\nhots = 'x'\n", "imap.hots: unknown setting"),
        ('[hours]\ntimezone = "Mars/Olympus"\n', "hours.timezone"),
        ('[tickets]\nnumber_format = "MB-fixed"\n', "tickets.number_format"),
        ('[hours]\nopen = "18:00:00"\n', "hours: Value error, open (18:00:00) must be before"),
        ("[hours]\nworking_days = []\n", "hours.working_days"),
        ('[hours]\nholidays_country = "XX"\n', "hours.holidays_country"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(tmp_path: Path, toml: str, needle: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert needle in message
    assert "\n" not in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings(tmp_path / "nope.toml")


def test_broken_toml_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[imap\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert "broken.toml" in str(caught.value)
    assert "\n" not in str(caught.value)


def _error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """The one-line ConfigError that loading with these variables gives."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "url",
    [
        "notaurl",
        "foo://bar",
        "postgresql://u@127.0.0.1:1/x",
        "sqlite:///x.db",
        "sqlite+aiosqlite://host/x.db",
    ],
)
def test_a_database_url_sqlalchemy_cannot_use_is_refused_at_load(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    message = _error(monkeypatch, MAILBRIDGE_DATABASE__URL=url)
    assert "database.url (from MAILBRIDGE_DATABASE__URL)" in message


def test_a_password_with_a_slash_in_the_database_url_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A generated (base64) password often holds "/" or "+"; SQLAlchemy takes them unencoded.
    url = "postgresql+asyncpg://mailbridge:ab/cd+ef=@db.example/mailbridge"
    monkeypatch.setenv("MAILBRIDGE_DATABASE__URL", url)
    assert load_settings(None).database.url == url


def test_a_wrong_database_driver_is_told_the_accepted_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(monkeypatch, MAILBRIDGE_DATABASE__URL="postgresql://u@127.0.0.1:1/x")
    assert "postgresql+asyncpg://" in message
    assert "sqlite+aiosqlite:///" in message


def test_database_commands_with_a_bad_url_exit_2_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from mailbridge.cli import main

    monkeypatch.setenv("MAILBRIDGE_DATABASE__URL", "foo://bar")
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 2
    assert "database.url" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_sqlite_folder_that_cannot_be_made_names_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from mailbridge.cli import main

    (tmp_path / "a-file").write_text("")
    database = tmp_path / "a-file" / "sub" / "mb.db"
    monkeypatch.setenv("MAILBRIDGE_DATABASE__URL", f"sqlite+aiosqlite:///{database}")
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 2
    assert result.stderr.startswith("mailbridge: error: database.url")
    assert str(database) in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("MAILBRIDGE_ACK__FROM_ADDRESS", "not an address", "ack.from_address"),
        ("MAILBRIDGE_ACK__FROM_ADDRESS", "a@b.test>, evil@x.test", "ack.from_address"),
        ("MAILBRIDGE_ACK__MESSAGE_ID_DOMAIN", "bad domain<>", "ack.message_id_domain"),
        ("MAILBRIDGE_ACK__ENVELOPE_SENDER", "x y z", "ack.envelope_sender"),
        ("MAILBRIDGE_POLICY__OWN_ADDRESSES", '["@@"]', "policy.own_addresses.0"),
        ("MAILBRIDGE_POLICY__OWN_DOMAINS", '["exa mple"]', "policy.own_domains.0"),
    ],
)
def test_unusable_addresses_and_domains_are_refused_at_load(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, key: str
) -> None:
    message = _error(monkeypatch, **{name: value})
    assert message.startswith(f"invalid setting {key}")
    assert f"(from {name})" in message


def test_usable_addresses_and_domains_load(tmp_path: Path) -> None:
    config = tmp_path / "m.toml"
    config.write_text(
        '[ack]\nfrom_address = "help@bücher.example"\nenvelope_sender = ""\n'
        'message_id_domain = "MB.Example.com"\n'
        '[policy]\nown_addresses = ["o@example.com", "helpdesk@mail_srv.corp"]\n'
        'own_domains = ["@Corp.RO", "mail_srv.corp"]\n'
    )
    settings = load_settings(config)
    assert settings.ack.envelope_sender == ""
    # Only compared with senders, never mailed to: an internal name with "_" is fine.
    assert settings.policy.own_addresses == ["o@example.com", "helpdesk@mail_srv.corp"]
    assert settings.policy.own_domains == ["@Corp.RO", "mail_srv.corp"]


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[imap]\nca_file = '{path}'\n", "imap.ca_file"),
        ("[smtp]\nca_file = '{path}'\n", "smtp.ca_file"),
        ("[accounts.office]\nca_file = '{path}'\n", "accounts.office.ca_file"),
        (
            "[imap.oauth]\nprovider = 'google'\nservice_account_file = '{path}'\n",
            "imap.oauth.service_account_file",
        ),
        ("[ack]\ntemplates_dir = '{path}'\n", "ack.templates_dir"),
    ],
)
def test_a_missing_file_setting_names_the_key_and_the_path(
    tmp_path: Path, toml: str, key: str
) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    config = tmp_path / "m.toml"
    config.write_text(toml.format(path=missing))
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert key in str(caught.value)
    assert str(missing) in str(caught.value)


def test_a_ca_file_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "m.toml"
    config.write_text(f"[imap]\nca_file = '{tmp_path}'\n")
    with pytest.raises(ConfigError, match=r"imap\.ca_file"):
        load_settings(config)
    (tmp_path / "ca.pem").write_text("x")
    config.write_text(f"[imap]\nca_file = '{tmp_path / 'ca.pem'}'\n")
    assert load_settings(config).imap.ca_file == tmp_path / "ca.pem"


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("MAILBRIDGE_IMAP__FOLDERS", "INBOX", "imap.folders"),
        ("MAILBRIDGE_HOURS__CLOSED_DATES", "[2026-02-30]", "hours.closed_dates"),
        ("MAILBRIDGE_HOURS__CLOSED_DATES", '["2026-02-30"]', "hours.closed_dates"),
        ("MAILBRIDGE_IMAP__PORT", "abc", "imap.port"),
    ],
)
def test_environment_errors_name_the_variable_not_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, key: str
) -> None:
    config = tmp_path / "good.toml"
    config.write_text('[imap]\nhost = "x"\n')
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert name in message
    assert key in message
    assert "config file" not in message
    assert "\n" not in message


def _secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, data: bytes) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / name).write_bytes(data)
    monkeypatch.setenv("MAILBRIDGE_SECRETS_DIR", str(secrets))
    return secrets / name


def test_an_unreadable_secret_file_is_named_with_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = _secret(tmp_path, monkeypatch, "imap__password", b"x")
    real_read = Path.read_text

    def read_text(path: Path, *args: object, **kwargs: object) -> str:
        if path == secret:  # root reads any file: refuse this one as a mode-0000 file would
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    message = _error(monkeypatch)
    assert f"secret file {secret} (imap.password)" in message
    assert "Permission denied" in message
    assert "config file" not in message


def test_a_secret_file_that_is_not_utf8_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = _secret(tmp_path, monkeypatch, "imap__password", b"\xff\xfe")
    assert f"secret file {secret} (imap.password): not UTF-8" in _error(monkeypatch)


def test_a_bad_value_in_a_secret_file_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = _secret(tmp_path, monkeypatch, "imap__port", b"99999\n")
    assert f"imap.port (from secret file {secret})" in _error(monkeypatch)


@pytest.mark.parametrize("data", [b"", b"\n", b"  \t\n"])
def test_an_empty_secret_file_is_refused_not_used_as_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes
) -> None:
    config = tmp_path / "m.toml"
    config.write_text('[imap]\npassword = "from-the-file"\n')
    secret = _secret(tmp_path, monkeypatch, "imap__password", data)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert f"secret file {secret} (imap.password): empty" in str(caught.value)


def test_a_secret_with_a_trailing_newline_is_used_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _secret(tmp_path, monkeypatch, "imap__password", b"hunter2\n")
    assert load_settings().imap.password.get_secret_value() == "hunter2"


def test_an_unknown_group_in_a_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(monkeypatch, MAILBRIDGE_IMAPP__HOST="x")
    assert message.startswith("environment variable MAILBRIDGE_IMAPP__HOST: no settings group")


def test_mailbridge_variables_without_a_group_stay_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("MAILBRIDGE_FAULT_LONG", "MAILBRIDGE_FUZZ_EXAMPLES", "MAILBRIDGE_BENCH_PG"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("MAILBRIDGE_ACCOUNTS__OFFICE__HOST", "imap.office.example")
    assert load_settings().accounts["office"].host == "imap.office.example"


def test_an_unknown_group_in_a_secret_file_name_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = _secret(tmp_path, monkeypatch, "imapp__password", b"x")
    assert _error(monkeypatch).startswith(f"secret file {secret}: no settings group 'imapp'")


def test_other_credentials_without_a_group_are_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tls.key").write_text("x")
    (tmp_path / "db_password").write_text("")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert load_settings() == Settings()


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity", "nan"])
@pytest.mark.parametrize(
    "name", ["MAILBRIDGE_IMAP__TIMEOUT_SECONDS", "MAILBRIDGE_SMTP__OAUTH__REFRESH_MARGIN_SECONDS"]
)
def test_non_finite_numbers_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    key = name.removeprefix("MAILBRIDGE_").lower().replace("__", ".")
    assert f"{key} (from {name})" in _error(monkeypatch, **{name: value})
