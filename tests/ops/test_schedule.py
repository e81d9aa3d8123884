"""drkit.schedule: config validation, job order without overlap under a fake clock,
jitter, collapsing of missed runs, and the daemon's log lines."""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import threading
from pathlib import Path

import pytest
import yaml

from drkit.errors import ConfigError, UsageError
from drkit.schedule import (
    Daemon,
    Job,
    build_jobs,
    parse_schedule_config,
)
from drkit.units import duration_seconds as parse_duration
from drkit.units import format_duration
from tests.ops.conftest import FakeClock


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), ("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("6h", 21600.0), ("1d", 86400.0),
     ("1w", 604800.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("500ms", 0.5)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "1h 30", "-5", -5, "h1", True, None, "1d1"])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(x) for x in (0, 59, 60, 5400, 86400 + 7, 0.25)] == ["0s", "59s", "1m", "1h30m", "1d7s", "0.2s"]


@pytest.mark.parametrize(
    ("section", "key", "fragment"),
    [
        ({"backup": {"every": "1d", "at": "25:00"}}, "schedule.backup.at", "HH:MM"),
        ({"backup": {"every": "6h", "at": "02:00"}}, "schedule.backup", "whole days"),
        ({"backup": {"every": "30s"}}, "schedule.backup", "at least 1m"),
        ({"backup": {"at": "02:00"}}, "schedule.backup", "'every'"),
        ({"prune": {"every": "1d", "keep": {"daily": 1}, "wat": 1}}, "schedule.prune.wat", "not permitted"),
        ({"drill": {"weekday": "funday"}}, "schedule.drill.weekday", "weekday"),
        ({"verify_full": {"weekday": "sunday", "every": "1d"}}, "schedule.verify_full", "weekly"),
        ({"verify": {"every": "1d", "subset": "ten"}}, "schedule.verify.subset", "percentage"),
        ({"verify": {"every": "1d", "subset": "0%"}}, "schedule.verify.subset", "percentage"),
        ({"prune": {"weekday": "sat", "keep": {"forever": 1}}}, "schedule.prune.keep", "unknown key"),
        ({"prune": {"weekday": "sat", "keep": {"daily": 0}}}, "schedule.prune.keep", "positive"),
        ({"prune": {"weekday": "sat", "keep": {}}}, "schedule.prune.keep", "keep nothing"),
        ({"jitter": "a while"}, "schedule.jitter", "duration"),
        ({"bakup": {"every": "1d"}}, "schedule.bakup", "not permitted"),
    ],
)
def test_bad_schedule_names_the_key(section: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_schedule_config(section)
    msg = err.value.message
    assert msg.startswith(f"config error: {key}: "), msg
    assert fragment in msg and "\n" not in msg
    assert err.value.hint


def test_defaults_and_commands() -> None:
    cfg = parse_schedule_config(None)
    jobs, notes = build_jobs(cfg, available_commands={"backup", "verify", "forget", "drill"})
    assert [(j.name, j.args, j.describe()) for j in jobs] == [
        ("backup", ("backup",), "every day at 02:00"),
        ("prune", ("forget", "--prune", "--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "12"),
         "every saturday at 04:00"),
        ("verify_full", ("verify", "--read-data"), "every sunday at 06:00"),
        ("verify", ("verify", "--read-data-subset", "10%"), "every day at 05:00"),
        ("drill", ("drill",), "every sunday at 08:00"),
    ]
    assert notes == []
    assert cfg.jitter == 600 and cfg.stop_timeout == 300
    assert [j.timeout for j in jobs] == [21600, 21600, 43200, 7200, 14400]
    # Every job waits up to 30 minutes for a lock another command holds (a prune run by
    # hand): a root option, so before the command.
    assert all(j.argv == ("--retry-lock", "30m", *j.args) for j in jobs)


@pytest.mark.parametrize(("value", "root_args"), [("1h30m", ("--retry-lock", "1h30m")), (0, ()), ("0s", ())])
def test_retry_lock_is_configurable_and_zero_turns_it_off(value: object, root_args: tuple[str, ...]) -> None:
    jobs, _ = build_jobs(parse_schedule_config({"retry_lock": value}))
    assert jobs and all(j.root_args == root_args and j.argv == (*root_args, *j.args) for j in jobs)


def test_a_scheduled_job_waits_for_a_lock_another_command_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the retry buys: a backup that fires during a prune run by hand waits for it
    and stores its snapshot; with retry_lock 0 it fails on the lock (exit 4)."""
    from drkit.repository.locks import Lock
    from drkit.storage import LocalStorage
    from tests.cli import invoke

    monkeypatch.setenv("DRKIT_PASSWORD", "pw")
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text(yaml.safe_dump({"repository": {"url": str(tmp_path / "repo")},
                                   "sources": [{"name": "data", "type": "files", "paths": [str(data)]}]}))
    cfg.chmod(0o600)
    assert invoke("-c", cfg, "init").code == 0
    for setting, code in (("0", 4), ("30s", 0)):
        backup = next(j for j in build_jobs(parse_schedule_config({"retry_lock": setting}))[0] if j.name == "backup")
        held = Lock(LocalStorage(str(tmp_path / "repo")), exclusive=True, command="prune").acquire()
        releaser = threading.Timer(0.5, held.release)
        if code == 0:
            releaser.start()
        r = invoke("-c", cfg, "-q", *backup.argv)
        releaser.cancel()
        if code != 0:
            held.release()
        assert r.code == code, r.err
    assert len(json.loads(invoke("-c", cfg, "snapshots", "--json").out)) == 1


def test_drill_left_out_when_the_command_does_not_exist() -> None:
    cfg = parse_schedule_config({"backup": {"enabled": False}, "drill": {"weekday": "mon", "args": ["--source", "etcd"]}})
    jobs, notes = build_jobs(cfg, available_commands={"backup", "verify", "forget"})
    assert [j.name for j in jobs] == ["prune", "verify_full", "verify"]
    assert notes == ["backup: disabled in the config", "drill: not scheduled: this drkit has no 'drill' command"]
    jobs, _ = build_jobs(cfg, available_commands={"verify", "forget", "drill"})
    assert jobs[-1].args == ("drill", "--source", "etcd") and jobs[-1].when.weekday == "monday"


# --- the daemon under a fake clock ---------------------------------------------------


class FakeLauncher:
    """Runs a job by moving the fake clock forward by the job's duration."""

    def __init__(self, clock: FakeClock, durations: dict[str, float], codes: dict[str, int] | None = None) -> None:
        self.clock = clock
        self.durations = durations
        self.codes = codes or {}
        self.runs: list[tuple[str, dt.datetime, dt.datetime]] = []
        self.active = 0

    def __call__(self, job: Job, stopping: threading.Event, kill_now: threading.Event) -> tuple[int, bool]:
        self.active += 1
        assert self.active == 1, "two jobs at once"
        start = self.clock.now()
        self.clock.advance(self.durations[job.name])
        self.runs.append((job.name, start, self.clock.now()))
        self.active -= 1
        return self.codes.get(job.name, 0), False


def at(day: int, hh: int, mm: int = 0) -> dt.datetime:
    return dt.datetime(2026, 1, day, hh, mm)


def make_daemon(section: dict, clock: FakeClock, durations: dict[str, float], **kw: object) -> tuple[Daemon, FakeLauncher]:
    cfg = parse_schedule_config(section)
    jobs, _ = build_jobs(cfg)
    launcher = FakeLauncher(clock, durations, kw.pop("codes", None))  # type: ignore[arg-type]
    daemon = Daemon(jobs, launcher, clock=clock, jitter=cfg.jitter, rng=random.Random(7), **kw)  # type: ignore[arg-type]
    return daemon, launcher


def test_jobs_run_in_order_one_at_a_time(fake_clock: FakeClock, caplog: pytest.LogCaptureFixture,
                                         drkit_logs: logging.Logger) -> None:
    # Friday 2026-01-02 00:00 to Sunday 00:00
    section = {
        "jitter": 0,
        "backup": {"every": "1d", "at": "02:00"},
        "verify": {"every": "1d", "at": "02:00"},
        "verify_full": {"weekday": "saturday", "at": "02:00"},
        "drill": {"weekday": "saturday", "at": "03:00"},
        "prune": {"every": "6h"},
    }
    durations = {"backup": 3 * 3600, "verify": 1800, "verify_full": 3600, "drill": 1200, "prune": 600}
    daemon, launcher = make_daemon(section, fake_clock, durations, codes={"drill": 7})
    daemon.run(until=at(4, 0))
    got = [(name, start) for name, start, _ in launcher.runs]
    assert got == [
        ("backup", at(2, 2)),          # Friday: backup and verify both due at 02:00: backup first
        ("verify", at(2, 5)),          # then verify, when backup is done
        ("prune", at(2, 6)),           # interval job: 6h after the daemon started
        ("prune", at(2, 12, 0)),
        ("prune", at(2, 18, 0)),
        ("prune", at(3, 0, 0)),
        ("backup", at(3, 2)),          # Saturday: backup, full verify and verify due at 02:00
        ("verify_full", at(3, 5)),     # the full read covers the sampled verify: it does not run
        ("drill", at(3, 6)),           # queued since 03:00: first come, first served
        ("prune", at(3, 6, 20)),       # due 06:00, after the drill
        ("prune", at(3, 12, 0)),
        ("prune", at(3, 18, 0)),
    ]
    for (_, _, end), (_, start, _) in zip(launcher.runs, launcher.runs[1:], strict=False):
        assert end <= start  # never two at once
    finished = [r.getMessage() for r in caplog.records if r.getMessage().startswith("job ") and
                (" finished: ok" in r.getMessage() or " failed after " in r.getMessage())]
    assert len(finished) == len(launcher.runs)  # one end line per job
    assert "job drill failed after 20m: exit 7 (partial failure)" in finished
    assert any("job verify is due but verify_full is queued and covers it" in r.getMessage() for r in caplog.records)
    assert [r.returncode for r in daemon.history].count(7) == 1
    ends = [r for r in caplog.records if getattr(r, "event", None) == "finish"]  # fields for --log-format json
    assert [(r.job, r.exit_code) for r in ends] == [(n, 7 if n == "drill" else 0) for n, _, _ in launcher.runs]
    assert ends[0].duration_seconds == 3 * 3600


def test_missed_runs_collapse_into_one(fake_clock: FakeClock) -> None:
    section = {"jitter": 0, "backup": {"every": "1h"}, "prune": {"every": "15m"},
               "verify": {"enabled": False}, "verify_full": {"enabled": False}, "drill": {"enabled": False}}
    # a backup that runs for 5 hours: prune (every 15m) waits, and runs once afterwards
    daemon, launcher = make_daemon(section, fake_clock, {"backup": 5 * 3600, "prune": 60})
    daemon.run(until=at(2, 6, 0) + dt.timedelta(seconds=30))
    assert [(n, s) for n, s, _ in launcher.runs] == [
        ("prune", at(2, 0, 15)),
        ("prune", at(2, 0, 30)),
        ("prune", at(2, 0, 45)),
        ("backup", at(2, 1, 0)),  # due together with prune: backup first
        ("prune", at(2, 6, 0)),   # once, not 20 prunes in a row
    ]


def test_jitter_delays_each_start_within_bounds(fake_clock: FakeClock) -> None:
    section = {"jitter": "10m", "backup": {"every": "1d", "at": "02:00"}, "prune": {"enabled": False},
               "verify": {"enabled": False}, "verify_full": {"enabled": False}, "drill": {"enabled": False}}
    daemon, launcher = make_daemon(section, fake_clock, {"backup": 60})
    daemon.run(until=at(12, 0))
    starts = [s for _, s, _ in launcher.runs]
    assert len(starts) == 10
    delays = [(s - at(2 + i, 2)).total_seconds() for i, s in enumerate(starts)]
    assert all(0 <= d <= 600 for d in delays), delays
    assert len(set(delays)) > 5  # actually random


def test_trigger_queues_a_job_now_and_rejects_unknown(fake_clock: FakeClock) -> None:
    daemon, launcher = make_daemon({"jitter": "1h"}, fake_clock, {n: 10 for n in
                                                                  ("backup", "prune", "verify", "verify_full", "drill")})
    daemon.trigger("backup")
    daemon.trigger("backup")  # queued once
    daemon.run(until=at(2, 0, 5))
    assert [(n, s) for n, s, _ in launcher.runs] == [("backup", at(2, 0))]
    with pytest.raises(UsageError, match="no scheduled job named 'bakup'"):
        daemon.trigger("bakup")


def test_stop_request_ends_the_loop(fake_clock: FakeClock) -> None:
    daemon, launcher = make_daemon({"jitter": 0}, fake_clock, {"backup": 10})

    def stop_after_first(run: object) -> None:
        daemon.request_stop()

    daemon.on_finish = stop_after_first
    daemon.trigger("backup")
    assert daemon.run(until=at(9, 0)) == 0
    assert len(launcher.runs) == 1 and not daemon.history[0].stopped
    assert fake_clock.now() == at(2, 0) + dt.timedelta(seconds=10)  # no further sleeping


def test_stop_during_a_job_marks_it_stopped_and_starts_nothing_else(fake_clock: FakeClock) -> None:
    seen: list[bool] = []

    def launcher(job: Job, stopping: threading.Event, kill_now: threading.Event) -> tuple[int, bool]:
        daemon.request_stop()  # SIGTERM arrives while the job runs
        seen.append(stopping.is_set())
        return 130, False

    cfg = parse_schedule_config({"jitter": 0})
    jobs, _ = build_jobs(cfg)
    daemon = Daemon(jobs, launcher, clock=fake_clock, jitter=0)
    daemon.trigger("backup")
    daemon.trigger("verify")
    assert daemon.run(until=at(9, 0)) == 0
    assert seen == [True]
    assert [(r.job, r.returncode, r.stopped) for r in daemon.history] == [("backup", 130, True)]
    assert [q.job.name for q in daemon.queue] == ["verify"]  # not started after the stop
