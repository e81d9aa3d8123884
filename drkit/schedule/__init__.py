"""Scheduling: the ``schedule:`` config, the ``drkit schedule run`` daemon, and the
systemd/cron files of ``drkit schedule install``.

- :mod:`drkit.schedule.config`  the section's models, its check, and the jobs it makes;
- :mod:`drkit.schedule.timing`  :func:`next_run`, when a job next falls due (pure);
- :mod:`drkit.schedule.daemon`  the foreground daemon (queue, jitter, signals, children);
- :mod:`drkit.schedule.install` systemd timers and the cron file.

Durations, fractions and retention windows are parsed by :mod:`drkit.units`, the
grammar the commands the jobs run use too.

**No third-party scheduler.** The daemon used the ``schedule`` package until its
computation of due times became :func:`next_run`. That package reads the time through
its module-level ``datetime``, so a daemon with an injectable clock had to swap that
global under a lock for every call; what drkit used of it (weekly at a time, every N
days at a time, every N seconds) is the thirty lines of :func:`next_run`, which a test
can call directly with any ``now``. The dependency is dropped: one less package on
a backup host, no global monkeypatch, and the due-time rules are drkit's own,
documented and tested in one place.
"""

from __future__ import annotations

from drkit.schedule.config import (
    COVERS,
    DEFAULT_TIMEOUTS,
    DEFAULT_TIMING,
    JOB_ORDER,
    KEEP_KEYS,
    WEEKDAYS,
    Job,
    JobSchedule,
    PruneSchedule,
    ScheduleConfig,
    VerifySchedule,
    build_jobs,
    parse_schedule_config,
)
from drkit.schedule.daemon import (
    EXIT_MEANINGS,
    ChildLauncher,
    Clock,
    Daemon,
    JobRun,
    Launcher,
    SystemClock,
    drkit_argv,
)
from drkit.schedule.install import (
    DEFAULT_ENV_FILE,
    cron_expr,
    cron_file,
    find_drkit_executable,
    on_calendar,
    systemd_units,
    unit_name,
)
from drkit.schedule.timing import next_run

__all__ = [
    "COVERS", "DEFAULT_ENV_FILE", "DEFAULT_TIMEOUTS", "DEFAULT_TIMING", "EXIT_MEANINGS", "JOB_ORDER", "KEEP_KEYS", "WEEKDAYS",
    "ChildLauncher", "Clock", "Daemon", "Job", "JobRun", "JobSchedule", "Launcher", "PruneSchedule",
    "ScheduleConfig", "SystemClock", "VerifySchedule", "build_jobs", "cron_expr", "cron_file", "drkit_argv",
    "find_drkit_executable", "next_run", "on_calendar", "parse_schedule_config", "systemd_units", "unit_name",
]
