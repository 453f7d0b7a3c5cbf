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
