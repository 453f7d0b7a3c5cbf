"""Working hours: weekends, Romanian and Serbian public holidays, closed dates, DST."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine

from mailbridge.pipeline.hours import is_open, next_opening, public_holidays
from mailbridge.settings import HoursSettings

BUCHAREST = ZoneInfo("Europe/Bucharest")
BELGRADE = ZoneInfo("Europe/Belgrade")


def hours(**overrides: Any) -> HoursSettings:
    return HoursSettings(**overrides)


def local(
    year: int, month: int, day: int, hour: int, minute: int, zone: ZoneInfo = BUCHAREST
) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (local(2026, 9, 11, 8, 0), True),  # Friday, opening minute
        (local(2026, 9, 11, 16, 59), True),
        (local(2026, 9, 11, 17, 0), False),  # closing is exclusive
        (local(2026, 9, 11, 7, 59), False),
        (local(2026, 9, 12, 10, 0), False),  # Saturday
        (local(2026, 9, 13, 10, 0), False),  # Sunday
        (local(2026, 12, 1, 10, 0), False),  # Tuesday, Ziua Națională
        (local(2026, 11, 30, 10, 0), False),  # Monday, Sfântul Andrei
    ],
)
def test_is_open(moment: datetime, expected: bool) -> None:
    assert is_open(moment, hours()) is expected


def test_open_now_has_no_next_opening() -> None:
    assert next_opening(local(2026, 9, 10, 12, 0), hours()) is None


def test_friday_evening_opens_monday_morning() -> None:
    opening = next_opening(local(2026, 9, 11, 18, 0), hours())
    assert opening == local(2026, 9, 14, 8, 0)
    assert opening is not None
    assert opening.tzinfo == BUCHAREST


def test_early_morning_opens_the_same_day() -> None:
    assert next_opening(local(2026, 9, 10, 6, 30), hours()) == local(2026, 9, 10, 8, 0)


def test_weekend_opens_monday() -> None:
    assert next_opening(local(2026, 9, 12, 11, 0), hours()) == local(2026, 9, 14, 8, 0)


def test_romanian_st_andrew_and_national_day_are_skipped() -> None:
    # Friday 27 Nov 2026 evening; Mon 30 Nov (St Andrew) and Tue 1 Dec (Ziua Națională) are off.
    assert next_opening(local(2026, 11, 27, 18, 0), hours()) == local(2026, 12, 2, 8, 0)


def test_serbian_statehood_day_and_its_observed_day_are_skipped() -> None:
    rs = hours(holidays_country="RS", timezone="Europe/Belgrade")
    # Sretenje: 15-16 Feb 2026, the Sunday observed on Tue 17 Feb.
    friday = local(2026, 2, 13, 18, 0, zone=BELGRADE)
    assert next_opening(friday, rs) == local(2026, 2, 18, 8, 0, zone=BELGRADE)
    # The same days are ordinary working days in Romania.
    assert next_opening(local(2026, 2, 13, 18, 0), hours()) == local(2026, 2, 16, 8, 0)


def test_serbian_orthodox_christmas_is_skipped() -> None:
    rs = hours(holidays_country="rs", timezone="Europe/Belgrade")
    tuesday_evening = local(2026, 1, 6, 18, 0, zone=BELGRADE)
    assert next_opening(tuesday_evening, rs) == local(2026, 1, 8, 8, 0, zone=BELGRADE)


def test_closed_dates_are_skipped() -> None:
    settings = hours(closed_dates=[date(2026, 9, 11)])
    assert not is_open(local(2026, 9, 11, 10, 0), settings)
    assert next_opening(local(2026, 9, 10, 18, 0), settings) == local(2026, 9, 14, 8, 0)


def test_no_holidays_when_country_is_empty() -> None:
    assert is_open(local(2026, 12, 1, 10, 0), hours(holidays_country=""))


def test_unknown_country_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="holidays_country"):
        is_open(local(2026, 9, 11, 10, 0), hours(holidays_country="XX"))


def test_spring_dst_change_over_the_weekend() -> None:
    # Bucharest moves to UTC+3 on Sunday 29 March 2026.
    friday = local(2026, 3, 27, 18, 0)
    opening = next_opening(friday, hours())
    assert opening == local(2026, 3, 30, 8, 0)
    assert opening is not None
    assert opening.utcoffset() == timedelta(hours=3)
    assert friday.utcoffset() == timedelta(hours=2)
    assert opening.astimezone(UTC) == datetime(2026, 3, 30, 5, 0, tzinfo=UTC)


def test_autumn_dst_change_over_the_weekend() -> None:
    opening = next_opening(local(2026, 10, 23, 18, 0), hours())
    assert opening is not None
    assert opening.astimezone(UTC) == datetime(2026, 10, 26, 6, 0, tzinfo=UTC)


def test_moments_in_other_zones_are_judged_on_the_local_clock() -> None:
    # 05:00 UTC on Monday 30 March 2026 is 08:00 in Bucharest (summer time).
    assert is_open(datetime(2026, 3, 30, 5, 0, tzinfo=UTC), hours())
    assert not is_open(datetime(2026, 3, 30, 4, 59, tzinfo=UTC), hours())
    new_york = datetime(2026, 9, 11, 10, 0, tzinfo=ZoneInfo("America/New_York"))  # 17:00 here
    assert next_opening(new_york, hours()) == local(2026, 9, 14, 8, 0)


def test_an_opening_inside_a_dst_gap_moves_forward() -> None:
    # 03:30 does not exist in Bucharest on Sunday 29 March 2026 (03:00 -> 04:00).
    settings = hours(working_days=["sun"], open=time(3, 30), close=time(12, 0))
    opening = next_opening(local(2026, 3, 28, 12, 0), settings)
    assert opening is not None
    assert opening.astimezone(UTC) == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    assert opening.hour == 4


def test_with_a_frozen_clock() -> None:
    with time_machine.travel(datetime(2026, 12, 24, 17, 30, tzinfo=BUCHAREST), tick=False):
        now = datetime.now(UTC)
        # Christmas 25-26 Dec, then the weekend: Monday 28 Dec.
        assert next_opening(now, hours()) == local(2026, 12, 28, 8, 0)


def test_naive_moments_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        is_open(datetime(2026, 9, 11, 10, 0), hours())
    with pytest.raises(ValueError, match="aware"):
        next_opening(datetime(2026, 9, 11, 10, 0), hours())


def test_hours_that_never_open_are_refused_by_the_settings() -> None:
    with pytest.raises(ValueError, match="at least one working day"):
        hours(working_days=[])
    with pytest.raises(ValueError, match="must be before close"):
        hours(open=time(17, 0), close=time(8, 0))


def test_holidays_are_kept_per_country_and_year() -> None:
    first = public_holidays("RO", 2026)
    assert date(2026, 12, 1) in first
    assert public_holidays("RO", 2026) is first
    assert date(2027, 1, 1) in public_holidays("RO", 2027)
    assert date(2026, 12, 1) not in public_holidays("RS", 2026)


# What the daemon does before it loads its settings; then asks as a render would.
DAEMON_PROBE = """
import json, sys
from mailbridge.adapters.holiday_table import compute_in_child_process
compute_in_child_process()
from mailbridge.pipeline.hours import public_holidays
from mailbridge.settings import HoursSettings
HoursSettings(holidays_country="rs")
days = {code: sorted(d.isoformat() for d in public_holidays(code, 2027)) for code in ("RS", "RO")}
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "holidays")
print(json.dumps({"days": days, "loaded": loaded}))
"""


def probe(env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", DAEMON_PROBE], capture_output=True, text=True, env=env, check=True
    )
    return dict(json.loads(done.stdout.splitlines()[-1]))


def test_the_daemon_never_holds_the_holidays_package_and_gets_the_same_days() -> None:
    # `holidays` imports all its countries to give one (13 MB for the daemon's whole life):
    # the daemon's dates come from a child interpreter, a short command's from the package.
    answer = probe()
    assert answer["loaded"] == []
    for code in ("RS", "RO"):
        assert answer["days"][code] == sorted(d.isoformat() for d in public_holidays(code, 2027))
    assert "2027-01-07" in answer["days"]["RS"]


def test_a_broken_holidays_package_costs_the_holidays_not_the_mail(tmp_path: Path) -> None:
    (tmp_path / "holidays.py").write_text("raise ImportError('holidays is broken here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    config = tmp_path / "m.toml"
    config.write_text('[hours]\nholidays_country = "RS"\n')
    checked = subprocess.run(
        [sys.executable, "-m", "mailbridge", "-c", str(config), "config", "check"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert checked.returncode == 2
    [line] = checked.stderr.strip().splitlines()
    assert "hours.holidays_country" in line
    assert "holidays is broken here" in line

    # Once the settings are loaded, a failing child means no holidays for a while, not an
    # exception in the acknowledgement's way.
    after_settings = DAEMON_PROBE.replace('HoursSettings(holidays_country="rs")', "")
    done = subprocess.run(
        [sys.executable, "-c", after_settings], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["days"] == {"RS": [], "RO": []}
    assert "holidays_unavailable" in done.stdout + done.stderr
