"""Click parameter types shared by the commands: ids, limits, moments, timeouts and URLs."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn
from urllib.parse import urlsplit

import click

# Row ids are BIGINT on PostgreSQL and INTEGER on SQLite: both stop at 2**63 - 1, and a larger
# number would reach the driver and fail there as a traceback.
MAX_ID = 2**63 - 1
MAX_LIMIT = 1_000_000  # rows a listing loads into memory at once
MAX_TIMEOUT = 3600.0  # seconds; beyond that the socket layer overflows and nobody waits anyway

ID = click.IntRange(1, MAX_ID)


def is_row_id(text: str) -> bool:
    """Whether `text` is the digits of an id the database can hold (the rule ID applies)."""
    return text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_ID


LIMIT = click.IntRange(1, MAX_LIMIT)

_AGE = re.compile(r"^\s*(\d{1,6})\s*([smhdw])\s*$", re.IGNORECASE)
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class SinceType(click.ParamType[datetime]):
    """A moment: `YYYY-MM-DD`, an ISO datetime, or an age such as `30m`, `2h`, `3d`, `1w`.

    Dates and datetimes without an offset are local time; the value is returned in UTC.
    """

    name = "DATE|DATETIME|AGE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        age = _AGE.match(text)
        if age:
            delta = timedelta(**{_AGE_UNITS[age.group(2).lower()]: int(age.group(1))})
            try:
                return datetime.now(UTC) - delta
            except OverflowError:
                self._out_of_range(value, param, ctx)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"not a date: {value!r} (use YYYY-MM-DD, an ISO datetime, or an age: 2h, 3d)",
                param,
                ctx,
            )
        try:
            if moment.tzinfo is None:
                moment = moment.astimezone()  # local time, as the admin means it
            return moment.astimezone(UTC)
        except (OverflowError, ValueError):  # a valid date whose UTC moment is year 0 or 10000
            self._out_of_range(value, param, ctx)

    def _out_of_range(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> NoReturn:
        self.fail(f"out of range: {value!r} (a moment from year 1 to 9999)", param, ctx)


SINCE = SinceType()


class TicketRefType(click.ParamType[str]):
    """A ticket number (MB-000042) or its numeric id; digits beyond an id's range are refused."""

    name = "NUMBER"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        # The query reads digits-only as an id: they must make one the database can hold.
        if text.isdigit() and not is_row_id(text):
            self.fail(f"{text!r} is not a ticket number or id (ids are 1 to {MAX_ID})", param, ctx)
        return text


TICKET_REF = TicketRefType()


class SecondsType(click.FloatRange):
    """A positive number of seconds, at most MAX_TIMEOUT (NaN passes FloatRange, not this)."""

    def __init__(self) -> None:
        super().__init__(min=0, max=MAX_TIMEOUT, min_open=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


SECONDS = SecondsType()


class HttpUrlType(click.ParamType[str]):
    """An http:// or https:// URL with a host."""

    name = "URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            parts = urlsplit(text)
            valid = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
            _ = parts.port  # a port that is not a number raises here
        except ValueError:
            valid = False
        if not valid:
            self.fail(f"not an http(s) URL with a host: {text!r}", param, ctx)
        return text


HTTP_URL = HttpUrlType()
