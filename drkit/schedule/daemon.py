"""The ``drkit schedule run`` daemon: runs the configured jobs, one at a time.

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

When a job falls due comes from :func:`drkit.schedule.timing.next_run`, a pure
function of the job's schedule and the daemon's injectable :class:`Clock` (tests drive
the daemon with a fake clock; nothing global is patched).

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
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from drkit.errors import UsageError
from drkit.schedule.config import COVERS, Job
from drkit.schedule.timing import next_run
from drkit.units import format_duration

log = logging.getLogger("drkit.schedule")

# --- the clock ---------------------------------------------------------------------


class Clock(Protocol):
    """What the daemon needs of time. ``now()`` is local and naive (see :mod:`~drkit.schedule.timing`)."""

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
    """Runs a job as ``argv_prefix + job.argv`` in its own process group.

    Promises: the child gets SIGTERM (to its whole group) when the daemon is asked to
    stop or the job's timeout passes, and SIGKILL *stop_timeout* seconds later if it
    is still running (at once when *kill_now* is set). Always waits for the child.
    """

    argv_prefix: Sequence[str]
    stop_timeout: float = 300.0
    poll: float = 0.1
    env: Mapping[str, str] | None = None

    def command(self, job: Job) -> list[str]:
        return [*self.argv_prefix, *job.argv]

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
        now = self.clock.now()
        self._next: list[_dt.datetime] = [next_run(job.when, now) for job in self.jobs]
        """When each of :attr:`jobs` (same index) next falls due."""

    def _run_pending(self) -> None:
        """Queue every job whose time has come (earliest first; ties in :attr:`jobs`
        order) and compute its next time from now: missed runs collapse into one."""
        now = self.clock.now()
        due = sorted((i for i, when in enumerate(self._next) if when <= now), key=lambda i: self._next[i])
        for i in due:
            self._due(self.jobs[i])
            self._next[i] = next_run(self.jobs[i].when, self.clock.now())

    def idle_seconds(self) -> float | None:
        """Seconds until the next job falls due (None without jobs)."""
        if not self._next:
            return None
        return (min(self._next) - self.clock.now()).total_seconds()

    # -- queue --

    def _due(self, job: Job, *, jitter: bool = True) -> None:
        """Called when *job* is due: queue it (once) with its jitter."""
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
        """Each job with the time it next falls due, soonest first."""
        return sorted(zip(self.jobs, self._next, strict=True), key=lambda p: (p[1], p[0].priority))

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
            self._run_pending()
            head = self._head()
            if head is not None and head.not_before <= self.clock.now():
                self.queue.remove(head)
                self._execute(head.job)
                continue
            idle = self.idle_seconds()
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
