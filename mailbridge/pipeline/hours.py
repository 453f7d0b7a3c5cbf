"""Working hours: is the team in now, and when does it next open (weekends, holidays, closures)."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo

from mailbridge.adapters.holiday_table import holiday_dates
from mailbridge.errors import TransientError
from mailbridge.logs import get_logger
from mailbridge.settings import HoursSettings

log = get_logger(__name__)

DAY_CODES: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# How far next_opening looks before deciding the configuration never opens.
_HORIZON_DAYS: Final = 3 * 366


# Holiday dates by country and year, filled as years are asked for and kept for the process's
# life (a few dozen dates a year); and until when a country's table is known to be unavailable.
_holiday_tables: dict[str, dict[int, frozenset[date]]] = {}
_unavailable_until: dict[str, float] = {}
_RETRY_SECONDS: Final = 600.0


def public_holidays(country: str, year: int) -> frozenset[date]:
    """The public holidays (observed days included) of `country` in `year`; empty for "".

    Raises ValueError (naming holidays_country) for a country `holidays` does not know. When
    the table cannot be had (the daemon's child interpreter failed), no day is a holiday for
    the next ten minutes: an acknowledgement that misses a holiday beats mail held back.
    """
    if not country:
        return frozenset()
    table = _holiday_tables.setdefault(country, {})
    if year not in table:
        if time.monotonic() < _unavailable_until.get(country, 0.0):
            return frozenset()
        try:
            # A look-up may run a child interpreter, so a year brings its neighbours along:
            # next_opening crosses New Year, and a daemon lives through it.
            table.update(holiday_dates(country, range(year - 1, year + 3)))
        except TransientError as error:
            log.error("holidays_unavailable", country=country, error=str(error))
            _unavailable_until[country] = time.monotonic() + _RETRY_SECONDS
            return frozenset()
    return table[year]


@lru_cache(maxsize=16)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _local(moment: datetime, hours: HoursSettings) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("moment must be an aware datetime")
    return moment.astimezone(_zone(hours.timezone))


def is_working_day(day: date, hours: HoursSettings) -> bool:
    """A configured working day that is neither a public holiday nor a closed date."""
    return (
        DAY_CODES[day.weekday()] in hours.working_days
        and day not in hours.closed_dates
        and day not in public_holidays(hours.holidays_country.upper(), day.year)
    )


def is_open(moment: datetime, hours: HoursSettings) -> bool:
    """Whether the team works at `moment` (aware), judged on the wall clock of the zone."""
    local = _local(moment, hours)
    clock = local.time().replace(tzinfo=None)
    return is_working_day(local.date(), hours) and hours.open <= clock < hours.close


def next_opening(moment: datetime, hours: HoursSettings) -> datetime | None:
    """None when open at `moment`; else the next opening, aware, in the configured zone.

    Raises ValueError for a naive moment, or when no opening exists within three years
    (no working days, or `open` not before `close`).
    """
    local = _local(moment, hours)
    if is_open(local, hours):
        return None
    zone = _zone(hours.timezone)
    day = local.date()
    if hours.open < hours.close:
        for offset in range(_HORIZON_DAYS):
            candidate_day = day + timedelta(days=offset)
            if not is_working_day(candidate_day, hours):
                continue
            # A wall time in a DST gap does not exist: the UTC round trip moves it forward.
            opening = datetime.combine(candidate_day, hours.open, tzinfo=zone)
            opening = opening.astimezone(UTC).astimezone(zone)
            if opening > local:
                return opening
    raise ValueError("the working hours never open: check working_days, open and close")
