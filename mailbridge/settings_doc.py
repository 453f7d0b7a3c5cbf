"""The configuration reference, generated from the settings model: `python -m
mailbridge.settings_doc` or `mailbridge config reference` print it as a Markdown table.

docs/operator-guide.md carries the same table; a test compares the two, so it cannot drift.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from mailbridge.settings import ENV_PREFIX, ImapSettings, Settings

ACCOUNT_PLACEHOLDER = "NAME"
_DYNAMIC_DEFAULTS = {"storage.data_dir": '`$STATE_DIRECTORY` under systemd, else `"data"`'}


def describe_type(annotation: Any) -> str:
    """A short, human name for a field's type."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:  # a checked type (ReadableFile, Address): named as what it holds
        return describe_type(args[0])
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        name = " or ".join(describe_type(a) for a in inner)
        return f"{name} (optional)" if len(inner) < len(args) else name
    if origin is Literal:
        return " \\| ".join(f'"{a}"' for a in args)
    if origin is list:
        return f"list of {describe_type(args[0])}"
    if origin is dict:
        return f"table of {describe_type(args[1])}"
    if isinstance(annotation, type):
        if issubclass(annotation, Enum):
            return " \\| ".join(f'"{member.value}"' for member in annotation)
        if issubclass(annotation, SecretStr):
            return "secret string"
        if issubclass(annotation, Path):
            return "path"
        names = {str: "string", int: "integer", float: "number", bool: "boolean"}
        if annotation in names:
            return names[annotation]
        return annotation.__name__.lower()
    return str(annotation)


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "(unset)"
    if isinstance(value, SecretStr):
        return '`""`'
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    text = json.dumps(value, ensure_ascii=False, default=str).replace("|", "\\|")
    return f"`{text}`"


def _rows(model: type[BaseModel], key: str, env: str) -> Iterator[tuple[str, str, str, str]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        child_key, child_env = f"{key}.{name}", f"{env}__{name.upper()}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _rows(annotation, child_key, child_env)
            continue
        default = _DYNAMIC_DEFAULTS.get(child_key) or _default(field)
        yield child_key, describe_type(annotation), default, child_env


def reference_rows() -> list[tuple[str, str, str, str]]:
    """(key, type, default, environment variable) for every setting, in model order."""
    rows: list[tuple[str, str, str, str]] = []
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        env = f"{ENV_PREFIX}{name.upper()}"
        if name == "accounts":
            placeholder = ACCOUNT_PLACEHOLDER
            rows.extend(
                _rows(ImapSettings, f"accounts.{placeholder.lower()}", f"{env}__{placeholder}")
            )
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(_rows(annotation, name, env))
    return rows


def reference_markdown() -> str:
    """The table, with a line on how accounts and secrets are named."""
    lines = [
        "| key | type | default | environment variable |",
        "|---|---|---|---|",
    ]
    for key, kind, default, env in reference_rows():
        lines.append(f"| `{key}` | {kind} | {default} | `{env}` |")
    lines.append("")
    lines.append(
        "`accounts.name.*` are the same keys as `imap.*`, for each extra mailbox account "
        "`[accounts.NAME]` (lowercase letters, digits and `_`). A secret file takes the "
        "variable's name without the prefix, in lowercase: `imap__password`, "
        "`accounts__office__password`, `imap__oauth__client_secret`."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
