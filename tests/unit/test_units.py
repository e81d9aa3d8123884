"""drkit.units: one grammar for durations, sizes and fractions, and the promise that a
retention value the config check accepts is the value forget applies (and one it
refuses, forget refuses too)."""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from drkit.cli import cli
from drkit.cli.app import run_cli
from drkit.errors import ConfigError
from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot
from drkit.schedule import build_jobs, parse_schedule_config
from drkit.storage import LocalStorage
from drkit.units import (
    duration_seconds,
    format_duration,
    format_size,
    parse_duration,
    parse_fraction,
    parse_keep_within,
    parse_size,
)

H = timedelta(hours=1)
D = timedelta(days=1)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("7d", 7 * D), ("2w3d", 17 * D), ("12h", 12 * H), ("1y6M", 545 * D), ("6M", 180 * D), ("1y", 365 * D),
        ("1.5d", 36 * H), ("1h30m", 90 * timedelta(minutes=1)), ("15m", timedelta(minutes=15)), ("90s", timedelta(seconds=90)),
        ("500ms", timedelta(milliseconds=500)), ("1d1m", D + timedelta(minutes=1)), (" 7d ", 7 * D), ("0s", timedelta(0)),
        ("1y2M3w4d5h6m7s", 365 * D + 60 * D + 25 * D + 5 * H + timedelta(minutes=6, seconds=7)),
    ],
)
def test_parse_duration(text: str, want: timedelta) -> None:
    assert parse_duration(text) == want


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "expected"), ("7", "give a unit"), ("1.5", "give a unit"), ("d7", "expected"), ("7x", "unknown unit 'x'"),
        ("6D", "unknown unit 'D'"), ("1d 2h", "expected"), ("-1d", "negative"), ("3d2w", "largest first"),
        ("1d1d", "largest first"), ("1y6m", "ambiguous"), ("6m15d", "ambiguous"), ("2M5m", "ambiguous"),
        ("1y2m3d4h", "ambiguous"),
    ],
)
def test_parse_duration_refuses_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as exc:
        parse_duration(text)
    assert "\n" not in str(exc.value)


def test_month_and_minute_are_told_apart_in_the_hint() -> None:
    with pytest.raises(ValueError) as exc:
        parse_duration("1y6m")
    assert "m is minutes, M is months" in str(exc.value) and "1y6M" in str(exc.value)


def test_keep_within_refuses_minutes_alone_and_zero() -> None:
    assert parse_keep_within("1h30m") == 90 * timedelta(minutes=1)
    for text, says in (("6m", "ambiguous retention"), ("90m", "ambiguous retention"), ("0d", "longer than zero")):
        with pytest.raises(ValueError, match=says):
            parse_keep_within(text)
    with pytest.raises(ValueError, match="give a unit"):
        parse_keep_within(7)  # a YAML number: 7 what?


def test_duration_seconds_takes_numbers_as_seconds() -> None:
    assert [duration_seconds(v) for v in (90, 2.5, "90", "1.5h", "1w")] == [90.0, 2.5, 90.0, 5400.0, 604800.0]
    for bad in (True, None, -1, "-5", float("inf"), "5x"):
        with pytest.raises(ValueError):
            duration_seconds(bad)


@pytest.mark.parametrize("seconds", [0, 1, 59, 60, 61, 3600, 5400, 86400, 86460, 90061, 7 * 86400])
def test_format_duration_parses_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)).total_seconds() == seconds


def test_sizes() -> None:
    assert [parse_size(v) for v in (0, 4096, "4096", "512KiB", "16M", "1.5GiB", "10GB", "1 TiB", "2kB", "8B")] == [
        0, 4096, 4096, 512 * 1024, 16 * 1024**2, 3 * 1024**3 // 2, 10 * 1000**3, 1024**4, 2000, 8,
    ]
    for bad, says in (("1.5B", "whole number"), ("12 parsecs", "invalid size"), (-1, "negative"), (True, "invalid"), ("", "invalid")):
        with pytest.raises(ValueError, match=says):
            parse_size(bad)
    assert [format_size(n) for n in (512, 1536, 16 * 1024**2, 3 * 1024**4)] == ["512 B", "1.5 KiB", "16.0 MiB", "3.0 TiB"]


def test_fractions() -> None:
    assert [parse_fraction(v) for v in ("10%", "100%", "0.25", "1/8", " 5% ")] == [0.1, 1.0, 0.25, 0.125, 0.05]
    for bad in ("0%", "101%", "ten", "1/0", "0", "1.5", "", True, None, "-5%"):
        with pytest.raises(ValueError, match="percentage"):
            parse_fraction(bad)


# --- the config check and forget agree ---------------------------------------------------------

# snapshot ages; a window keeps every snapshot at most that old
# (forget counts from now: no age sits near a window's edge, the test may take seconds)
AGES = [timedelta(minutes=1), timedelta(minutes=45), 2 * H, 30 * H, 3 * D, 7 * D + 12 * H, 10 * D, 25 * D, 100 * D,
        300 * D, 500 * D, 800 * D]

RETENTION_TABLE: list[tuple[object, timedelta | None]] = [
    # value, the window it means (None: refused by the config check AND by forget)
    ("12h", 12 * H), ("1h30m", 90 * timedelta(minutes=1)), ("36h", 36 * H), ("1.5d", 36 * H), ("7d", 7 * D),
    ("1w1d", 8 * D), ("2w3d", 17 * D), ("1M", 30 * D), ("6M", 180 * D), ("1y", 365 * D), ("1y6M", 545 * D),
    ("6m", None), ("1y6m", None), ("6m15d", None), ("7", None), ("1.5", None), ("7 d", None), ("6D", None),
    ("d7", None), ("0d", None), (7, None),
]


@pytest.fixture(scope="module")
def aged_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, timedelta]]:
    """A repository with one empty snapshot per age in AGES (written directly: only
    their times matter to forget)."""
    root = tmp_path_factory.mktemp("retention")
    repo = Repository.init(LocalStorage(root / "repo"), "pw")
    now = datetime.now(timezone.utc)
    ages: dict[str, timedelta] = {}
    for age in AGES:
        snap = Snapshot(id=secrets.token_hex(32), time=(now - age).isoformat().replace("+00:00", "Z"), source="data",
                        source_type="files", run=secrets.token_hex(16), host="h", tree=[])
        repo.save_snapshot(snap)
        ages[snap.id] = age
    cfg = root / "drkit.yaml"
    cfg.write_text(yaml.safe_dump({"repository": {"url": str(root / "repo")},
                                   "sources": [{"name": "data", "type": "files", "paths": [str(root)]}]}))
    cfg.chmod(0o600)
    return cfg, ages


@pytest.mark.parametrize(("value", "window"), RETENTION_TABLE, ids=[repr(v) for v, _ in RETENTION_TABLE])
def test_config_check_and_forget_agree_on_every_retention_value(value, window, aged_repo, capsys, monkeypatch) -> None:
    cfg, ages = aged_repo
    monkeypatch.setenv("DRKIT_PASSWORD", "pw")
    section = {"prune": {"every": "1d", "keep": {"within": value}}}
    argv = ["--keep-within", str(value)]
    checked = cfg.parent / f"check-{secrets.token_hex(4)}.yaml"
    checked.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "schedule": section}))
    checked.chmod(0o600)
    capsys.readouterr()
    code = run_cli(cli, ["-c", str(checked), "config", "check"])
    err = capsys.readouterr().err
    assert (code, "schedule.prune.keep" in err) == ((0, False) if window else (2, True)), err
    if window is None:
        with pytest.raises(ConfigError) as exc:
            parse_schedule_config(section)
        assert exc.value.key == "schedule.prune.keep"
    else:
        jobs, _ = build_jobs(parse_schedule_config(section))
        (prune,) = [j for j in jobs if j.name == "prune"]
        assert prune.args[:2] == ("forget", "--prune")
        argv = list(prune.args[2:])  # exactly what the scheduled job runs
        assert argv == ["--keep-within", str(value)]
    capsys.readouterr()
    code = run_cli(cli, ["-c", str(cfg), "forget", *argv, "--dry-run", "--json"])
    out, err = capsys.readouterr()
    if window is None:
        assert code == 2 and err.count("--keep-within:") == 1, err
        return
    assert code == 0, err
    removed = {r["id"] for r in json.loads(out)["removed"]}
    assert {i for i, age in ages.items() if i not in removed} == {i for i, age in ages.items() if age <= window}
