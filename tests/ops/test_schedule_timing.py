"""next_run: when a job next falls due, as a pure function of its schedule and now;
the daemon and its dependencies (no third-party scheduler, no patched globals)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest

from drkit.schedule import JobSchedule, next_run

T = dt.datetime(2026, 3, 4, 10, 30, 15, 500)  # a Wednesday, 10:30:15


def at(day: int, hh: int, mm: int) -> dt.datetime:
    return dt.datetime(2026, 3, day, hh, mm)


@pytest.mark.parametrize(
    ("spec", "now", "want"),
    [
        ({"every": "1d", "at": "11:00"}, T, at(4, 11, 0)),  # still ahead today
        ({"every": "1d", "at": "10:30"}, T, at(5, 10, 30)),  # passed by seconds: tomorrow
        ({"every": "1d", "at": "02:00"}, at(4, 2, 0), at(5, 2, 0)),  # exactly due: the next one
        ({"every": "2d", "at": "11:00"}, T, at(6, 11, 0)),  # N days after today's time
        ({"every": "2d", "at": "09:00"}, T, at(6, 9, 0)),
        ({"every": "1w", "at": "09:00"}, T, at(11, 9, 0)),
        ({"weekday": "wednesday", "at": "11:00"}, T, at(4, 11, 0)),  # today, still ahead
        ({"weekday": "wednesday", "at": "10:00"}, T, at(11, 10, 0)),  # today, passed: next week
        ({"weekday": "saturday", "at": "04:00"}, T, at(7, 4, 0)),
        ({"weekday": "monday"}, T, at(9, 3, 0)),  # default at 03:00
        ({"every": "6h"}, T, T + dt.timedelta(hours=6)),
        ({"every": "15m"}, T, T + dt.timedelta(minutes=15)),
        ({"every": "90s"}, T, T + dt.timedelta(seconds=90)),
        ({"every": "1d", "at": "00:30"}, dt.datetime(2026, 12, 31, 23, 0), dt.datetime(2027, 1, 1, 0, 30)),
    ],
)
def test_next_run(spec: dict[str, str], now: dt.datetime, want: dt.datetime) -> None:
    got = next_run(JobSchedule.model_validate(spec), now)
    assert got == want
    assert got > now


def test_next_run_walks_a_week_of_daily_runs() -> None:
    when = JobSchedule.model_validate({"every": "1d", "at": "02:00"})
    now, seen = T, []
    for _ in range(7):
        now = next_run(when, now)
        seen.append(now)
    assert seen == [at(d, 2, 0) for d in range(5, 12)]


def test_neither_schedule_nor_metrics_pull_in_a_scheduler_library_or_the_cli() -> None:
    code = ("import sys, drkit.metrics; assert 'drkit.schedule' not in sys.modules, 'metrics imports schedule'; "
            "import drkit.schedule; assert 'schedule' not in sys.modules, 'third-party schedule imported'; "
            "assert 'drkit.cli' not in sys.modules, 'the CLI imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
