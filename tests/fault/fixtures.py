"""Fixtures for the fault tests; a test module imports the ones it uses by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fault.harness import Rig
from tests.fault.sink import KillingSink
from tests.servers.dovecot import Mailbox


@pytest.fixture
def killing_sink() -> Iterator[KillingSink]:
    sink = KillingSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
def rig(mailbox: Mailbox, killing_sink: KillingSink, database_url: str, tmp_path: Path) -> Rig:
    return Rig(mailbox, killing_sink, database_url, tmp_path)
