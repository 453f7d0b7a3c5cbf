"""glibc allocator tuning, so the daemon's peak memory follows the largest message, not history."""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameter: blocks at least this large are mmap'd and so returned on free.
_M_MMAP_THRESHOLD = -3


def return_large_blocks(threshold: int = 1 << 20) -> bool:
    """Serve allocations of `threshold` bytes and more by mmap; True when it took effect.

    A 10 MB attachment is copied a few times while parsed, each copy in the arena of the
    thread doing the work (parse thread, aiosqlite's thread); glibc keeps those arenas'
    freed blocks, which measured 191 MB peak where 178 MB are needed (bench/RESULTS.md).
    The operator's own MALLOC_MMAP_THRESHOLD_ wins; elsewhere than glibc this does nothing.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
