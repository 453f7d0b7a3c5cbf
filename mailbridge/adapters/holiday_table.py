"""Public holiday tables from the `holidays` package, in process or in a short-lived child."""

# Why a child for the daemon: asking `holidays` for one country imports all of its ~250
# countries, about 13 MB that a daemon would hold for its whole life to answer "is this date a
# holiday" from a few dozen dates. A short-lived command (`ingest` under an MTA) exits soon
# anyway and would only pay a child interpreter's start-up (0.2 s), so it computes in process.

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from datetime import date
from functools import lru_cache
from typing import Any, Final

from mailbridge.errors import TransientError

_UNKNOWN_COUNTRY: Final = 3
_TIMEOUT_SECONDS: Final = 60
# What the child need not see: the daemon's secrets and its systemd notification socket.
_WITHHELD_PREFIXES: Final = ("MAILBRIDGE_", "NOTIFY_", "WATCHDOG_", "CREDENTIALS_DIRECTORY")

_CHILD: Final = f"""
import json, sys
import holidays
if sys.argv[1:] == ["--countries"]:
    json.dump(sorted(holidays.list_supported_countries()), sys.stdout)
    sys.exit(0)
country, years = sys.argv[1], [int(year) for year in sys.argv[2:]]
try:
    table = holidays.country_holidays(country, years=years)
except NotImplementedError:
    sys.exit({_UNKNOWN_COUNTRY})
json.dump(sorted(day.isoformat() for day in table), sys.stdout)
"""

_child_process = False


class UnknownCountry(ValueError):
    """The `holidays` package has no calendar for the country asked for."""


def compute_in_child_process(enabled: bool = True) -> None:
    """From now on, run `holidays` in a child interpreter (for a long-running daemon)."""
    global _child_process
    _child_process = enabled


def _unknown(country: str) -> UnknownCountry:
    return UnknownCountry(f"holidays_country {country!r} is not known to `holidays`")


def _ask_child(*arguments: str) -> str:
    """The child's answer; TransientError (one line) when it cannot be had."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(_WITHHELD_PREFIXES)}
    try:
        # -P: the working directory (the daemon's state directory) is not on its path.
        done = subprocess.run(
            [sys.executable, "-P", "-c", _CHILD, *arguments],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_SECONDS,
            env=environment,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TransientError(
            f"public holidays: no answer from `holidays` within {_TIMEOUT_SECONDS} s"
        ) from None
    except OSError as error:
        raise TransientError(f"public holidays: cannot start Python: {error.strerror}") from None
    if done.returncode == _UNKNOWN_COUNTRY:
        raise _unknown(arguments[0])
    if done.returncode != 0:
        last_line = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TransientError(f"public holidays: `holidays` failed: {last_line}")
    return done.stdout


def _package() -> Any:
    try:
        import holidays
    except ImportError as error:
        raise TransientError(f"public holidays: cannot import `holidays`: {error}") from None
    return holidays


@lru_cache(maxsize=1)
def supported_countries() -> frozenset[str]:
    """The country codes `holidays` has calendars for.

    Raises TransientError when they cannot be had (the package or the child is broken).
    """
    if _child_process:
        return frozenset(json.loads(_ask_child("--countries")))
    return frozenset(_package().list_supported_countries())


def holiday_dates(country: str, years: Iterable[int]) -> dict[int, frozenset[date]]:
    """The public holidays (observed days included) of `country` in each of `years`.

    Raises UnknownCountry for a country `holidays` does not know, TransientError when the
    dates cannot be had (the package or the child is broken).
    """
    wanted = sorted(set(years))
    if _child_process:
        answer = json.loads(_ask_child(country, *map(str, wanted)))
        days = [date.fromisoformat(text) for text in answer]
    else:
        try:
            days = list(_package().country_holidays(country, years=wanted))
        except NotImplementedError:
            raise _unknown(country) from None
    return {year: frozenset(day for day in days if day.year == year) for year in wanted}
