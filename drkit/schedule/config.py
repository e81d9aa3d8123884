"""The ``schedule:`` section of the config, and the jobs it makes.

The section (every key optional)::

    schedule:
      jitter: 10m                # random delay added to every start
      stop_timeout: 5m           # after SIGTERM: how long the current job may take to stop
      retry_lock: 30m            # how long a job waits for a lock another command holds
      backup:      {every: 1d, at: "02:00"}
      prune:       {weekday: saturday, at: "04:00", keep: {daily: 7, weekly: 4, monthly: 12}}
      verify:      {every: 1d, at: "05:00", subset: "10%"}    # sampled read
      verify_full: {weekday: sunday, at: "06:00"}             # full read
      drill:       {weekday: sunday, at: "08:00", args: []}

``every`` is a duration (``90s``, ``15m``, ``6h``, ``1d``, ``1w`` or seconds; the grammar
of :mod:`drkit.units`); ``at`` pins daily (or N-daily) jobs to a local time; ``weekday``
makes a job weekly. Each job also takes ``enabled`` and ``timeout``.

Values the check accepts are the values the jobs apply: ``prune.keep.within`` is
checked by :func:`drkit.units.parse_keep_within`, the function ``drkit forget
--keep-within`` parses it with, and ``verify.subset`` by
:func:`drkit.units.parse_fraction`, as ``drkit verify --read-data-subset`` does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drkit.errors import ConfigError
from drkit.units import Duration, format_duration, parse_fraction, parse_keep_within

# --- configuration -----------------------------------------------------------------

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_AT_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
KEEP_KEYS = ("last", "hourly", "daily", "weekly", "monthly", "yearly", "within")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobSchedule(_Strict):
    """When one job runs (see the module doc)."""

    enabled: bool = True
    every: Duration | None = None
    at: str | None = None
    weekday: str | None = None
    timeout: Duration | None = None
    args: list[str] = Field(default_factory=list)
    """Extra arguments appended to the command (e.g. ``["--source", "etcd"]`` for drill)."""

    @field_validator("at")
    @classmethod
    def _at(cls, v: str | None) -> str | None:
        if v is not None and not _AT_RE.match(v):
            raise ValueError("must be a 24-hour local time HH:MM, e.g. '02:30'")
        return v

    @field_validator("weekday")
    @classmethod
    def _weekday(cls, v: str | None) -> str | None:
        if v is None:
            return None
        day = v.strip().lower()
        matches = [d for d in WEEKDAYS if d.startswith(day[:3])] if len(day) >= 3 else []
        if len(matches) != 1 or not matches[0].startswith(day):
            raise ValueError(f"must be a weekday ({', '.join(WEEKDAYS)})")
        return matches[0]

    @model_validator(mode="after")
    def _combination(self) -> JobSchedule:
        if self.weekday is not None:
            if self.every is not None and self.every != 7 * 86400:
                raise ValueError("'weekday' makes a job weekly: leave out 'every' (or set it to 1w)")
            if self.at is None:
                self.at = "03:00"
        elif self.every is None:
            raise ValueError("set 'every' (e.g. 1d) or 'weekday'")
        else:
            if self.every < 60:
                raise ValueError("'every' must be at least 1m")
            if self.at is not None and self.every % 86400:
                raise ValueError("'at' needs 'every' in whole days (1d, 2d, 1w)")
        return self


class PruneSchedule(JobSchedule):
    keep: dict[str, int | str] = Field(default_factory=lambda: dict[str, int | str](daily=7, weekly=4, monthly=12))
    """Retention policy passed to ``drkit forget --prune`` as ``--keep-KEY VALUE``."""

    @field_validator("keep")
    @classmethod
    def _keep(cls, v: dict[str, int | str]) -> dict[str, int | str]:
        if not v:
            raise ValueError("an empty policy would keep nothing; set at least one of " + ", ".join(KEEP_KEYS))
        for key, value in v.items():
            if key not in KEEP_KEYS:
                raise ValueError(f"unknown key {key!r}; known: {', '.join(KEEP_KEYS)}")
            if key == "within":
                parse_keep_within(value)
            elif not isinstance(value, int) or value < 1:
                raise ValueError(f"keep.{key} must be a positive whole number")
        return v


class VerifySchedule(JobSchedule):
    subset: str = "10%"

    @field_validator("subset")
    @classmethod
    def _subset(cls, v: str) -> str:
        parse_fraction(v)
        return str(v).strip()


DEFAULT_TIMING: dict[str, dict[str, str]] = {
    "backup": {"every": "1d", "at": "02:00"},
    "prune": {"weekday": "saturday", "at": "04:00"},
    "verify_full": {"weekday": "sunday", "at": "06:00"},
    "verify": {"every": "1d", "at": "05:00"},
    "drill": {"weekday": "sunday", "at": "08:00"},
}
"""When each job runs unless the config says otherwise."""

DEFAULT_TIMEOUTS = {"backup": 6 * 3600.0, "prune": 6 * 3600.0, "verify_full": 12 * 3600.0,
                    "verify": 2 * 3600.0, "drill": 4 * 3600.0}
_TIMING_KEYS = ("every", "at", "weekday")


class ScheduleConfig(_Strict):
    """The ``schedule:`` section of the config file.

    A job's section is merged over its defaults: ``backup: {enabled: false}`` or
    ``verify: {subset: 5%}`` keep the default timing; a section that sets any of
    ``every``/``at``/``weekday`` replaces the default timing as a whole.
    """

    jitter: Duration = 600.0
    stop_timeout: Duration = 300.0
    retry_lock: Duration = 1800.0
    """How long a job waits for a repository lock held by a command the schedule does not
    know of (a prune run by hand, another host's backup) before it fails: every job runs
    with ``--retry-lock`` this long (0: fail at once). Without it, a backup that fires
    during a manual prune fails and that day has no backup."""
    lock_file: Path = Path("/run/lock/drkit.lock")
    """The ``flock`` file that keeps systemd/cron jobs from overlapping (install only)."""
    backup: JobSchedule = Field(default_factory=lambda: JobSchedule.model_validate(DEFAULT_TIMING["backup"]))
    prune: PruneSchedule = Field(default_factory=lambda: PruneSchedule.model_validate(DEFAULT_TIMING["prune"]))
    verify_full: JobSchedule = Field(default_factory=lambda: JobSchedule.model_validate(DEFAULT_TIMING["verify_full"]))
    verify: VerifySchedule = Field(default_factory=lambda: VerifySchedule.model_validate(DEFAULT_TIMING["verify"]))
    drill: JobSchedule = Field(default_factory=lambda: JobSchedule.model_validate(DEFAULT_TIMING["drill"]))

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, timing in DEFAULT_TIMING.items():
            section = out.get(name)
            if isinstance(section, dict) and not any(k in section for k in _TIMING_KEYS):
                out[name] = {**timing, **section}
        return out


def parse_schedule_config(data: Mapping[str, Any] | None) -> ScheduleConfig:
    """Validate the ``schedule:`` section (None: all defaults). Raises ConfigError naming ``schedule.KEY``."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError("must be a mapping of job names to schedules", key="schedule")
    try:
        return ScheduleConfig.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(
            err["msg"].removeprefix("Value error, "),
            key=f"schedule.{loc}" if loc else "schedule",
            hint="see docs/scheduling.md for the schedule section",
        ) from None


# --- jobs --------------------------------------------------------------------------

JOB_ORDER = ("backup", "prune", "verify_full", "verify", "drill")
"""Run order when several jobs are due: prune after backup so the new snapshots count;
verify after prune so it checks what stays; the drill last, on a verified repository."""

COVERS = {"verify_full": ("verify",)}
"""A queued job makes these redundant (a full read includes the sampled one)."""


@dataclass(frozen=True)
class Job:
    """One scheduled job: its name, the drkit arguments it runs, and when."""

    name: str
    args: tuple[str, ...]
    """drkit arguments after the root options, e.g. ``("verify", "--read-data")``."""
    when: JobSchedule
    timeout: float
    root_args: tuple[str, ...] = ()
    """drkit's own options before the command, e.g. ``("--retry-lock", "30m")``."""

    @property
    def argv(self) -> tuple[str, ...]:
        """What follows ``drkit -c CONFIG``: the root options, then :attr:`args`."""
        return (*self.root_args, *self.args)

    @property
    def priority(self) -> int:
        return JOB_ORDER.index(self.name) if self.name in JOB_ORDER else len(JOB_ORDER)

    def describe(self) -> str:
        """``every day at 02:00``, ``every sunday at 06:00``, ``every 6h``."""
        w = self.when
        if w.weekday:
            return f"every {w.weekday} at {w.at}"
        assert w.every is not None
        if w.at:
            days = int(w.every // 86400)
            return f"every day at {w.at}" if days == 1 else f"every {days} days at {w.at}"
        return f"every {format_duration(w.every)}"


def build_jobs(config: ScheduleConfig, available_commands: set[str] | None = None) -> tuple[list[Job], list[str]]:
    """The enabled jobs, in :data:`JOB_ORDER`, and notes on jobs left out (and why).

    *available_commands*: the drkit commands that exist; a job whose command is missing
    (``drill`` before it is built) is left out with a note instead of failing at 3 a.m.
    """
    jobs: list[Job] = []
    notes: list[str] = []
    root_args = ("--retry-lock", format_duration(config.retry_lock)) if config.retry_lock > 0 else ()
    for name in JOB_ORDER:
        when: JobSchedule = getattr(config, name)
        if not when.enabled:
            notes.append(f"{name}: disabled in the config")
            continue
        if name == "backup":
            args: tuple[str, ...] = ("backup",)
        elif name == "prune":
            keep: list[str] = []
            for key, value in config.prune.keep.items():
                keep += [f"--keep-{key}", str(value)]
            args = ("forget", "--prune", *keep)
        elif name == "verify":
            args = ("verify", "--read-data-subset", config.verify.subset)
        elif name == "verify_full":
            args = ("verify", "--read-data")
        else:
            args = ("drill",)
        command = args[0]
        if available_commands is not None and command not in available_commands:
            notes.append(f"{name}: not scheduled: this drkit has no '{command}' command")
            continue
        timeout = when.timeout if when.timeout is not None else DEFAULT_TIMEOUTS[name]
        jobs.append(Job(name=name, args=(*args, *when.args), when=when, timeout=timeout, root_args=root_args))
    return jobs, notes
