"""drkit.metrics: the textfile parses with Prometheus' own parser, holds the values of
the run that wrote it, merges with earlier runs, is written atomically, and the commands
(backup, verify, forget, prune) write it end to end."""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from drkit.cli import cli
from drkit.cli.app import run_cli
from drkit.errors import ConfigError
from drkit.metrics import (
    METRICS,
    MetricsConfig,
    MetricsSink,
    Outcome,
    parse_metrics_config,
    parse_textfile,
    record_job,
    render_textfile,
    track,
)
from tests.ops.conftest import write_config


def families(path: Path) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted labels: value}, parsed by prometheus_client (the reference parser)."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(path.read_text()):
        for sample in fam.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def sink_at(tmp_path: Path, **extra: object) -> MetricsSink:
    cfg = parse_metrics_config({"textfile": str(tmp_path / "drkit.prom"), **extra})
    assert cfg is not None
    return MetricsSink(cfg)


def test_backup_run_round_trips_through_prometheus_parser(tmp_path: Path) -> None:
    sink = sink_at(tmp_path, rpo_target="2h", sources={"etcd": {"rpo_target": "30m", "rto_budget": "15m"}})
    sink.record_many(
        "backup",
        [
            Outcome("etcd", True, 12.5, {"backup_read_bytes": 1000, "backup_added_bytes": 400, "backup_stored_bytes": 123,
                                           "snapshots": 3}),
            Outcome("git", False, 2.25),
        ],
        now=1_700_000_000.5,
        gauges=[("repository_size_bytes", None, 987654321)],
    )
    fam = families(sink.path)
    assert fam["drkit_last_success_timestamp_seconds"] == {
        (("command", "backup"), ("source", "etcd")): 1_700_000_000.5,
        (("command", "backup"), ("source", "git")): 0.0,  # never succeeded
    }
    assert fam["drkit_last_failure_timestamp_seconds"] == {
        (("command", "backup"), ("source", "etcd")): 0.0,
        (("command", "backup"), ("source", "git")): 1_700_000_000.5,
    }
    assert fam["drkit_job_duration_seconds"][(("command", "backup"), ("source", "etcd"))] == 12.5
    assert fam["drkit_backup_read_bytes"] == {(("source", "etcd"),): 1000}
    assert fam["drkit_backup_added_bytes"] == {(("source", "etcd"),): 400}
    assert fam["drkit_backup_stored_bytes"] == {(("source", "etcd"),): 123}
    assert fam["drkit_snapshots"] == {(("source", "etcd"),): 3}
    assert fam["drkit_repository_size_bytes"] == {(): 987654321}
    assert fam["drkit_rpo_target_seconds"] == {(("source", "etcd"),): 1800, (("source", "git"),): 7200}
    assert fam["drkit_rto_budget_seconds"] == {(("source", "etcd"),): 900, (("source", "git"),): 14400}
    text = sink.path.read_text()
    for name in fam:
        assert f"# HELP {name} " in text and f"# TYPE {name} gauge" in text
    assert stat.S_IMODE(sink.path.stat().st_mode) == 0o644  # node-exporter runs as another user
    assert sorted(p.name for p in tmp_path.iterdir()) == [".drkit.prom.lock", "drkit.prom"]  # no temp file left


def test_merge_keeps_other_series_and_last_success(tmp_path: Path) -> None:
    sink = sink_at(tmp_path)
    sink.record("backup", source="etcd", ok=True, duration=5, values={"backup_added_bytes": 10}, now=1000)
    sink.record("backup", source="git", ok=True, duration=1, now=1001)
    sink.record("verify", ok=True, duration=30, values={"verify_ok": 1, "verify_damaged_objects": 0},
                labels={"level": "subset"}, now=2000)
    sink.record("verify", ok=False, duration=60, values={"verify_ok": 0, "verify_damaged_objects": 2},
                labels={"level": "full"}, now=3000)
    sink.record("backup", source="etcd", ok=False, duration=7, now=4000)
    fam = families(sink.path)
    succ = fam["drkit_last_success_timestamp_seconds"]
    fail = fam["drkit_last_failure_timestamp_seconds"]
    # the failed etcd backup kept the earlier success and set the failure
    assert succ[(("command", "backup"), ("source", "etcd"))] == 1000
    assert fail[(("command", "backup"), ("source", "etcd"))] == 4000
    assert succ[(("command", "backup"), ("source", "git"))] == 1001
    # verify without a source: no source label; the last verify result counts
    assert succ[(("command", "verify"),)] == 2000
    assert fail[(("command", "verify"),)] == 3000
    assert fam["drkit_verify_ok"] == {(("level", "full"),): 0, (("level", "subset"),): 1}
    assert fam["drkit_verify_damaged_objects"][(("level", "full"),)] == 2
    # the value from the earlier backup stays until a new backup of etcd reports one
    assert fam["drkit_backup_added_bytes"] == {(("source", "etcd"),): 10}
    assert fam["drkit_job_duration_seconds"][(("command", "backup"), ("source", "etcd"))] == 7


def test_unknown_lines_and_foreign_metrics_are_dropped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "drkit.prom"
    path.write_text(
        "garbage line {{{\n"
        'drkit_snapshots{source="old"} 4\n'
        'drkit_renamed_metric{source="x"} 1\n'
        'drkit_snapshots{source="bad\\"quote"} 2\n'
        "drkit_repository_size_bytes notanumber\n"
    )
    sink = sink_at(tmp_path)
    sink.record("backup", source="etcd", ok=True, now=10)
    series = parse_textfile(path.read_text())
    assert series[("drkit_snapshots", (("source", "old"),))] == 4
    assert series[("drkit_snapshots", (("source", 'bad"quote'),))] == 2
    assert not any(name == "drkit_renamed_metric" for name, _ in series)
    families(path)  # still parses


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    sink = sink_at(tmp_path)
    names = [f"src{i}" for i in range(24)]

    def worker(name: str) -> None:
        sink.record("backup", source=name, ok=True, duration=1, now=100)

    threads = [threading.Thread(target=worker, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    succ = families(sink.path)["drkit_last_success_timestamp_seconds"]
    assert {dict(k)["source"] for k in succ} == set(names)


def test_label_values_are_escaped(tmp_path: Path) -> None:
    text = render_textfile({("drkit_snapshots", (("source", 'a"b\\c\nd'),)): 1})
    fam = list(text_string_to_metric_families(text))
    assert fam[0].samples[0].labels == {"source": 'a"b\\c\nd'}


@pytest.mark.parametrize(
    ("section", "key", "fragment"),
    [
        ({"textfile": "drkit.prom"}, "metrics.textfile", "absolute"),
        ({"textfile": "/var/lib/node_exporter/drkit.txt"}, "metrics.textfile", ".prom"),
        ({}, "metrics.textfile", "required"),
        ({"textfile": "/x/drkit.prom", "rpo_target": "soon"}, "metrics.rpo_target", "invalid duration"),
        ({"textfile": "/x/drkit.prom", "colour": "red"}, "metrics.colour", "not permitted"),
        ({"textfile": "/x/drkit.prom", "sources": {"etcd": {"rpo": "1h"}}}, "metrics.sources.etcd.rpo", ""),
    ],
)
def test_bad_metrics_section_names_the_key(section: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_metrics_config(section)
    assert err.value.message.startswith(f"config error: {key}: ")
    assert fragment.lower() in err.value.message.lower()
    assert "\n" not in err.value.message


def test_unknown_metric_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown drkit metric"):
        sink_at(tmp_path).record("backup", source="x", ok=True, values={"bytes_teleported": 1})
    with pytest.raises(ValueError, match="needs a source"):
        sink_at(tmp_path).record("drill", ok=True, values={"drill_rto_seconds": 1})


def test_unwritable_directory_logs_one_error_and_does_not_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                 drkit_logs: logging.Logger) -> None:
    class Cfg:
        class raw:
            metrics = {"textfile": str(tmp_path / "missing" / "drkit.prom")}

    assert record_job(Cfg, "backup", [Outcome("etcd", True, 1.0)]) is False
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "cannot write metrics file" in errors[0].getMessage() and "missing/drkit.prom" in errors[0].getMessage()
    with pytest.raises(ConfigError, match="metrics.textfile"):
        sink_at(tmp_path / "missing").record("backup", source="etcd", ok=True)


def test_track_records_unreported_sources_as_failed_on_exception(tmp_path: Path) -> None:
    class Cfg:
        class raw:
            metrics = {"textfile": str(tmp_path / "drkit.prom")}

    ticks = iter([100.0, 160.0])
    with pytest.raises(RuntimeError):
        with track(Cfg, "backup", sources=["etcd", "git"], clock=lambda: next(ticks)) as run:
            run.add("etcd", ok=True, duration=3, values={"backup_added_bytes": 5})
            raise RuntimeError("storage went away")
    fam = families(tmp_path / "drkit.prom")
    assert fam["drkit_last_success_timestamp_seconds"][(("command", "backup"), ("source", "etcd"))] == 160
    assert fam["drkit_last_failure_timestamp_seconds"][(("command", "backup"), ("source", "git"))] == 160
    assert fam["drkit_job_duration_seconds"][(("command", "backup"), ("source", "git"))] == 60

    with track(Cfg, "prune") as run:
        run.set("repository_size_bytes", 42)
    fam = families(tmp_path / "drkit.prom")
    assert fam["drkit_last_success_timestamp_seconds"][(("command", "prune"),)] > 0
    assert fam["drkit_repository_size_bytes"] == {(): 42}

    before = (tmp_path / "drkit.prom").read_text()
    with track(Cfg, "forget", enabled=False):
        pass
    assert (tmp_path / "drkit.prom").read_text() == before  # a dry run records nothing


def test_rto_budget_follows_the_drill_budget_unless_set(tmp_path: Path) -> None:
    from drkit.config import parse_config

    base = {"repository": {"url": str(tmp_path / "r")}, "drill": {"rto_budget_seconds": 1800}}
    cfg = parse_config({**base, "metrics": {"textfile": str(tmp_path / "m.prom")}})
    sink = MetricsSink.from_config(cfg)
    assert sink is not None and sink.config.targets("etcd") == (26 * 3600.0, 1800.0)
    cfg = parse_config({**base, "metrics": {"textfile": str(tmp_path / "m.prom"), "rto_budget": "1h"}})
    assert MetricsSink.from_config(cfg).config.targets("etcd")[1] == 3600.0  # type: ignore[union-attr]
    assert MetricsSink.from_config(parse_config(base)) is None


def test_metrics_off_without_section() -> None:
    assert parse_metrics_config(None) is None
    assert MetricsConfig(textfile=Path("/a/b.prom")).targets("x") == (26 * 3600.0, 4 * 3600.0)


def test_every_metric_has_help_and_a_drkit_prefix() -> None:
    for name, spec in METRICS.items():
        assert name.startswith("drkit_") and spec.help.endswith(".") and spec.type == "gauge"
        assert "job" not in spec.labels  # Prometheus owns the job label


# --- end to end through the real commands ----------------------------------------


@pytest.fixture
def repo_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(os.urandom(50_000))
    (data / "b.txt").write_text("hello\n" * 100)
    prom = tmp_path / "textfile"
    prom.mkdir()
    monkeypatch.setenv("DRKIT_PASSWORD", "metrics-test-passphrase")
    return write_config(tmp_path / "drkit.yaml", {
        "repository": {"url": str(tmp_path / "repo")},
        "sources": [{"name": "data", "type": "files", "paths": [str(data)]}],
        "metrics": {"textfile": str(prom / "drkit.prom"), "rpo_target": "1d"},
    })


def test_commands_write_metrics_end_to_end(repo_config: Path, tmp_path: Path) -> None:
    prom = tmp_path / "textfile" / "drkit.prom"
    cfg = ["-q", "-c", str(repo_config)]
    assert run_cli(cli, [*cfg, "init"]) == 0
    assert run_cli(cli, [*cfg, "backup"]) == 0
    fam = families(prom)
    assert fam["drkit_last_success_timestamp_seconds"][(("command", "backup"), ("source", "data"))] > 1e9
    assert fam["drkit_last_failure_timestamp_seconds"][(("command", "backup"), ("source", "data"))] == 0
    assert fam["drkit_backup_read_bytes"][(("source", "data"),)] == 50_000 + 600
    assert fam["drkit_backup_added_bytes"][(("source", "data"),)] >= 50_000
    assert 0 < fam["drkit_backup_stored_bytes"][(("source", "data"),)]
    assert fam["drkit_snapshots"][(("source", "data"),)] == 1
    repo = tmp_path / "repo"
    repo_bytes = sum(p.stat().st_size for p in repo.rglob("*")
                     if p.is_file() and not p.name.startswith(".")
                     and p.relative_to(repo).parts[0] in ("data", "index", "snapshots", "keys"))
    assert fam["drkit_repository_size_bytes"][()] == repo_bytes
    assert fam["drkit_rpo_target_seconds"][(("source", "data"),)] == 86400

    assert run_cli(cli, [*cfg, "backup"]) == 0
    assert families(prom)["drkit_snapshots"][(("source", "data"),)] == 2
    assert families(prom)["drkit_backup_read_bytes"][(("source", "data"),)] == 0  # unchanged files not read

    assert run_cli(cli, [*cfg, "verify", "--read-data"]) == 0
    fam = families(prom)
    assert fam["drkit_verify_ok"][(("level", "full"),)] == 1
    assert fam["drkit_verify_damaged_objects"][(("level", "full"),)] == 0
    assert fam["drkit_last_success_timestamp_seconds"][(("command", "verify"),)] > 1e9

    assert run_cli(cli, [*cfg, "forget", "--keep-last", "1", "--prune"]) == 0
    fam = families(prom)
    assert fam["drkit_snapshots"][(("source", "data"),)] == 1
    assert fam["drkit_last_success_timestamp_seconds"][(("command", "forget"),)] > 1e9
    # backup series survived the other commands
    assert fam["drkit_last_success_timestamp_seconds"][(("command", "backup"), ("source", "data"))] > 1e9

    # damage: corrupt one pack; verify --read-data fails with exit 6 and says so in the metrics
    packs = sorted(p for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file())
    assert packs
    raw = bytearray(packs[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    packs[0].write_bytes(bytes(raw))
    assert run_cli(cli, [*cfg, "verify", "--read-data"]) == 6
    fam = families(prom)
    assert fam["drkit_verify_ok"][(("level", "full"),)] == 0
    assert fam["drkit_verify_damaged_objects"][(("level", "full"),)] >= 1
    assert fam["drkit_last_failure_timestamp_seconds"][(("command", "verify"),)] > \
        fam["drkit_last_success_timestamp_seconds"][(("command", "verify"),)]


def test_failed_backup_is_recorded_per_source(repo_config: Path, tmp_path: Path) -> None:
    prom = tmp_path / "textfile" / "drkit.prom"
    # no repository: the backup fails before any source ran; the source still gets a failure
    assert run_cli(cli, ["-q", "-c", str(repo_config), "backup"]) == 3
    fam = families(prom)
    assert fam["drkit_last_failure_timestamp_seconds"][(("command", "backup"), ("source", "data"))] > 1e9
    assert fam["drkit_last_success_timestamp_seconds"][(("command", "backup"), ("source", "data"))] == 0
