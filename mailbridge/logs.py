"""structlog set-up: JSON lines off a TTY, readable console on one; stdlib loggers included."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO


def _import_structlog_without_rich() -> None:
    """Import structlog with `rich` hidden, unless something has imported either already.

    structlog imports rich, when installed, for console tracebacks: 5 MB resident in a daemon
    that writes JSON lines. The admin commands import rich for their tables when they run.
    Every module takes its logger from here, so this is where structlog is first imported.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # the import system's "not here"
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


_import_structlog_without_rich()

import structlog  # noqa: E402
from structlog.contextvars import bound_contextvars  # noqa: E402
from structlog.typing import FilteringBoundLogger  # noqa: E402

__all__ = ["FilteringBoundLogger", "bound_contextvars", "configure", "get_logger"]


def get_logger(name: str) -> Any:
    """The module's structlog logger (bound lazily, so configure() may come later)."""
    return structlog.get_logger(name)


# Libraries that talk a lot at DEBUG, or log every byte received, are kept at WARNING unless
# debug logging is asked for; aioimaplib formats every chunk at DEBUG (a measured CPU hog).
_CHATTY = ("aioimaplib", "aiosmtplib", "sqlalchemy", "alembic", "mailparser", "asyncio")
_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|authorization", re.IGNORECASE)
_LOGIN_LINE = re.compile(r"(LOGIN\s+\S+\s+)(\"[^\"]*\"|\S+)", re.IGNORECASE)
_AUTH_LINE = re.compile(r"(AUTH(?:ENTICATE)?\s+\S+\s+)\S+", re.IGNORECASE)


def redact_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Never let a password or token reach a log line, whatever library logged it."""
    for key in list(event):
        if _SECRET_KEYS.search(key):
            event[key] = "**********"
    text = event.get("event")
    if isinstance(text, str) and ("LOGIN" in text.upper() or "AUTH" in text.upper()):
        text = _LOGIN_LINE.sub(r"\1**********", text)
        event["event"] = _AUTH_LINE.sub(r"\1**********", text)
    return event


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route structlog and the stdlib loggers through one renderer on `stream` (stderr)."""
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else _keep,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = getattr(logging, level.upper())
    root.setLevel(numeric)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)


def _keep(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event
