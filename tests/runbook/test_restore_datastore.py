"""``restore-datastore`` on this host (no --target), in a temp root: the K3s stand-ins
record the calls; the SQLite datastore comes from a real snapshot via ``drkit restore``.
The same restore tag twice changes nothing (K3s is not stopped again); a new tag
restores again."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from drkit.runbook.journal import Journal
from tests.runbook.world import kine_rows, mutating, read_log


def test_restore_datastore_replaces_the_live_db_once_per_tag(node, drkit):
    root, config, tmp = node["root"], node["config"], node["tmp"]
    assert drkit("-c", config, "init").code == 0
    assert drkit("-c", config, "backup").code == 0
    db_dir = root / "var/lib/rancher/k3s/server/db"
    db_dir.mkdir(parents=True)
    (db_dir / "state.db").write_bytes(b"corrupt " * 100)
    (db_dir / "state.db-wal").write_bytes(b"stale wal")
    world = json.loads(node["state"].read_text())
    world.update({"k3s_version": "v1.31.4+k3s1", "services": {"k3s": {"enabled": True, "active": True}}})
    world["objects"]["node//node1"] = {"kind": "node", "metadata": {"name": "node1"},
                                       "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    node["state"].write_text(json.dumps(world))
    path = f"{node['bin']}:{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
    args = ["-c", config, "runbook", "run", "restore-datastore", "--state-dir", tmp / "journal",
            "--var", f"root={root}", "--var", f"path={path}", "--var", "node_name=node1",
            "--var", f"staging={tmp / 'staging'}"]

    r = drkit(*args, "--var", "restore_tag=incident-1")
    assert r.code == 0, r.text
    assert "no --target: steps for the node run on this host" in r.out
    assert {s.name: s.status for s in Journal.latest(tmp / "journal").steps} == {
        "k3s-installed": "ok", "k3s-stopped": "changed", "restore-sqlite": "changed", "restore-etcd": "skipped",
        "k3s-running": "changed", "node-ready": "changed", "cleanup-staging": "changed"}
    assert mutating(read_log(node["log"])) == [
        ["systemctl", "stop", "k3s"],
        ["systemctl", "start", "k3s"],
        ["kubectl", "wait", "--for=condition=Ready", "node/node1", "--timeout=600s"],
    ]
    placed = db_dir / "state.db"
    assert not (db_dir / "state.db-wal").exists()
    aside = list(db_dir.glob("state.db.drkit-replaced-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"corrupt " * 100
    assert (db_dir / ".drkit-restored-incident-1").read_text() == "latest\n"
    started_on = json.loads(node["state"].read_text())["k3s_starts"][-1]["state_db_sha256"]
    assert started_on == hashlib.sha256(placed.read_bytes()).hexdigest()
    assert kine_rows(placed) == kine_rows(node["db"])

    n = len(read_log(node["log"]))
    again = drkit(*args, "--var", "restore_tag=incident-1")
    assert again.code == 0, again.text
    assert "nothing changed: every step already held" in again.out
    assert mutating(read_log(node["log"])[n:]) == []

    n = len(read_log(node["log"]))
    new = drkit(*args, "--var", "restore_tag=incident-2")
    assert new.code == 0, new.text
    assert [c[:3] for c in mutating(read_log(node["log"])[n:])] == [
        ["systemctl", "stop", "k3s"], ["systemctl", "start", "k3s"], ["kubectl", "wait", "--for=condition=Ready"]]
    assert len(list(db_dir.glob("state.db.drkit-replaced-*"))) >= 1
