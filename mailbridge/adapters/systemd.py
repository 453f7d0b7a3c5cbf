"""systemd's notify protocol (sd_notify(3)): READY, STATUS, WATCHDOG and STOPPING datagrams.

A few lines on an AF_UNIX datagram socket named by $NOTIFY_SOCKET (a path, or an abstract
address written with a leading "@"). Without $NOTIFY_SOCKET every call is a no-op, so the
daemon behaves the same under systemd, Docker, or a terminal. Sending never blocks and never
raises: a supervisor that went away must not take the daemon down with it.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Mapping

from mailbridge.logs import get_logger

log = get_logger(__name__)

# Variables systemd hands the main process that a child (an OAuth token command) must not see:
# a child that inherits them could answer for us (and is ignored under NotifyAccess=main).
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def notify_address(value: str | None) -> str | bytes | None:
    """The socket address from $NOTIFY_SOCKET: a path, or "@name" for an abstract socket."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock (vsock:CID:PORT) and relative paths are not for a service like this


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, or None when not asked for.

    $WATCHDOG_PID, when set, names the process the watchdog is for; any other process (a
    child started with the same environment) must not ping.
    """
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


class Notifier:
    """Tells the service manager how the daemon is doing; all methods are no-ops without one."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self._socket: socket.socket | None = None
        self._warned = False
        self.sent: deque[str] = deque(maxlen=64)  # the latest messages sent, newest last

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(notify_address(env.get("NOTIFY_SOCKET")))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send one datagram of `KEY=value` lines; True when it went out."""
        if self.address is None or not assignments:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments)
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto(message.encode("utf-8", "replace"), self.address)
        except OSError as error:
            if not self._warned:
                log.warning("systemd_notify_failed", error=str(error))
                self._warned = True
            return False
        self.sent.append(message)
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
