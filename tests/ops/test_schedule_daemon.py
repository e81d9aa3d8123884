"""The scheduler daemon with real processes: SIGTERM is forwarded to the running job,
which gets stop_timeout to finish; a job that ignores it is killed; the daemon exits
within the deadline and leaves no child behind. And `drkit schedule run` end to end:
a real backup as a child process, metrics written, clean stop."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from drkit.cli import cli
from drkit.cli.app import run_cli
from drkit.schedule import ChildLauncher, Job, JobSchedule
from tests.ops.conftest import write_config

ROOT = Path(__file__).resolve().parents[2]

HARNESS = r'''
import json, logging, sys
from drkit.schedule import ChildLauncher, Daemon, build_jobs, parse_schedule_config
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
child, stop_timeout = sys.argv[1], float(sys.argv[2])
jobs, _ = build_jobs(parse_schedule_config({"jitter": 0}))
daemon = Daemon(jobs, ChildLauncher([sys.executable, child], stop_timeout=stop_timeout, poll=0.05), jitter=0)
daemon.trigger("backup")
daemon.trigger("verify")
with daemon.signals():
    code = daemon.run()
print(json.dumps([[r.job, r.returncode, r.stopped, r.killed] for r in daemon.history]))
sys.exit(code)
'''

GRACEFUL_CHILD = r'''
import os, signal, sys, time
mark = os.environ["MARK"]
def term(*_):
    time.sleep(0.3)  # some cleanup (release a lock...)
    with open(mark, "a") as f:
        f.write("term\n")
    sys.exit(130)
signal.signal(signal.SIGTERM, term)
with open(mark, "a") as f:
    f.write(f"started {os.getpid()} {' '.join(sys.argv[1:])}\n")
time.sleep(60)
'''

STUBBORN_CHILD = r'''
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(os.environ["MARK"], "a") as f:
    f.write(f"started {os.getpid()} {' '.join(sys.argv[1:])}\n")
time.sleep(60)
'''


def alive(pid: int) -> bool:
    """True if *pid* runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


class Proc:
    """A subprocess whose stderr is collected line by line in the background."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.p.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError("condition not met; stderr so far:\n" + "\n".join(self.lines))

    def stop(self) -> tuple[int, str, float]:
        t0 = time.monotonic()
        self.p.wait(timeout=30)
        assert self.p.stdout is not None
        out = self.p.stdout.read()  # stderr belongs to the reader thread
        self._t.join(5)
        return self.p.returncode, out, time.monotonic() - t0

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRKIT_") or k in ("DRKIT_STATE_DIR", "DRKIT_CACHE_DIR")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _start_harness(tmp_path: Path, child_src: str, stop_timeout: float) -> tuple[Proc, Path, int]:
    child = tmp_path / "child.py"
    child.write_text(child_src)
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    mark = tmp_path / "mark"
    proc = Proc([sys.executable, str(harness), str(child), str(stop_timeout)], _env(MARK=str(mark)))
    proc.wait_for(lambda: mark.exists() and "started" in mark.read_text())
    first = mark.read_text().splitlines()[0].split()
    assert first[2:] == ["--retry-lock", "30m", "backup"]  # the child got the job's drkit arguments
    return proc, mark, int(first[1])


def test_sigterm_is_forwarded_and_the_job_finishes_within_the_deadline(tmp_path: Path) -> None:
    proc, mark, child_pid = _start_harness(tmp_path, GRACEFUL_CHILD, stop_timeout=10)
    try:
        os.kill(proc.p.pid, signal.SIGTERM)
        code, out, took = proc.stop()
    finally:
        proc.kill()
    assert code == 0
    assert took < 5  # the child needed 0.3 s, far below the 10 s allowed
    assert mark.read_text().splitlines()[1:] == ["term"]  # it got SIGTERM, once
    assert not alive(child_pid)
    # backup was stopped; verify (queued) never started
    assert json.loads(out.strip().splitlines()[-1]) == [["backup", 130, True, False]]
    text = "\n".join(proc.lines)
    assert "SIGTERM received: stopping after job backup stops" in text
    assert "job backup: stop requested: sending SIGTERM to pid" in text
    assert "job backup stopped on stop after" in text and "(exit 130: interrupted)" in text
    assert "stopped; not started: verify" in text


def test_a_job_that_ignores_sigterm_is_killed_after_stop_timeout(tmp_path: Path) -> None:
    proc, mark, child_pid = _start_harness(tmp_path, STUBBORN_CHILD, stop_timeout=1)
    try:
        os.kill(proc.p.pid, signal.SIGTERM)
        code, out, took = proc.stop()
    finally:
        proc.kill()
    assert code == 0
    assert 0.9 <= took < 5
    assert not alive(child_pid)
    assert json.loads(out.strip().splitlines()[-1]) == [["backup", -signal.SIGKILL, True, True]]
    assert re.search(r"job backup: still running 1(\.\d)?s after SIGTERM: killing it", "\n".join(proc.lines))


def test_a_second_signal_kills_at_once(tmp_path: Path) -> None:
    proc, mark, child_pid = _start_harness(tmp_path, STUBBORN_CHILD, stop_timeout=60)
    try:
        os.kill(proc.p.pid, signal.SIGTERM)
        proc.wait_for(lambda: any("sending SIGTERM" in ln for ln in proc.lines))
        os.kill(proc.p.pid, signal.SIGINT)
        code, out, took = proc.stop()
    finally:
        proc.kill()
    assert code == 0 and took < 5
    assert not alive(child_pid)
    assert "SIGINT again: killing the running job" in "\n".join(proc.lines)


def test_job_timeout_sends_sigterm(tmp_path: Path) -> None:
    child = tmp_path / "child.py"
    child.write_text(GRACEFUL_CHILD)
    mark = tmp_path / "mark"
    launcher = ChildLauncher([sys.executable, str(child)], stop_timeout=5, poll=0.05,
                             env=_env(MARK=str(mark)))
    job = Job("backup", ("backup",), JobSchedule(every=3600), timeout=0.5)
    t0 = time.monotonic()
    code, killed = launcher(job, threading.Event(), threading.Event())
    assert (code, killed) == (130, False)
    assert time.monotonic() - t0 < 4
    assert mark.read_text().splitlines()[-1] == "term"


def test_missing_program_is_reported_not_raised(tmp_path: Path) -> None:
    launcher = ChildLauncher([str(tmp_path / "no-such-python")])
    job = Job("backup", ("backup",), JobSchedule(every=3600), timeout=10)
    assert launcher(job, threading.Event(), threading.Event()) == (127, False)


# --- drkit schedule run, end to end ----------------------------------------------------


@pytest.fixture
def live_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.bin").write_bytes(os.urandom(20_000))
    (tmp_path / "textfile").mkdir()
    cfg = write_config(tmp_path / "drkit.yaml", {
        "repository": {"url": str(tmp_path / "repo")},
        "sources": [{"name": "data", "type": "files", "paths": [str(data)]}],
        "metrics": {"textfile": str(tmp_path / "textfile" / "drkit.prom")},
        "schedule": {"jitter": 0, "stop_timeout": "10s"},
    })
    monkeypatch.setenv("DRKIT_PASSWORD", "schedule-e2e-passphrase")
    assert run_cli(cli, ["-q", "-c", str(cfg), "init"]) == 0
    return cfg


def test_schedule_run_runs_a_real_backup_and_stops_on_sigterm(live_config: Path, tmp_path: Path) -> None:
    proc = Proc([sys.executable, "-m", "drkit", "-c", str(live_config), "schedule", "run", "--now", "backup"],
                _env(DRKIT_PASSWORD="schedule-e2e-passphrase"))
    try:
        proc.wait_for(lambda: any("job backup finished" in ln or "job backup failed" in ln for ln in proc.lines),
                      timeout=60)
        os.kill(proc.p.pid, signal.SIGTERM)
        code, _, took = proc.stop()
    finally:
        proc.kill()
    text = "\n".join(proc.lines)
    assert code == 0, text
    assert took < 5
    assert "job backup started: drkit backup" in text
    assert "job backup finished: ok in" in text, text
    assert "scheduled backup: backup (every day at 02:00), next" in text
    if "drill" not in cli.list_commands(None):
        assert "drill: not scheduled: this drkit has no 'drill' command" in text
    assert "SIGTERM received: stopping" in text and text.rstrip().endswith("stopped")
    assert "schedule-e2e-passphrase" not in text
    prom = (tmp_path / "textfile" / "drkit.prom").read_text()
    assert 'drkit_snapshots{source="data"} 1' in prom
    assert 'drkit_last_failure_timestamp_seconds{command="backup",source="data"} 0' in prom


def test_schedule_run_refuses_unknown_now_job(live_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(cli, ["-c", str(live_config), "schedule", "run", "--now", "bakup"]) == 2
    err = capsys.readouterr().err
    assert "error: no scheduled job named 'bakup'" in err and "hint: jobs: backup" in err


def test_drkit_treats_sigterm_like_ctrl_c_and_records_the_failure(live_config: Path, tmp_path: Path) -> None:
    """A drkit command that gets SIGTERM (from systemd or the scheduler) unwinds like
    Ctrl-C: 'interrupted', exit 130, and the backup is recorded as failed in the metrics."""
    started = tmp_path / "pw-command-started"
    script = tmp_path / "slow-passphrase.sh"
    script.write_text(f"#!/bin/sh\ntouch '{started}'\nsleep 30\necho never\n")
    script.chmod(0o755)
    proc = Proc([sys.executable, "-m", "drkit", "-c", str(live_config), "backup"],
                _env(DRKIT_PASSWORD_COMMAND=str(script)))
    try:
        proc.wait_for(started.exists)
        os.kill(proc.p.pid, signal.SIGTERM)  # drkit only, not its process group
        code, _, took = proc.stop()
    finally:
        proc.kill()
    assert code == 130, proc.lines
    assert took < 5
    assert proc.lines[-1] in ("interrupted", "aborted")  # click turns KeyboardInterrupt into Abort
    prom = (tmp_path / "textfile" / "drkit.prom").read_text()
    assert re.search(r'drkit_last_failure_timestamp_seconds\{command="backup",source="data"\} 1\d{9}', prom), prom
    assert 'drkit_last_success_timestamp_seconds{command="backup",source="data"} 0' in prom


def test_sigterm_to_the_scheduler_stops_a_real_drkit_job(live_config: Path, tmp_path: Path) -> None:
    started = tmp_path / "pw-command-started"
    script = tmp_path / "slow-passphrase.sh"
    script.write_text(f"#!/bin/sh\ntouch '{started}'\nsleep 30\necho never\n")
    script.chmod(0o755)
    proc = Proc([sys.executable, "-m", "drkit", "-c", str(live_config), "schedule", "run", "--now", "backup"],
                _env(DRKIT_PASSWORD_COMMAND=str(script)))
    try:
        proc.wait_for(started.exists)
        os.kill(proc.p.pid, signal.SIGTERM)
        code, _, took = proc.stop()
    finally:
        proc.kill()
    text = "\n".join(proc.lines)
    assert code == 0, text
    assert took < 8  # stop_timeout is 10 s: the job stopped on SIGTERM, it was not killed
    assert re.search(r"job backup stopped on stop after [\d.]+s \(exit \d+: ", text), text
    assert "killing it" not in text
    prom = (tmp_path / "textfile" / "drkit.prom").read_text()
    assert re.search(r'drkit_last_failure_timestamp_seconds\{command="backup",source="data"\} 1\d{9}', prom), prom
