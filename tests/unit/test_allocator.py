"""The allocator setting that keeps the daemon's peak memory set by the largest message."""

from __future__ import annotations

import json
import subprocess
import sys

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


# Freed heap memory below a block still in use stays resident until it is trimmed: what a
# thousand ordinary messages leave behind before a large one arrives.
FRAGMENTED_HEAP = """
import json
from mailbridge.adapters.allocator import give_back_free_memory, return_large_blocks

def resident_mb():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024

return_large_blocks()  # as the daemon runs: blocks under 1 MiB come from the heap
blocks = [bytearray(200_000) for _ in range(400)]  # 80 MB, each page touched
del blocks[:-1]  # the last block, on top of the heap, keeps the rest from being trimmed
before = resident_mb()
trimmed = give_back_free_memory()
print(json.dumps({"trimmed": trimmed, "before": before, "after": resident_mb()}))
"""


def test_free_heap_pages_go_back_to_the_system() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, check=True
    )
    figures = json.loads(done.stdout)
    assert figures["trimmed"] is True
    assert figures["before"] - figures["after"] > 60, figures
