"""The allocator setting that keeps the daemon's peak memory set by the largest message."""

from __future__ import annotations

import pytest

from mailbridge.adapters.allocator import return_large_blocks, share_arenas


def test_large_blocks_go_back_to_the_system_unless_the_operator_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert return_large_blocks() is True  # glibc, as on every Debian machine and image
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert return_large_blocks() is False


def test_threads_share_two_arenas_unless_the_operator_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert share_arenas() is True
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert share_arenas() is False
