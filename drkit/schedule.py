"""Scheduling: the ``drkit schedule run`` daemon and the systemd/cron files of ``install``.

The jobs (``schedule:`` section of the config; every key optional)::

    schedule:
      jitter: 10m                # random delay added to every start
      stop_timeout: 5m           # after SIGTERM: how long the current job may take to stop
      backup:      {every: 1d, at: "02:00"}
      prune:       {weekday: saturday, at: "04:00", keep: {daily: 7, weekly: 4, monthly: 12}}
      verify:      {every: 1d, at: "05:00", subset: "10%"}    # sampled read
      verify_full: {weekday: sunday, at: "06:00"}             # full read
      drill:       {weekday: sunday, at: "08:00", args: []}

``every`` is a duration (``90s``, ``15m``, ``6h``, ``1d``, ``1w`` or seconds); ``at`` pins
daily (or N-daily) jobs to a local time; ``weekday`` makes a job weekly. Each job also
takes ``enabled`` and ``timeout``.

The daemon (:class:`Daemon`):

- runs each job as a child process ``python -m drkit -c CONFIG ... <command>``, so a
  job's memory and state die with it and SIGTERM can be forwarded to it;
- never runs two jobs at once: due jobs wait in a queue and start one after the other,
  first come first served, and jobs that fall due together in the fixed order backup,
  prune, verify_full, verify, drill; a job that is still
  queued or running when it is due again is not queued twice (missed runs collapse);
  a queued full verify makes the sampled one redundant;
- delays every start by a random ``0..jitter``;
- on SIGTERM/SIGINT forwards SIGTERM to the running job's process group, waits up to
  ``stop_timeout`` for it to finish or abandon safely (drkit commands exit 130 on
  SIGTERM and release their repository locks; a crash-safe repository stays
  consistent even then), SIGKILLs it after that, and exits; a second signal kills at once;
- logs one line when a job starts and one when it ends (status, exit code, duration).

The clock is injectable (:class:`Clock`): tests drive the daemon with a fake clock,
and the ``schedule`` package reads the same clock while the daemon works (its module
level ``datetime`` is swapped for the duration of each call, see :func:`_clocked`).

Child processes are started here rather than through :mod:`drkit.proc`: a job runs
for hours, must receive forwarded signals and is waited on in slices, which
``proc.run`` (run to completion with a timeout) does not offer. No secret is ever in
a child's argv: passphrases reach it through the inherited environment or files.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

import schedule as _schedule
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from drkit.errors import ConfigError, UsageError

log = logging.getLogger(__name__)

# --- durations ---------------------------------------------------------------------

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: Any) -> float:
    """Seconds for ``90``, ``"90s"``, ``"15m"``, ``"1h30m"``, ``"2d"``, ``"1w"``.

    Raises ValueError with the accepted forms for anything else (negative included).
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 15m, 6h, 1d, 1w")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text.isdigit():
            return float(text)
        pos, total = 0, 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
        if text and pos == len(text):
            return total
    raise ValueError(f"invalid duration {value!r}: expected e.g. 30s, 15m, 6h, 1d, 1w or 1h30m")


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A pydantic field type: a duration in seconds, parsed by :func:`parse_duration`."""


def format_duration(seconds: float) -> str:
    """``3600 -> '1h'``, ``5400 -> '1h30m'``, ``0.5 -> '0.5s'``."""
    if seconds < 60 and not float(seconds).is_integer():
        return f"{seconds:.1f}s"
    rest = int(round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0s"


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
                parse_duration(value)
            elif not isinstance(value, int) or value < 1:
                raise ValueError(f"keep.{key} must be a positive whole number")
        return v


class VerifySchedule(JobSchedule):
    subset: str = "10%"

    @field_validator("subset")
    @classmethod
    def _subset(cls, v: str) -> str:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)%", str(v).strip())
        if not m or not 0 < float(m.group(1)) <= 100:
            raise ValueError("must be a percentage like '10%'")
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
        jobs.append(Job(name=name, args=(*args, *when.args), when=when, timeout=timeout))
    return jobs, notes


# --- the clock ---------------------------------------------------------------------


class Clock(Protocol):
    """What the daemon needs of time. ``now()`` is local, naive (what ``schedule`` uses)."""

    def now(self) -> _dt.datetime: ...

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        """Sleep up to *seconds*; return early once *stop* is set."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> _dt.datetime:
        return _dt.datetime.now()

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        deadline = time.monotonic() + max(0.0, seconds)
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            stop.wait(min(left, 1.0))


class _ClockedDatetime(_dt.datetime):
    """``datetime.datetime`` whose ``now()`` reads the daemon's clock (see :func:`_clocked`)."""

    clock: Clock | None = None

    @classmethod
    def now(cls, tz: _dt.tzinfo | None = None) -> _dt.datetime:  # type: ignore[override]
        clock = _ClockedDatetime.clock
        if clock is None:
            return _dt.datetime.now(tz)
        value = clock.now()
        return value if tz is None else value.astimezone(tz)


_shim = types.ModuleType("datetime")
_shim.__dict__.update({k: v for k, v in _dt.__dict__.items() if not k.startswith("__")})
_shim.datetime = _ClockedDatetime  # type: ignore[attr-defined]
_clock_lock = threading.RLock()


@contextlib.contextmanager
def _clocked(clock: Clock) -> Iterator[None]:
    """Make the ``schedule`` package read *clock* for the duration of the block.

    ``schedule`` calls ``datetime.datetime.now()`` through its module global; this
    swaps that global for a shim and restores it afterwards (re-entrant, thread-safe).
    """
    with _clock_lock:
        saved_module, saved_clock = _schedule.datetime, _ClockedDatetime.clock
        _schedule.datetime = _shim
        _ClockedDatetime.clock = clock
        try:
            yield
        finally:
            _schedule.datetime = saved_module
            _ClockedDatetime.clock = saved_clock


# --- running one job ---------------------------------------------------------------

EXIT_MEANINGS = {
    0: "ok", 1: "internal error", 2: "usage or config error", 3: "no repository",
    4: "repository locked", 5: "wrong passphrase or key", 6: "damage found",
    7: "partial failure", 8: "storage unreachable or failing", 9: "refused",
    10: "already exists", 130: "interrupted",
}


@dataclass
class JobRun:
    """The outcome of one job run."""

    job: str
    started: _dt.datetime
    returncode: int
    duration: float
    stopped: bool = False
    """True when the daemon was asked to stop while this job ran."""
    killed: bool = False
    """True when it did not stop within the deadline and was killed."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Launcher(Protocol):
    """Runs one job to completion. *stopping* tells when the daemon is asked to stop."""

    def __call__(self, job: Job, stopping: threading.Event, kill_now: threading.Event) -> tuple[int, bool]:
        """Return (exit status, killed)."""
        ...


@dataclass
class ChildLauncher:
    """Runs a job as ``argv_prefix + job.args`` in its own process group.

    Promises: the child gets SIGTERM (to its whole group) when the daemon is asked to
    stop or the job's timeout passes, and SIGKILL *stop_timeout* seconds later if it
    is still running (at once when *kill_now* is set). Always waits for the child.
    """

    argv_prefix: Sequence[str]
    stop_timeout: float = 300.0
    poll: float = 0.1
    env: Mapping[str, str] | None = None

    def command(self, job: Job) -> list[str]:
        return [*self.argv_prefix, *job.args]

    def __call__(self, job: Job, stopping: threading.Event, kill_now: threading.Event) -> tuple[int, bool]:
        argv = self.command(job)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True,
                                    env=dict(self.env) if self.env is not None else None)
        except OSError as exc:
            log.error("job %s could not start %s: %s", job.name, argv[0], exc.strerror or exc)
            return 127, False
        started = time.monotonic()
        term_sent: float | None = None
        killed = False
        while True:
            try:
                return proc.wait(timeout=self.poll), killed
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if term_sent is None:
                reason = None
                if stopping.is_set():
                    reason = "stop requested"
                elif now - started > job.timeout:
                    reason = f"timeout of {format_duration(job.timeout)} passed"
                if reason:
                    log.warning("job %s: %s: sending SIGTERM to pid %d, waiting up to %s",
                                job.name, reason, proc.pid, format_duration(self.stop_timeout))
                    _signal_group(proc, signal.SIGTERM)
                    term_sent = now
            elif (now - term_sent > self.stop_timeout or kill_now.is_set()) and not killed:
                log.error("job %s: still running %s after SIGTERM: killing it (pid %d)",
                          job.name, format_duration(now - term_sent), proc.pid)
                _signal_group(proc, signal.SIGKILL)
                killed = True


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # not our group after all: signal the child alone
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def drkit_argv(config_path: Path | None, *, log_format: str = "text", debug: bool = False,
               python: str = sys.executable) -> list[str]:
    """``python -m drkit -c CONFIG -q --log-format FMT [--debug]``: the prefix of every job."""
    argv = [python, "-m", "drkit"]
    if config_path is not None:
        argv += ["-c", str(config_path)]
    argv += ["-q", "--log-format", log_format]
    if debug:
        argv.append("--debug")
    return argv


# --- the daemon --------------------------------------------------------------------


@dataclass
class _Queued:
    job: Job
    queued_at: _dt.datetime
    not_before: _dt.datetime


@dataclass
class Daemon:
    """The foreground scheduler (see the module doc for its promises)."""

    jobs: Sequence[Job]
    launcher: Launcher
    clock: Clock = field(default_factory=SystemClock)
    jitter: float = 600.0
    rng: random.Random = field(default_factory=random.Random)
    on_finish: Callable[[JobRun], None] | None = None
    max_idle: float = 60.0
    """Longest single sleep; the loop re-checks the schedule at least this often."""

    def __post_init__(self) -> None:
        self.stop_event = threading.Event()
        self.kill_event = threading.Event()
        self.queue: list[_Queued] = []
        self.running: Job | None = None
        self.history: list[JobRun] = []
        self.scheduler = _schedule.Scheduler()
        with _clocked(self.clock):
            for job in self.jobs:
                self._register(job)

    def _register(self, job: Job) -> None:
        w = job.when
        if w.weekday:
            entry = getattr(self.scheduler.every(), w.weekday).at(w.at)
        elif w.at:
            assert w.every is not None
            entry = self.scheduler.every(int(w.every // 86400)).days.at(w.at)
        else:
            assert w.every is not None
            entry = self.scheduler.every(int(w.every)).seconds
        entry.do(self._due, job)

    # -- queue --

    def _due(self, job: Job, *, jitter: bool = True) -> None:
        """Called by ``schedule`` when *job* is due: queue it (once) with its jitter."""
        if self.running is not None and self.running.name == job.name or any(q.job.name == job.name for q in self.queue):
            log.info("job %s is due but still %s: not queued twice", job.name,
                     "running" if self.running and self.running.name == job.name else "queued")
            return
        for q in self.queue:
            if job.name in COVERS.get(q.job.name, ()):
                log.info("job %s is due but %s is queued and covers it: skipped", job.name, q.job.name)
                return
        covered = COVERS.get(job.name, ())
        dropped = [q for q in self.queue if q.job.name in covered]
        for q in dropped:
            log.info("job %s dropped from the queue: %s covers it", q.job.name, job.name)
            self.queue.remove(q)
        delay = self.rng.uniform(0, self.jitter) if jitter and self.jitter > 0 else 0.0
        now = self.clock.now()
        not_before = now + _dt.timedelta(seconds=delay)
        self.queue.append(_Queued(job, now, not_before))
        log.debug("job %s queued, starts at %s", job.name, not_before.isoformat(timespec="seconds"))

    def trigger(self, name: str) -> None:
        """Queue job *name* to start now, without jitter (once, like a due job).

        Raises UsageError naming the jobs when there is no such job."""
        for job in self.jobs:
            if job.name == name:
                self._due(job, jitter=False)
                return
        raise UsageError(f"no scheduled job named {name!r}", hint="jobs: " + ", ".join(j.name for j in self.jobs))

    def _head(self) -> _Queued | None:
        """First come, first served (no job starves); jobs due together go in JOB_ORDER."""
        return min(self.queue, key=lambda q: (q.queued_at, q.job.priority)) if self.queue else None

    # -- control --

    def request_stop(self, *, force: bool = False) -> None:
        """Ask the daemon to stop (safe from a signal handler); *force* kills the running job."""
        if self.stop_event.is_set() and not force:
            force = True
        self.stop_event.set()
        if force and self.running is not None:
            self.kill_event.set()

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """Install SIGTERM/SIGINT handlers that stop the daemon (main thread only)."""
        def handler(signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            if self.stop_event.is_set():
                log.warning("%s again: killing the running job", name)
                self.request_stop(force=True)
            else:
                current = f" after job {self.running.name} stops" if self.running else ""
                log.warning("%s received: stopping%s", name, current)
                self.request_stop()

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def next_runs(self) -> list[tuple[Job, _dt.datetime]]:
        """Each job with the time ``schedule`` will next make it due."""
        out: list[tuple[Job, _dt.datetime]] = []
        for entry in self.scheduler.jobs:
            assert entry.job_func is not None and entry.next_run is not None
            out.append((entry.job_func.args[0], entry.next_run))
        return sorted(out, key=lambda p: (p[1], p[0].priority))

    # -- the loop --

    def run(self, *, until: _dt.datetime | None = None) -> int:
        """Run until a stop is requested (or the clock passes *until*). Returns 0."""
        for job, when in self.next_runs():
            log.info("scheduled %s: %s (%s), next %s", job.name, " ".join(job.args), job.describe(),
                     when.isoformat(sep=" ", timespec="minutes"))
        while not self.stop_event.is_set():
            now = self.clock.now()
            if until is not None and now >= until:
                break
            with _clocked(self.clock):
                self.scheduler.run_pending()
            head = self._head()
            if head is not None and head.not_before <= self.clock.now():
                self.queue.remove(head)
                self._execute(head.job)
                continue
            with _clocked(self.clock):
                idle = self.scheduler.idle_seconds
            waits = [self.max_idle]
            if idle is not None:
                waits.append(idle)
            if head is not None:
                waits.append((head.not_before - now).total_seconds())
            if until is not None:
                waits.append((until - now).total_seconds())
            self.clock.sleep(max(0.0, min(waits)), self.stop_event)
        if self.queue:
            log.info("stopped; not started: %s", ", ".join(q.job.name for q in self.queue))
        else:
            log.info("stopped")
        return 0

    def _execute(self, job: Job) -> None:
        started = self.clock.now()
        t0 = time.monotonic()
        self.running = job
        log.info("job %s started: drkit %s", job.name, shlex.join(job.args), extra={"job": job.name, "event": "start"})
        try:
            code, killed = self.launcher(job, self.stop_event, self.kill_event)
        finally:
            self.running = None
        wall = time.monotonic() - t0
        fake = (self.clock.now() - started).total_seconds()
        duration = max(wall, fake)
        result = JobRun(job.name, started, code, duration, stopped=self.stop_event.is_set(), killed=killed)
        self.history.append(result)
        # structured fields for --log-format json (Loki): {job, event, exit_code, duration_seconds}
        fields = {"job": job.name, "event": "finish", "exit_code": code, "duration_seconds": round(duration, 3)}
        meaning = EXIT_MEANINGS.get(code, "signal " + signal.Signals(-code).name if code < 0 and -code in signal.valid_signals() else "failed")
        if code == 0:
            log.info("job %s finished: ok in %s", job.name, format_duration(duration), extra=fields)
        elif result.stopped:
            log.warning("job %s %s on stop after %s (exit %d: %s)", job.name,
                        "killed" if killed else "stopped", format_duration(duration), code, meaning, extra=fields)
        else:
            log.error("job %s failed after %s: exit %d (%s)", job.name, format_duration(duration), code, meaning,
                      extra=fields)
        if self.on_finish is not None:
            self.on_finish(result)


# --- systemd and cron files --------------------------------------------------------

def unit_name(job: Job) -> str:
    return "drkit-" + job.name.replace("_", "-")


def _systemd_quote(arg: str) -> str:
    """One ExecStart word: ``%`` and ``$`` escaped, quoted when it has spaces or quotes."""
    arg = arg.replace("\\", "\\\\").replace("%", "%%").replace("$", "$$")
    if re.search(r"[\s\"';]", arg) or not arg:
        arg = '"' + arg.replace('"', '\\"') + '"'
    return arg


def on_calendar(when: JobSchedule) -> list[str]:
    """systemd timer lines for *when*: ``OnCalendar=`` if it is calendar-shaped, else
    ``OnBootSec=`` + ``OnUnitActiveSec=``."""
    if when.weekday:
        assert when.at is not None
        return [f"OnCalendar={when.weekday[:3].capitalize()} *-*-* {when.at}:00"]
    assert when.every is not None
    every = int(when.every)
    if when.at:
        days = every // 86400
        return [f"OnCalendar=*-*-* {when.at}:00" if days == 1 else f"OnCalendar=*-*-01/{days} {when.at}:00"]
    if every % 86400 == 0:
        days = every // 86400
        return ["OnCalendar=*-*-* 00:00:00" if days == 1 else f"OnCalendar=*-*-01/{days} 00:00:00"]
    if every % 3600 == 0 and 86400 % every == 0:
        return [f"OnCalendar=*-*-* 00/{every // 3600}:00:00"]
    if every % 60 == 0 and 3600 % every == 0:
        return [f"OnCalendar=*-*-* *:00/{every // 60}:00"]
    return [f"OnBootSec={format_duration(min(every, 900))}", f"OnUnitActiveSec={format_duration(every)}"]


def _exec_words(job: Job, drkit_exe: str, config_path: Path, flock: str, lock_file: Path) -> list[str]:
    return [flock, "--wait", str(int(job.timeout)), str(lock_file), drkit_exe, "-c", str(config_path), "-q", *job.args]


DEFAULT_ENV_FILE = Path("/etc/drkit/drkit.env")


def _env_file_comment(passphrase_in_config: bool) -> str:
    """What the units say about their EnvironmentFile: the passphrase lives in ONE place."""
    if passphrase_in_config:
        return ("# optional (chmod 600): AWS_SHARED_CREDENTIALS_FILE=... -- NOT DRKIT_PASSWORD*: the config's "
                "repository.password_file/password_command already gives the passphrase (two places fail every run)")
    return "# the passphrase (chmod 600): DRKIT_PASSWORD_FILE=/etc/drkit/passphrase; optional: AWS_SHARED_CREDENTIALS_FILE=..."


def systemd_units(jobs: Sequence[Job], *, drkit_exe: str, config_path: Path, jitter: float,
                  stop_timeout: float, lock_file: Path = Path("/run/lock/drkit.lock"),
                  flock: str = "/usr/bin/flock", env_file: Path = DEFAULT_ENV_FILE,
                  passphrase_in_config: bool = False) -> dict[str, str]:
    """File name -> text of a oneshot service and a timer per job.

    Timers are ``Persistent`` (a run missed while the node was off happens at boot)
    and spread by ``RandomizedDelaySec`` (the jitter). Jobs share an ``flock`` so two
    timers firing together run one after the other. The services read *env_file*
    (optional); its comment names the passphrase variable only when the config does
    not already say where the passphrase is (*passphrase_in_config*).
    """
    files: dict[str, str] = {}
    for job in jobs:
        name = unit_name(job)
        exec_start = " ".join(_systemd_quote(w) for w in _exec_words(job, drkit_exe, config_path, flock, lock_file))
        files[f"{name}.service"] = "\n".join([
            "# Generated by 'drkit schedule install --systemd'; regenerate rather than edit.",
            "[Unit]",
            f"Description=drkit {job.name.replace('_', ' ')}: drkit {' '.join(job.args)}",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=oneshot",
            _env_file_comment(passphrase_in_config),
            f"EnvironmentFile=-{env_file}",
            f"ExecStart={exec_start}",
            # time to wait for the lock plus the job itself
            f"TimeoutStartSec={int(job.timeout) * 2}",
            "KillMode=mixed",
            f"TimeoutStopSec={int(stop_timeout)}",
            "Nice=10",
            "IOSchedulingClass=best-effort",
            "IOSchedulingPriority=7",
            "UMask=0077",
            "PrivateTmp=true",
            "NoNewPrivileges=true",
            "",
        ])
        files[f"{name}.timer"] = "\n".join([
            "# Generated by 'drkit schedule install --systemd'; regenerate rather than edit.",
            "[Unit]",
            f"Description=drkit {job.name.replace('_', ' ')} ({job.describe()})",
            "",
            "[Timer]",
            *on_calendar(job.when),
            f"RandomizedDelaySec={int(jitter)}",
            "Persistent=true",
            "AccuracySec=1min",
            f"Unit={name}.service",
            "",
            "[Install]",
            "WantedBy=timers.target",
            "",
        ])
    return files


def cron_expr(when: JobSchedule) -> str:
    """The five cron time fields for *when*; UsageError when cron cannot express it."""
    if when.weekday:
        assert when.at is not None
        hh, mm = when.at.split(":")
        return f"{int(mm)} {int(hh)} * * {(WEEKDAYS.index(when.weekday) + 1) % 7}"
    assert when.every is not None
    every = int(when.every)
    if when.at:
        hh, mm = when.at.split(":")
        days = every // 86400
        return f"{int(mm)} {int(hh)} {'*' if days == 1 else f'*/{days}'} * *"
    if every % 86400 == 0:
        days = every // 86400
        return f"0 0 {'*' if days == 1 else f'*/{days}'} * *"
    if every % 3600 == 0 and 86400 % every == 0:
        hours = every // 3600
        return f"0 {'*' if hours == 1 else f'*/{hours}'} * * *"
    if every % 60 == 0 and 3600 % every == 0:
        minutes = every // 60
        return f"{'*' if minutes == 1 else f'*/{minutes}'} * * * *"
    raise UsageError(
        f"cron cannot run a job every {format_duration(every)}",
        hint="use an interval that divides an hour or a day (15m, 2h, 6h, 1d), a fixed 'at', or --systemd",
    )


def cron_file(jobs: Sequence[Job], *, drkit_exe: str, config_path: Path, jitter: float,
              user: str = "root", lock_file: Path = Path("/run/lock/drkit.lock"),
              flock: str = "/usr/bin/flock") -> str:
    """An ``/etc/cron.d`` file: one line per job, ``%`` escaped, jitter by ``sleep``."""
    lines = [
        "# drkit scheduled jobs. Generated by 'drkit schedule install --cron'; regenerate rather than edit.",
        "SHELL=/bin/sh",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "",
    ]
    for job in jobs:
        words = " ".join(shlex.quote(w) for w in _exec_words(job, drkit_exe, config_path, flock, lock_file))
        delay = f"sleep $(shuf -i 0-{int(jitter)} -n 1) && " if jitter >= 1 else ""
        command = (delay + words).replace("%", "\\%")  # cron turns a bare % into a newline
        lines.append(f"# {job.name}: {job.describe()}")
        lines.append(f"{cron_expr(job.when)} {user} {command}")
    return "\n".join(lines) + "\n"


def find_drkit_executable() -> str:
    """The absolute path of the ``drkit`` console script of this interpreter.

    Prefers the script next to ``sys.executable`` (the venv's), then ``PATH``.
    Raises UsageError when there is none.
    """
    import shutil

    candidates = [Path(sys.executable).parent / "drkit"]
    found = shutil.which("drkit")
    if found:
        candidates.append(Path(found))
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand.absolute())
    raise UsageError("cannot find the drkit executable", hint="pass --drkit PATH (absolute path of the drkit script)")


__all__ = [
    "ChildLauncher", "Clock", "Daemon", "Duration", "Job", "JobRun", "JobSchedule", "ScheduleConfig",
    "SystemClock", "build_jobs", "cron_file", "drkit_argv", "find_drkit_executable", "format_duration",
    "parse_duration", "parse_schedule_config", "systemd_units",
]
