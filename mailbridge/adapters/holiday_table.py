"""Public holiday tables from the `holidays` package, computed in a short-lived child process."""

# Why a child: asking `holidays` for one country imports all of its ~250 countries, about 13 MB
# that a daemon would then hold for its whole life to answer "is this date a holiday" from a
# few dozen dates. The child computes the dates and exits; the daemon keeps only the dates.

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from datetime import date
from functools import lru_cache
from typing import Final

_UNKNOWN_COUNTRY: Final = 3
_TIMEOUT_SECONDS: Final = 60

_CHILD: Final = """
import json, sys
import holidays
country, years = sys.argv[1], [int(year) for year in sys.argv[2:]]
if not years:
    json.dump(sorted(holidays.list_supported_countries()), sys.stdout)
    sys.exit(0)
try:
    table = holidays.country_holidays(country, years=years)
except NotImplementedError:
    sys.exit(3)
json.dump(sorted(day.isoformat() for day in table), sys.stdout)
"""


class UnknownCountry(ValueError):
    """The `holidays` package has no calendar for the country asked for."""


def _ask_child(*arguments: str) -> str:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, *arguments],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RuntimeError(f"could not compute public holidays: {error}") from error
    if done.returncode == _UNKNOWN_COUNTRY:
        raise UnknownCountry(f"holidays_country {arguments[0]!r} is not known to `holidays`")
    if done.returncode != 0:
        last_line = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"could not compute public holidays: {last_line}")
    return done.stdout


@lru_cache(maxsize=1)
def supported_countries() -> frozenset[str]:
    """The country codes `holidays` has calendars for."""
    return frozenset(json.loads(_ask_child("")))


def holiday_dates(country: str, years: Iterable[int]) -> dict[int, frozenset[date]]:
    """The public holidays (observed days included) of `country` in each of `years`.

    Raises UnknownCountry for a country `holidays` does not know.
    """
    wanted = sorted(set(years))
    days = [date.fromisoformat(text) for text in json.loads(_ask_child(country, *map(str, wanted)))]
    return {year: frozenset(day for day in days if day.year == year) for year in wanted}
