"""The attachment store: content-addressed, stored once, failures classified."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mailbridge.adapters.blobs import BlobStore
from mailbridge.errors import PermanentError


def test_same_bytes_are_stored_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    logo = b"\x89PNG fake logo" * 100
    first, second = store.put(logo), store.put(logo)
    assert first == second == hashlib.sha256(logo).hexdigest()
    assert store.get(first) == logo
    files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert len(files) == 1


def test_unwritable_store_is_a_permanent_store_failure(tmp_path: Path) -> None:
    (tmp_path / "blobs").write_text("a file where the folder should be")
    with pytest.raises(PermanentError) as caught:
        BlobStore(tmp_path / "blobs").put(b"data")
    assert caught.value.stage == "store"


def test_a_digest_is_never_a_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sha256"):
        BlobStore(tmp_path).path_for("../../etc/passwd")


def test_a_failing_look_up_of_the_file_is_a_store_failure_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root no permission bit refuses a stat, so the refusal is injected at Path.stat.
    def refuse(self: Path, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    store = BlobStore(tmp_path / "blobs")
    monkeypatch.setattr(Path, "stat", refuse)
    with pytest.raises(PermanentError, match="Permission denied") as caught:
        store.put(b"data")
    assert caught.value.stage == "store"
