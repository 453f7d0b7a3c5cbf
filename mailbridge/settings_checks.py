"""What a setting's value must be, checked at load: files, folders, addresses, database URLs.

These run when the settings load, so `config check` refuses what would otherwise only fail at
the first connection or the first answer sent, in a message naming neither key nor value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from mailbridge.pipeline.mailsafe import normalise_mailbox


def readable_file(path: Path) -> Path:
    """The path, if it names a file this process can open for reading."""
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise ValueError(f"{path}: {error.strerror or error}") from None
    return path


def existing_directory(path: Path) -> Path:
    """The path, if it names a folder."""
    if not path.is_dir():
        raise ValueError(f"{path}: not a directory")
    return path


def usable_address(value: str) -> str:
    """The value, if answers can carry it: the test render.py applies when sending."""
    if normalise_mailbox(value) is None:
        raise ValueError(f"{value!r} is not a usable address")
    return value


# Our own addresses and domains are only compared with what senders wrote, never mailed to:
# an internal name such as mail_srv.corp is fine, a list or a display name is a mistake.
_NOT_IN_ONE_ADDRESS = re.compile(r"[\s<>,;()\"]")


def comparable_address(value: str) -> str:
    """The value, if it is one bare address (local@domain)."""
    local, at, domain = value.rpartition("@")
    if not (local and at and domain) or "@" in local or _NOT_IN_ONE_ADDRESS.search(value):
        raise ValueError(f"{value!r} is not one address (local@domain)")
    return value


def comparable_domain(value: str) -> str:
    """The value (a leading "@" allowed, as the screen strips it), if it is one domain."""
    name = value.strip().removeprefix("@")
    if not name or "@" in name or _NOT_IN_ONE_ADDRESS.search(name):
        raise ValueError(f"{value!r} is not one domain name")
    return value


ReadableFile = Annotated[Path, AfterValidator(readable_file)]
Directory = Annotated[Path, AfterValidator(existing_directory)]
Address = Annotated[str, AfterValidator(usable_address)]
OwnAddress = Annotated[str, AfterValidator(comparable_address)]
OwnDomain = Annotated[str, AfterValidator(comparable_domain)]

DATABASE_SCHEMES = ("postgresql+asyncpg", "sqlite+aiosqlite")
_DATABASE_FORMS = "postgresql+asyncpg://USER@HOST/DATABASE or sqlite+aiosqlite:///PATH"


def database_url_problem(url: str) -> str | None:
    """Why SQLAlchemy would refuse the URL, or None; without importing SQLAlchemy, which
    `config check` does not load."""
    scheme, separator, _ = url.partition("://")
    if not separator or not re.fullmatch(r"[\w+]+", scheme):
        return f"not a database URL; use {_DATABASE_FORMS}"
    if scheme not in DATABASE_SCHEMES:
        # The engine is async-only: plain postgresql:// or sqlite:// picks a sync driver.
        return f"driver {scheme!r} is not supported; use {_DATABASE_FORMS}"
    # Nothing more is parsed here: SQLAlchemy takes a password with "/", "#" or "?" in it
    # unencoded, which urllib's parser would misread as the end of the host part.
    if scheme == "sqlite+aiosqlite" and url.partition("://")[2].split("/", 1)[0]:
        return "a SQLite URL has no host: sqlite+aiosqlite:///relative.db or ////absolute.db"
    return None
