"""The two kinds of failure: transient ones are retried, permanent ones are quarantined."""

from __future__ import annotations


class MailbridgeError(Exception):
    """Base of mailbridge's own failures."""


class TransientError(MailbridgeError):
    """Worth retrying unchanged later: a server or the database is away, the disk is full."""


class PermanentError(MailbridgeError):
    """Retrying the same input will fail the same way: quarantine it with the error."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
