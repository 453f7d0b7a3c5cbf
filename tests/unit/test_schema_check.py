"""The schema check reads the migration scripts itself: it must agree with Alembic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from mailbridge.adapters.db import engine
from mailbridge.adapters.db.engine import (
    SchemaError,
    alembic_config,
    head_revision,
    make_engine,
    upgrade,
)
from mailbridge.adapters.db.models import Base


def test_the_head_read_from_the_scripts_is_alembics_head() -> None:
    alembic_head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head_revision() == alembic_head is not None


def _script(folder: Path, revision: str, down: str | tuple[str, ...] | None) -> None:
    (folder / f"{revision}_x.py").write_text(
        f'"""{revision}"""\n\nrevision: str = "{revision}"\n'
        f"down_revision: str | tuple[str, ...] | None = {down!r}\n"
    )


def test_the_newest_of_a_chain_is_the_head_and_two_heads_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    monkeypatch.setattr(engine, "_migrations_dir", lambda: tmp_path)
    _script(versions, "0001", None)
    _script(versions, "0002", "0001")
    _script(versions, "0003", "0002")
    assert head_revision() == "0003"

    _script(versions, "0004", "0002")  # a branch: 0003 and 0004 both follow 0002

    with pytest.raises(SchemaError, match="several heads"):
        head_revision()

    _script(versions, "0005", ("0003", "0004"))  # a merge migration joins them again

    assert head_revision() == "0005"


def test_the_daemon_s_imports_do_not_load_alembic() -> None:
    probe = "import sys, mailbridge.adapters.db.engine; print('alembic' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


async def test_the_models_are_what_the_migrations_make(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    migrated = make_engine(url)
    await upgrade(migrated, url)
    await migrated.dispose()
    with create_engine(f"sqlite:///{tmp_path / 'm.db'}").connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
