"""The operator guide's generated parts (settings, metrics) equal what the code generates."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from mailbridge.cli import main
from mailbridge.metrics import Metrics
from mailbridge.settings import Settings
from mailbridge.settings_doc import describe_type, reference_markdown, reference_rows

GUIDE = Path(__file__).parents[2] / "docs" / "operator-guide.md"


def generated_block(name: str) -> str:
    text = GUIDE.read_text(encoding="utf-8")
    label = re.escape(name)
    pattern = rf"<!-- BEGIN generated: {label}[^>]*-->\n(.*?)<!-- END generated: {label} -->"
    match = re.search(pattern, text, re.DOTALL)
    assert match, f"no generated block {name!r} in {GUIDE}"
    return match.group(1)


def test_the_guide_has_the_current_configuration_reference() -> None:
    assert generated_block("mailbridge config reference") == reference_markdown(), (
        "regenerate: python -m mailbridge.settings_doc"
    )


def test_the_guide_lists_every_metric() -> None:
    assert generated_block("metrics") == Metrics().reference_markdown()


def test_config_reference_command_prints_the_table() -> None:
    result = CliRunner().invoke(main, ["config", "reference"])
    assert result.exit_code == 0
    assert result.stdout == reference_markdown()


def test_every_setting_has_a_row_with_its_environment_variable() -> None:
    keys = {key for key, *_ in reference_rows()}
    dump = Settings().model_dump()

    def walk(data: dict[str, object], prefix: str) -> set[str]:
        found: set[str] = set()
        for key, value in data.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and key not in ("departments", "type_keywords", "accounts"):
                found |= walk(value, f"{name}.")  # type: ignore[arg-type]
            elif key != "accounts":
                found.add(name)
        return found

    assert walk(dump, "") <= keys
    imap_keys = {k.removeprefix("imap.") for k in keys if k.startswith("imap.")}
    account_keys = {k.removeprefix("accounts.name.") for k in keys if k.startswith("accounts.")}
    assert imap_keys == account_keys
    rows = {key: env for key, _type, _default, env in reference_rows()}
    assert rows["imap.oauth.client_secret"] == "MAILBRIDGE_IMAP__OAUTH__CLIENT_SECRET"
    assert rows["accounts.name.host"] == "MAILBRIDGE_ACCOUNTS__NAME__HOST"


def test_type_names_are_for_people() -> None:
    fields = Settings.model_fields
    assert describe_type(fields["imap"].annotation) == "imapsettings"
    from mailbridge.settings import ImapSettings, OAuthSettings

    assert describe_type(ImapSettings.model_fields["ca_file"].annotation) == "path (optional)"
    assert describe_type(ImapSettings.model_fields["folders"].annotation) == "list of string"
    assert describe_type(OAuthSettings.model_fields["provider"].annotation) == (
        '"none" \\| "command" \\| "microsoft" \\| "google"'
    )
