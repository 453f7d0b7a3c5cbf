"""A private PostgreSQL cluster on its own port that a test can stop and start at will.

Made with the distribution's `initdb` and `pg_ctl`, run as the `postgres` OS user
(`runuser -u postgres --`), its data directory in a temporary folder owned by that user.
Unavailable (the tests skip, or fail under CI=true) when not root or PostgreSQL's server
binaries are not installed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class ClusterUnavailable(Exception):
    pass


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise ClusterUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgCluster:
    def __init__(self) -> None:
        if os.geteuid() != 0 or shutil.which("runuser") is None:
            raise ClusterUnavailable("a private PostgreSQL cluster needs root and runuser")
        self.bin = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="mbpg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "run"
        self.port = _free_port()
        self.log = self.root / "postgres.log"
        self.running = False

    def _as_postgres(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}{self.log_tail()}")

    def init(self) -> PgCluster:
        os.chmod(self.root, 0o755)
        self.socket_dir.mkdir()
        shutil.chown(self.root, "postgres", "postgres")
        shutil.chown(self.socket_dir, "postgres", "postgres")
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=50"
        )
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "-t", "60", "start",
        )  # fmt: skip
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m fast` (clients disconnected) or `immediate` (as a crash would)."""
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"
        )
        self.running = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._listening():
            time.sleep(0.05)

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def url(self, database: str = "postgres", driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def cleanup(self) -> None:
        if self.running:
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
