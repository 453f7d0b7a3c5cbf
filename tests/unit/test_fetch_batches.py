"""A mailbox is drained in batches bounded in messages and in bytes (a batch is held whole)."""

from __future__ import annotations

from mailbridge.mailbox_worker import fetch_batches

MB = 1024 * 1024


def test_batches_are_cut_by_count() -> None:
    uids = list(range(1, 8))
    assert fetch_batches(uids, dict.fromkeys(uids, 10), 3, 16 * MB) == [[1, 2, 3], [4, 5, 6], [7]]


def test_batches_are_cut_by_bytes_and_a_large_message_goes_alone() -> None:
    sizes = {1: 6 * MB, 2: 6 * MB, 3: 6 * MB, 4: 40 * MB, 5: 1 * MB, 6: 1 * MB}
    assert fetch_batches([1, 2, 3, 4, 5, 6], sizes, 25, 16 * MB) == [[1, 2], [3], [4], [5, 6]]


def test_unknown_sizes_count_as_nothing_and_nothing_is_dropped() -> None:
    batches = fetch_batches([5, 9, 12], {}, 2, MB)
    assert batches == [[5, 9], [12]]
    assert fetch_batches([], {}, 2, MB) == []
