"""An SMTP sink that SIGKILLs the daemon while an acknowledgement's DATA is arriving."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from tests.servers.smtp import ReceivedMail, SmtpSink, _Fault


class KillingSink(SmtpSink):
    """`kill_on_data(pid, nth)`: when the nth DATA's final dot arrives, SIGKILL `pid` and cut
    the connection without answering, so the client never hears a reply (the message is
    `seen`, not accepted). `killed` is set then."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self._victim: int | None = None
        self._countdown = 0
        self.killed = threading.Event()

    def kill_on_data(self, pid: int, nth: int = 1) -> None:
        with self._lock:
            self._victim, self._countdown = pid, nth
            self.killed.clear()

    def disarm(self) -> None:
        with self._lock:
            self._victim = None

    def _saw(self, mail: ReceivedMail) -> None:
        super()._saw(mail)
        with self._lock:
            if self._victim is None:
                return
            self._countdown -= 1
            if self._countdown > 0:
                return
            victim, self._victim = self._victim, None
            self._fault_now = _Fault("drop", "data", remaining=1)  # never answer this one
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        self.killed.set()
