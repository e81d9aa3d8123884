"""`drkit schedule install`: systemd units that `systemd-analyze verify` accepts, timer
calendars systemd understands, and a cron file whose command lines, run by /bin/sh the way
cron runs them, hand drkit exactly the job's arguments."""

from __future__ import annotations

import json
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from drkit.cli import cli
from drkit.cli.app import run_cli
from drkit.errors import UsageError
from drkit.schedule import JobSchedule, cron_expr, on_calendar
from tests.conftest import require_binary
from tests.ops.conftest import write_config

FAKE_DRKIT = """#!/bin/sh
# records its arguments as JSON, one line per call
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "$(dirname "$0")/calls.jsonl"
"""


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    # a config path with a space and a percent sign: both need escaping in units and cron
    cfg_dir = tmp_path / "etc dir"
    cfg_dir.mkdir()
    cfg = write_config(cfg_dir / "drkit.yaml", {
        "repository": {"url": str(tmp_path / "repo")},
        "schedule": {
            "lock_file": str(tmp_path / "drkit.lock"),
            "backup": {"every": "6h"},
            "verify": {"subset": "10%"},
            "prune": {"weekday": "saturday", "at": "04:30", "keep": {"daily": 7, "within": "30d"}},
        },
    })
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "drkit"
    fake.write_text(FAKE_DRKIT)
    fake.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    return {"cfg": cfg, "drkit": fake, "out": out, "lock": tmp_path / "drkit.lock"}


def install(setup: dict[str, Path], *args: str) -> int:
    return run_cli(cli, ["-c", str(setup["cfg"]), "schedule", "install", *args,
                         "--drkit", str(setup["drkit"]), "--dir", str(setup["out"])])


def _exec_start_argv(unit_text: str) -> list[str]:
    line = next(ln for ln in unit_text.splitlines() if ln.startswith("ExecStart="))
    value = line.split("=", 1)[1].replace("%%", "%").replace("$$", "$")
    return shlex.split(value)


def test_systemd_units_pass_systemd_analyze_verify(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    analyze = require_binary("systemd-analyze")
    assert install(setup, "--systemd") == 0
    names = sorted(p.name for p in setup["out"].iterdir())
    expected_jobs = ["backup", "prune", "verify-full", "verify"] + (["drill"] if "drill" in cli.list_commands(None) else [])
    assert names == sorted(f"drkit-{j}.{kind}" for j in expected_jobs for kind in ("service", "timer"))
    files = sorted(str(p) for p in setup["out"].iterdir())
    res = subprocess.run([analyze, "verify", *files], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "" and res.stderr.strip() == "", res.stdout + res.stderr
    for path in setup["out"].iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644

    service = (setup["out"] / "drkit-verify.service").read_text()
    assert "--read-data-subset 10%%" in service  # systemd specifier escaping
    assert _exec_start_argv(service) == [
        "/usr/bin/flock", "--wait", "7200", str(setup["lock"]), str(setup["drkit"]),
        "-c", str(setup["cfg"]), "-q", "--retry-lock", "30m", "verify", "--read-data-subset", "10%",
    ]
    assert "Type=oneshot" in service and "EnvironmentFile=-/etc/drkit/drkit.env" in service
    prune = (setup["out"] / "drkit-prune.service").read_text()
    assert _exec_start_argv(prune)[-9:] == ["-q", "--retry-lock", "30m", "forget", "--prune", "--keep-daily", "7", "--keep-within", "30d"]
    timer = (setup["out"] / "drkit-backup.timer").read_text()
    assert "OnCalendar=*-*-* 00/6:00:00" in timer and "RandomizedDelaySec=600" in timer and "Persistent=true" in timer
    out = capsys.readouterr().out
    assert "next: systemctl daemon-reload && systemctl enable --now drkit-backup.timer" in out


def test_systemd_analyze_rejects_a_broken_unit(tmp_path: Path) -> None:
    """The verification above can fail: a unit with a missing program does not pass."""
    analyze = require_binary("systemd-analyze")
    bad = tmp_path / "drkit-bad.service"
    bad.write_text("[Unit]\nDescription=x\n[Service]\nType=oneshot\nExecStart=/nonexistent/drkit backup\n")
    res = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 or res.stderr.strip()


@pytest.mark.parametrize(
    ("when", "weekday"),
    [({"weekday": "sunday", "at": "06:00"}, "Sun"), ({"weekday": "saturday", "at": "04:30"}, "Sat"),
     ({"every": "1d", "at": "02:00"}, None), ({"every": "2d", "at": "03:15"}, None), ({"every": "6h"}, None),
     ({"every": "15m"}, None), ({"every": "1d"}, None)],
)
def test_timer_calendars_are_valid_for_systemd(when: dict, weekday: str | None) -> None:
    analyze = require_binary("systemd-analyze")
    lines = on_calendar(JobSchedule.model_validate(when))
    assert len(lines) == 1 and lines[0].startswith("OnCalendar=")
    expr = lines[0].split("=", 1)[1]
    res = subprocess.run([analyze, "calendar", "--iterations=2", expr], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    nxt = [ln.split(":", 1)[1].strip() for ln in res.stdout.splitlines() if "Next elapse" in ln or "Iter." in ln]
    assert len(nxt) == 2
    if weekday:
        assert all(n.startswith(weekday) for n in nxt), nxt
    if "at" in when:
        assert all(f" {when['at']}:00" in n for n in nxt), nxt


def test_odd_intervals_use_monotonic_timers() -> None:
    assert on_calendar(JobSchedule(every=5 * 3600)) == ["OnBootSec=15m", "OnUnitActiveSec=5h"]


def test_cron_file_lines_run_drkit_with_the_job_arguments(setup: dict[str, Path], tmp_path: Path) -> None:
    flock = require_binary("flock")
    assert install(setup, "--cron", "--user", "backup") == 0
    text = (setup["out"] / "drkit").read_text()
    assert text.startswith("# drkit scheduled jobs. Generated by 'drkit schedule install --cron'")
    assert "SHELL=/bin/sh\n" in text
    entries = [ln for ln in text.splitlines() if ln and not ln.startswith("#") and "=" not in ln.split()[0]]
    by_job: dict[str, str] = {}
    for line in entries:
        fields = line.split(None, 6)
        assert len(fields) == 7 and fields[5] == "backup"
        assert all(f == "*" or f.replace("*/", "").isdigit() for f in fields[:5]), line
        command = fields[6]
        # cron turns an unescaped % into a newline: there must be none
        assert "%" not in command.replace("\\%", "")
        assert command.startswith("sleep $(shuf -i 0-600 -n 1) && ")
        words = command.split(" -q ", 1)[1].split()
        assert words[:2] == ["--retry-lock", "30m"]  # the default: wait for a manual prune
        by_job[words[2] + ("-full" if "--read-data " in command + " " else "")] = line
    assert by_job["backup"].split()[:5] == ["0", "*/6", "*", "*", "*"]
    assert by_job["forget"].split()[:5] == ["30", "4", "*", "*", "6"]
    assert by_job["verify-full"].split()[:5] == ["0", "6", "*", "*", "0"]

    # run each command as cron would: % unescaped, /bin/sh -c, without the jitter sleep
    for line in entries:
        command = line.split(None, 6)[6].replace("\\%", "%")
        command = command.split(" && ", 1)[1].replace("/usr/bin/flock", flock, 1)
        subprocess.run(["/bin/sh", "-c", command], check=True, timeout=30)
    calls = [json.loads(ln) for ln in (setup["drkit"].parent / "calls.jsonl").read_text().splitlines()]
    cfg = str(setup["cfg"])
    assert ["-c", cfg, "-q", "--retry-lock", "30m", "verify", "--read-data-subset", "10%"] in calls
    assert ["-c", cfg, "-q", "--retry-lock", "30m", "backup"] in calls
    assert ["-c", cfg, "-q", "--retry-lock", "30m", "forget", "--prune", "--keep-daily", "7", "--keep-within", "30d"] in calls
    assert len(calls) == len(entries)


@pytest.mark.parametrize(
    ("when", "expr"),
    [({"every": "6h"}, "0 */6 * * *"), ({"every": "1h"}, "0 * * * *"), ({"every": "15m"}, "*/15 * * * *"),
     ({"every": "1d"}, "0 0 * * *"), ({"every": "1d", "at": "02:05"}, "5 2 * * *"),
     ({"every": "2d", "at": "03:30"}, "30 3 */2 * *"), ({"weekday": "sunday", "at": "06:00"}, "0 6 * * 0"),
     ({"weekday": "monday"}, "0 3 * * 1")],
)
def test_cron_expressions(when: dict, expr: str) -> None:
    assert cron_expr(JobSchedule.model_validate(when)) == expr


def test_cron_refuses_intervals_it_cannot_express() -> None:
    with pytest.raises(UsageError, match="cron cannot run a job every 5h") as err:
        cron_expr(JobSchedule(every=5 * 3600))
    assert "--systemd" in (err.value.hint or "")


def test_print_writes_nothing(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert install(setup, "--systemd", "--print") == 0
    assert list(setup["out"].iterdir()) == []
    out = capsys.readouterr().out
    assert f"# --- {setup['out'] / 'drkit-backup.service'}" in out and "[Timer]" in out


def test_install_refuses_foreign_files_and_bad_arguments(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    (setup["out"] / "drkit").write_text("# someone's own cron file\n")
    assert install(setup, "--cron") == 9
    assert "exists and was not generated by drkit" in capsys.readouterr().err
    assert (setup["out"] / "drkit").read_text() == "# someone's own cron file\n"
    assert install(setup, "--cron", "--force") == 0
    assert install(setup, "--cron") == 0  # our own file: replaced without --force
    assert run_cli(cli, ["-c", str(setup["cfg"]), "schedule", "install", "--dir", str(setup["out"])]) == 2
    assert "say which: --systemd or --cron" in capsys.readouterr().err
    assert run_cli(cli, ["-c", str(setup["cfg"]), "schedule", "install", "--cron", "--drkit", "bin/drkit"]) == 2
    assert "--drkit must be an absolute path" in capsys.readouterr().err
    assert run_cli(cli, ["-c", str(setup["cfg"]), "schedule", "install", "--cron", "--drkit", str(setup["drkit"]),
                         "--dir", str(setup["out"] / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_show_lists_jobs(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(cli, ["-c", str(setup["cfg"]), "schedule", "show"]) == 0
    out = capsys.readouterr().out
    assert "backup       every 6h" in out and "drkit --retry-lock 30m verify --read-data-subset 10%" in out
