"""When a job next falls due: :func:`next_run`, a pure function of the schedule and now.

Times are local and naive (what :class:`~drkit.schedule.daemon.Clock` gives): wall-clock
``at`` times follow the local clock across DST changes by plain date arithmetic.

The rules (the ones the ``schedule`` package applied, which the daemon used before):

- ``weekday`` (+ ``at``): the next such weekday at ``at``; today if ``at`` is still ahead.
- ``every: 1d`` + ``at``: today at ``at`` if still ahead, else tomorrow.
- ``every: Nd`` + ``at`` (N > 1): N days after today's ``at`` (the cadence counts from the
  day the daemon starts, then from each run).
- ``every`` alone: *now* + ``every`` (whole seconds).

Always strictly after *now*. Called again right after a job fell due, it gives the
following run: runs missed while the daemon was busy collapse into one.
"""

from __future__ import annotations

import datetime as _dt

from drkit.schedule.config import WEEKDAYS, JobSchedule


def _at(moment: _dt.datetime, at: str) -> _dt.datetime:
    hour, minute = (int(x) for x in at.split(":"))
    return moment.replace(hour=hour, minute=minute, second=0, microsecond=0)


def next_run(when: JobSchedule, now: _dt.datetime) -> _dt.datetime:
    """The first time after *now* that *when* makes its job due (see the module doc)."""
    if when.weekday:
        assert when.at is not None  # the config sets a default for weekly jobs
        ahead = (WEEKDAYS.index(when.weekday) - now.weekday()) % 7
        candidate = _at(now + _dt.timedelta(days=ahead), when.at)
        period = _dt.timedelta(days=7)
    elif when.at:
        assert when.every is not None
        period = _dt.timedelta(days=int(when.every // 86400))
        candidate = _at(now, when.at)
        if period != _dt.timedelta(days=1):
            candidate += period
    else:
        assert when.every is not None
        period = _dt.timedelta(seconds=int(when.every))
        candidate = now + period
    while candidate <= now:
        candidate += period
    return candidate
