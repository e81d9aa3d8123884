"""``drkit drill``: restores into scratch, semantic checks, RTO/RPO, result file and
metrics, failures that name what failed, and the no-config ``--sandbox``."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from drkit.metrics import parse_textfile
from drkit.repository.repo import Repository
from drkit.services.drill import check_files_content
from drkit.services.restore import SnapshotReader
from drkit.sources import available_types
from drkit.storage.local import LocalStorage
from tests.cli import Runner
from tests.services.conftest import damage_blob_of, flip_byte_in_a_pack, make_tree, write_config

PASS = "drill passphrase"
ENV = {"DRKIT_PASSWORD": PASS}


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _setup(tmp_path: Path, drkit: Runner, *, drill: dict[str, Any] | None = None,
           extra_sources: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    data, etc = tmp_path / "data", tmp_path / "etc"
    data.mkdir()
    etc.mkdir()
    files = make_tree(data)
    (etc / "config.yaml").write_text("a: 1\n")
    sources = [
        {"name": "data", "type": "files", "paths": [str(data)]},
        {"name": "etc", "type": "files", "paths": [str(etc)]},
    ] + (extra_sources or [])
    result_file = tmp_path / "out" / "drill.json"
    prom = tmp_path / "prom" / "drkit.prom"
    prom.parent.mkdir()
    cfg = write_config(
        tmp_path / "drkit.yaml", str(tmp_path / "repo"), sources,
        drill=drill if drill is not None else {"result_file": str(result_file)},
        metrics={"textfile": str(prom)},
    )
    assert drkit("-c", str(cfg), "init", env=ENV).code == 0
    r = drkit("-c", str(cfg), "backup", "-s", "data", "-s", "etc", env=ENV)
    assert r.code == 0, r.err
    return {"cfg": cfg, "data": data, "files": files, "result_file": result_file, "prom": prom, "repo": tmp_path / "repo"}


def test_drill_latest_reports_rto_rpo_bytes_and_publishes(tmp_path: Path, drkit: Runner) -> None:
    s = _setup(tmp_path, drkit)
    before = datetime.now(timezone.utc)
    r = drkit("-c", str(s["cfg"]), "drill", "--json", env=ENV)
    after = datetime.now(timezone.utc)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["ok"] is True
    assert set(report) >= {"ok", "repository", "host", "started", "finished", "snapshot_ref", "rto_budget_seconds",
                           "rto_seconds_total", "bytes_restored", "sources", "notes"}
    by = {x["source"]: x for x in report["sources"]}
    assert list(by) == ["data", "etc"]
    data = by["data"]
    assert set(data) >= {"source", "type", "ok", "snapshot", "snapshot_time", "run", "rto_seconds", "rpo_seconds",
                         "check_seconds", "bytes_restored", "files", "check", "failed_step", "error"}
    assert data["ok"] and data["failed_step"] is None and data["error"] is None
    assert data["bytes_restored"] == sum(len(v) for v in s["files"].values())
    assert data["files"] == len(s["files"])
    assert 0 <= data["rto_seconds"] < 30
    # RPO = drill time - snapshot time
    snap_time = _parse_time(data["snapshot_time"])
    assert (before - snap_time).total_seconds() - 1 <= data["rpo_seconds"] <= (after - snap_time).total_seconds() + 1
    assert 0 <= data["rpo_seconds"] < 60
    assert data["check"]["ok"] and "re-hashed" in data["check"]["summary"]
    assert data["check"]["details"]["files"] == len(s["files"])
    assert by["etc"]["run"] == data["run"]  # one backup run
    assert report["bytes_restored"] == data["bytes_restored"] + by["etc"]["bytes_restored"]

    # the result file holds the same document; the scratch dir is gone
    assert json.loads(s["result_file"].read_text())["sources"] == report["sources"]
    assert not any(Path(x["restored_to"] or "/nonexistent").exists() for x in report["sources"])
    series = parse_textfile(s["prom"].read_text())
    assert series[("drkit_drill_success", (("source", "data"),))] == 1.0
    assert series[("drkit_drill_rto_seconds", (("source", "data"),))] == pytest.approx(data["rto_seconds"], abs=1e-3)
    assert series[("drkit_drill_rpo_seconds", (("source", "etc"),))] >= 0

    r = drkit("-c", str(s["cfg"]), "drill", env=ENV)  # the table
    assert r.code == 0, r.err
    assert "SOURCE" in r.out and "RPO" in r.out and "RTO" in r.out
    assert "drill PASS: 2/2 source(s) restored and checked" in r.out


def test_drill_over_a_damaged_pack_fails_and_names_it(tmp_path: Path, drkit: Runner) -> None:
    s = _setup(tmp_path, drkit)
    pack = damage_blob_of(s["repo"], PASS, "data/blob.bin")
    r = drkit("-c", str(s["cfg"]), "drill", "--json", env=ENV)
    assert r.code == 6, (r.out, r.err)
    assert "restore drill failed: data (restore: " in r.err
    assert "blob.bin" in r.err
    assert f"damaged: data/{pack.parent.name}/{pack.name}: " in r.err
    report = json.loads(r.out)
    assert report["ok"] is False
    by = {x["source"]: x for x in report["sources"]}
    assert by["data"]["ok"] is False and by["data"]["failed_step"] == "restore"
    assert "blob.bin" in by["data"]["error"]
    assert by["etc"]["ok"] is True  # the other source still drilled
    assert json.loads(s["result_file"].read_text())["ok"] is False
    series = parse_textfile(s["prom"].read_text())
    assert series[("drkit_drill_success", (("source", "data"),))] == 0.0
    assert series[("drkit_drill_success", (("source", "etc"),))] == 1.0

    r = drkit("-c", str(s["cfg"]), "drill", env=ENV)
    assert r.code == 6
    assert "FAILED (restore)" in r.out and "drill FAIL: 1/2" in r.out


def test_content_check_catches_wrong_bytes_that_restore_did_not_write(tmp_path: Path, drkit: Runner) -> None:
    s = _setup(tmp_path, drkit)
    repo = Repository.open(LocalStorage(s["repo"]), PASS)
    repo.load_index()
    snap = repo.find_snapshot("latest", source="data")
    target = tmp_path / "restored"
    SnapshotReader(repo, snap, target=target).write_entries(target)
    ok = check_files_content(repo, snap, target)
    assert ok.ok, ok.problems
    base = target / str(s["data"]).lstrip("/")
    blob = base / "data/blob.bin"
    raw = bytearray(blob.read_bytes())
    raw[1_000_000] ^= 1  # same size, one bit wrong
    blob.write_bytes(bytes(raw))
    (base / "readme.txt").chmod(0o666)
    (base / "link-to-readme").unlink()
    (base / "link-to-readme").symlink_to("elsewhere")
    (base / "deep/a/b/c/d.txt").unlink()
    bad = check_files_content(repo, snap, target)
    assert not bad.ok
    joined = "\n".join(bad.problems)
    assert f"{s['data']}/data/blob.bin: content differs from the snapshot" in joined
    assert "readme.txt: mode 666" in joined
    assert "link-to-readme: symlink target differs" in joined
    assert "d.txt: missing" in joined


def test_snapshot_ref_run_and_id_and_selection_errors(tmp_path: Path, drkit: Runner) -> None:
    s = _setup(tmp_path, drkit)
    cfg = str(s["cfg"])
    first = json.loads(drkit("-c", cfg, "snapshots", "--json", env=ENV).out)
    time.sleep(1.1)
    (s["data"] / "later.txt").write_text("later\n")
    assert drkit("-c", cfg, "backup", "-s", "data", env=ENV).code == 0

    r = drkit("-c", cfg, "drill", "--json", "--snapshot", first[0]["run"][:10], env=ENV)
    assert r.code == 0, r.err
    old = json.loads(r.out)
    assert sorted(x["source"] for x in old["sources"]) == ["data", "etc"]
    assert {x["run"] for x in old["sources"]} == {first[0]["run"]}
    r = drkit("-c", cfg, "drill", "--json", "-s", "data", env=ENV)
    new = json.loads(r.out)["sources"][0]
    old_data = next(x for x in old["sources"] if x["source"] == "data")
    assert new["snapshot"] != old_data["snapshot"]
    assert old_data["rpo_seconds"] > new["rpo_seconds"]  # the older backup has the larger RPO
    assert new["bytes_restored"] == old_data["bytes_restored"] + len("later\n")

    r = drkit("-c", cfg, "drill", "--json", "--snapshot", old_data["snapshot"][:12], env=ENV)
    assert r.code == 0 and [x["snapshot"] for x in json.loads(r.out)["sources"]] == [old_data["snapshot"]]
    r = drkit("-c", cfg, "drill", "--snapshot", "abcdef0123", env=ENV)
    assert r.code == 2 and "no snapshot matches" in r.err
    r = drkit("-c", cfg, "drill", "-s", "nope", env=ENV)
    assert r.code == 2 and "no source named 'nope'" in r.err


def test_missing_snapshot_and_budget_fail_with_exit_7(tmp_path: Path, drkit: Runner) -> None:
    never = tmp_path / "never"
    never.mkdir()
    s = _setup(tmp_path, drkit, drill={"rto_budget_seconds": 0.000001},
               extra_sources=[{"name": "never", "type": "files", "paths": [str(never)]}])
    r = drkit("-c", str(s["cfg"]), "drill", "--json", env=ENV)
    assert r.code == 7, r.err
    by = {x["source"]: x for x in json.loads(r.out)["sources"]}
    assert by["never"]["failed_step"] == "snapshot" and "no snapshot" in by["never"]["error"]
    assert by["data"]["failed_step"] == "budget" and "over the RTO budget" in by["data"]["error"]
    assert by["data"]["check"]["ok"] is True  # restored and checked, only too slow
    assert "never (snapshot: no snapshot of this source" in r.err


@pytest.mark.parametrize("section, key", [
    ({"rto_budget_seconds": -1}, "drill.rto_budget_seconds"),
    ({"result_file": "relative.json"}, "drill.result_file"),
    ({"nonsense": 1}, "drill.nonsense"),
])
def test_bad_drill_config_is_a_one_line_error(tmp_path: Path, drkit: Runner, section: dict[str, Any], key: str) -> None:
    cfg = write_config(tmp_path / "c.yaml", str(tmp_path / "repo"), drill=section)
    r = drkit("-c", str(cfg), "drill", env=ENV)
    assert r.code == 2
    assert key in r.err and "Traceback" not in r.err


def test_sandbox_drill_passes(tmp_path: Path, drkit: Runner) -> None:
    etcd_expected = shutil.which("etcd") is not None or bool(os.environ.get("CI"))
    r = drkit("drill", "--sandbox", "--json", "--scratch", str(tmp_path))
    assert r.code == 0, (r.out[-3000:], r.err[-3000:])
    report = json.loads(r.out)
    assert report["ok"] is True
    names = [x["source"] for x in report["sources"]]
    node = ["k3s-node"] if {"k3s-sqlite", "k3s-node"} <= set(available_types()) else []
    assert names == ["files", "k3s-db", *node, "git"] + (["etcd"] if etcd_expected else []) + ["volume"]
    for x in report["sources"]:
        assert x["ok"] and x["check"]["ok"], x
        assert x["bytes_restored"] > 0
        assert 0 <= x["rto_seconds"] < 30 and 0 <= x["rpo_seconds"] < 120
    checks = {x["source"]: x["check"]["summary"] for x in report["sources"]}
    assert "integrity ok" in checks["k3s-db"] and "under load" in checks["k3s-db"]
    if node:
        assert "token equals the node's" in checks["k3s-node"]
        assert next(x for x in report["sources"] if x["source"] == "k3s-db")["type"] == "k3s-sqlite"
    assert "refs equal to the original" in checks["git"]
    assert "SHA-256 matches" in checks["volume"]
    if etcd_expected:
        assert "50 keys" in checks["etcd"]
    assert list(tmp_path.iterdir()) == []  # nothing left behind without --keep


def test_sandbox_human_summary_and_keep(tmp_path: Path, drkit: Runner) -> None:
    r = drkit("drill", "--sandbox", "--keep", "--scratch", str(tmp_path))
    assert r.code == 0, r.err
    assert "sandbox drill PASS" in r.out
    assert "PASS  files" in r.out and "RTO" in r.out
    (root,) = list(tmp_path.iterdir())
    result = json.loads((root / "drill-result.json").read_text())
    assert result["ok"] is True
    assert "drkit_drill_success" in (root / "drkit.prom").read_text()
    # the kept sandbox is a normal drkit setup: drill it again, damaged this time
    flip_byte_in_a_pack(root / "repo")
    r = drkit("-c", str(root / "drkit.yaml"), "drill")
    assert r.code == 6
    assert "restore drill failed:" in r.err and "FAIL" in r.out
    r = drkit("drill", "--sandbox", "--snapshot", "abc")
    assert r.code == 2 and "--sandbox makes its own sources" in r.err


def test_failed_semantic_check_is_damage_and_named(tmp_path: Path, drkit: Runner) -> None:
    from drkit.config import Environment, load_config
    from drkit.services.drill import DrillFailed, DrillOptions, run_drill
    from drkit.sources.base import CheckResult

    s = _setup(tmp_path, drkit)
    cfg = load_config(s["cfg"], Environment())
    repo = Repository.open(LocalStorage(s["repo"]), PASS)
    seen: list[Path] = []

    def wrong(restored: Path, snap: Any) -> CheckResult:
        seen.append(restored)
        assert (restored / str(s["data"]).lstrip("/") / "readme.txt").is_file()  # runs on the restored data
        return CheckResult(False, "row count 3 < 5", problems=["row count 3 < 5"])

    report = run_drill(repo, cfg.sources, DrillOptions(extra_checks={"data": wrong}, scratch_root=tmp_path))
    by = {r.source: r for r in report.results}
    assert by["data"].failed_step == "check" and not by["data"].ok
    assert by["data"].check is not None and "re-hashed" in by["data"].check.summary  # the files check still ran
    assert by["etc"].ok
    err = report.error()
    assert isinstance(err, DrillFailed) and err.exit_code == 6
    assert "data (check: " in err.message and "row count 3 < 5" in err.message
    assert seen and not seen[0].exists()  # scratch removed afterwards
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("drkit-drill-")] == []


def test_drill_waits_for_no_one_but_refuses_an_exclusive_lock(tmp_path: Path, drkit: Runner) -> None:
    s = _setup(tmp_path, drkit)
    repo = Repository.open(LocalStorage(s["repo"]), PASS)
    with repo.lock(exclusive=True, command="prune"):
        r = drkit("-c", str(s["cfg"]), "drill", env=ENV)
    assert r.code == 4 and "locked" in r.err
    series = parse_textfile(s["prom"].read_text())
    assert series[("drkit_last_failure_timestamp_seconds", (("command", "drill"),))] > 0
    with repo.lock(exclusive=False, command="backup"):  # a running backup does not stop a drill
        assert drkit("-c", str(s["cfg"]), "drill", env=ENV).code == 0


def test_damaged_manifest_fails_the_drill(tmp_path: Path, drkit: Runner) -> None:
    s = _setup(tmp_path, drkit)
    manifest = next((s["repo"] / "snapshots").iterdir())
    data = bytearray(manifest.read_bytes())
    data[-5] ^= 1
    os.chmod(manifest, 0o644)
    manifest.write_bytes(bytes(data))
    r = drkit("-c", str(s["cfg"]), "drill", "--json", env=ENV)
    assert r.code == 6, r.err
    report = json.loads(r.out)
    assert report["ok"] is False
    assert report["damaged"] == [f"snapshots/{manifest.name}: authentication failed"]
    assert f"unreadable repository objects: snapshots/{manifest.name}" in r.err


def test_sandbox_falls_back_to_files_sources_and_still_checks(tmp_path: Path, drkit: Runner,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a source type is missing, the artefact is stored as files and the sandbox's
    own checks run on it (SQLite online copy, git fsck + refs, etcd restored and started)."""
    import drkit.sandbox as sandbox

    monkeypatch.setattr(sandbox, "available_types", lambda: ["files"])
    etcd_expected = shutil.which("etcd") is not None or bool(os.environ.get("CI"))
    r = drkit("drill", "--sandbox", "--json", "--scratch", str(tmp_path))
    assert r.code == 0, (r.out[-3000:], r.err[-3000:])
    report = json.loads(r.out)
    assert report["ok"] is True
    by = {x["source"]: x for x in report["sources"]}
    assert {x["type"] for x in report["sources"]} == {"files"}
    assert "k3s-node" not in by
    assert "under load" in by["k3s-db"]["check"]["summary"] and "re-hashed" in by["k3s-db"]["check"]["summary"]
    assert "git fsck clean" in by["git"]["check"]["summary"]
    if etcd_expected:
        assert "a throwaway etcd started on the restored snapshot holds all 50 keys" in by["etcd"]["check"]["summary"]
    notes = "\n".join(report["notes"])
    assert "k3s-db: k3s-sqlite not usable" in notes and "git: git source not available" in notes
