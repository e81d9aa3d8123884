"""Runbook inputs from ONE backup run: token, secrets-encryption, K3s version, node name
and datastore kind come from the run's metadata; a --var (or token) that contradicts the
run is refused with the reason; `drkit restore run:ID` restores that run's snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.fixtures.k3s_layout import TOKEN, make_k3s_layout, write_standin_k3s

RUNBOOK = """\
description: Prints what it would rebuild from (test runbook).
when_to_use: tests
backup_run:
  variable: run
  require: [k3s-node, k3s-sqlite]
  facts:
    k3s_version: {key: k3s_version, newer: true}
    secrets_encryption: secrets_encryption
    node_name: node_name
    datastore: datastore
  token_secret: K3S_TOKEN
variables:
  out: ""
  run: latest
  k3s_version: v0.0.0
  secrets_encryption: {default: "false", choices: ["true", "false"]}
  node_name: unset
  datastore: {default: sqlite, choices: [sqlite, etcd, external]}
secrets:
  K3S_TOKEN: {env: K3S_TOKEN}
defaults: {target: local}
steps:
  - name: show
    apply: >-
      printf '%s\\n' run={{ run }} k3s_version={{ k3s_version }} secrets_encryption={{ secrets_encryption }}
      node_name={{ node_name }} datastore={{ datastore }} > {{ out | q }}
"""


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drkit):
    layout = make_k3s_layout(tmp_path / "node", secrets_encryption=True)
    bin_dir = tmp_path / "bin"
    write_standin_k3s(bin_dir, version="v1.30.4+k3s1")
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:/bin")
    (tmp_path / "pass").write_text("a passphrase for the run-facts tests\n")
    config = tmp_path / "drkit.yaml"
    config.write_text(yaml.safe_dump({
        "repository": {"url": str(tmp_path / "repo"), "password_file": str(tmp_path / "pass")},
        "sources": [
            {"name": "k3s-node", "type": "k3s-node", "data_dir": str(layout.data_dir),
             "config_dir": str(layout.config_dir)},
            {"name": "k3s-db", "type": "k3s-sqlite", "path": str(layout.db), "config_dir": str(layout.config_dir)},
        ]}))
    config.chmod(0o600)
    assert drkit("-c", config, "init").code == 0
    runs = []
    for _ in range(2):
        r = drkit("-c", config, "backup", "--json")
        assert r.code == 0, r.text
        runs.append(json.loads(r.out)["run"])
        layout.token.write_text(TOKEN + "\n")  # same token, second run
    books = tmp_path / "books"
    books.mkdir()
    (books / "show-run.yaml").write_text(RUNBOOK)
    out = tmp_path / "out.txt"

    def run(*extra: str):
        return drkit("-c", config, "runbook", "run", "show-run", "--runbooks-dir", books,
                     "--state-dir", tmp_path / "journal", "--var", f"out={out}", *extra)

    return {"run": run, "out": out, "runs": runs, "config": config, "layout": layout, "tmp": tmp_path}


def _shown(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().split())


def test_facts_come_from_the_latest_run(world) -> None:
    r = world["run"]()
    assert r.code == 0, r.text
    assert _shown(world["out"]) == {"run": world["runs"][1], "k3s_version": "v1.30.4+k3s1",
                                    "secrets_encryption": "true", "node_name": "node1", "datastore": "sqlite"}
    assert f"backup run: run {world['runs'][1][:8]}" in r.out


def test_an_earlier_run_by_id(world) -> None:
    r = world["run"]("--var", f"run={world['runs'][0][:10]}")
    assert r.code == 0, r.text
    assert _shown(world["out"])["run"] == world["runs"][0]


@pytest.mark.parametrize("var, why", [
    ("secrets_encryption=false", "contradicts the backup run"),
    ("datastore=etcd", "contradicts the backup run"),
    ("node_name=other", "contradicts the backup run"),
    ("k3s_version=v1.29.9+k3s1", "older minor than the run's v1.30.4+k3s1"),
])
def test_a_var_that_contradicts_the_run_is_refused(world, var: str, why: str) -> None:
    r = world["run"]("--var", var)
    assert r.code == 9, r.text
    assert why in r.err
    assert not world["out"].exists()


def test_a_newer_k3s_patch_or_minor_may_be_chosen(world) -> None:
    for version in ("v1.30.9+k3s1", "v1.31.2+k3s1"):
        r = world["run"]("--var", f"k3s_version={version}")
        assert r.code == 0, r.text
        assert _shown(world["out"])["k3s_version"] == version


def test_a_token_that_is_not_the_runs_is_refused(world, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K3S_TOKEN", "K10aaaa::server:not-the-original")
    r = world["run"]()
    assert r.code == 9 and "is not the server token of backup run" in r.err
    assert "not-the-original" not in r.text
    monkeypatch.setenv("K3S_TOKEN", TOKEN.split("::server:")[1])  # the short form of the right token
    assert world["run"]().code == 0


def test_without_a_config_run_refuses_and_plan_shows_defaults(world, drkit, tmp_path: Path) -> None:
    books = tmp_path / "books"
    r = drkit("runbook", "run", "show-run", "--runbooks-dir", books, "--state-dir", tmp_path / "j2",
              "--var", f"out={world['out']}")
    assert r.code == 2 and "from a backup run" in r.err
    p = drkit("runbook", "plan", "show-run", "--runbooks-dir", books, "--var", "out=/x", "--json")
    assert p.code == 0 and json.loads(p.out)["variables"]["k3s_version"] == "v0.0.0"
    p2 = drkit("-c", world["config"], "runbook", "plan", "show-run", "--runbooks-dir", books, "--var", "out=/x",
               "--json")
    assert p2.code == 0 and json.loads(p2.out)["variables"]["k3s_version"] == "v1.30.4+k3s1"


def test_restore_run_id_restores_that_runs_snapshot(world, drkit) -> None:
    layout = world["layout"]
    first = world["runs"][0]
    target = world["tmp"] / "node-files"
    r = drkit("-c", world["config"], "restore", f"run:{first[:12]}", "--source", "k3s-node", "--target", target,
              "--json")
    assert r.code == 0, r.text
    snaps = json.loads(drkit("-c", world["config"], "snapshots", "--json").out)
    want = next(s for s in snaps if s["run"] == first and s["source"] == "k3s-node")
    assert json.loads(r.out)["snapshot"] == want["id"]
    assert (target / "data/server/token").read_bytes() == layout.token.read_bytes()
    bad = drkit("-c", world["config"], "restore", "run:ffffffff", "--source", "k3s-node", "--target", target)
    assert bad.code == 2 and "no snapshot matches" in bad.err


def test_latest_run_is_never_one_dated_in_the_future() -> None:
    from drkit.repository.snapshot import Snapshot
    from drkit.services.backup_run import resolve_run

    def snap(run: str, time: str, source: str) -> Snapshot:
        return Snapshot(id=run + source, time=time, source=source, source_type="k3s-node", run=run, host="h", tree=[])

    class Repo:
        def list_snapshots(self, on_error=None):  # noqa: ANN001, ANN202
            return [snap("a" * 32, "2026-01-01T00:00:00Z", "k3s-node"), snap("f" * 32, "2099-01-01T00:00:00Z", "k3s-node")]

    assert resolve_run(Repo(), "latest", require_types=["k3s-node"]).run_id == "a" * 32  # type: ignore[arg-type]
    assert resolve_run(Repo(), "fff", require_types=["k3s-node"]).run_id == "f" * 32  # type: ignore[arg-type]
