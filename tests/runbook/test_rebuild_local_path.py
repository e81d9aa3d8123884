"""Both rebuild runbooks with a local-path claim in the backup run (#16), end to end on
the rebuild world of tests/runbook/rebuild_world.py (FAKE API over TLS, real kubectl,
stand-ins for the node's programs, real ``drkit restore`` of a real repository).

The original node's ``/`` is ``tmp/orig``; the rebuilt node's is the runbook's ``root``.
The claim's PV names ``/var/lib/rancher/k3s/storage/pvc-<uid>_apps_logs`` as the node
sees it.

- datastore model: the restored datastore brings the claim and PV back (same UIDs), the
  new disk has no directory; it must be back BEFORE K3s starts (offline, at the recorded
  path), no object touched;
- GitOps model: a fresh cluster without the claim; the claim and a Retain PV are
  created under the original names, bound, with the directory back, before Argo CD syncs.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from drkit.runbook.journal import Journal
from tests.fakes.kube_api import FakeKube
from tests.runbook.rebuild_world import fresh_cluster, make_rebuild_world
from tests.runbook.test_rebuild_node_gitops import _argocd_controller
from tests.runbook.world import mutating, read_log

STORAGE = Path("/var/lib/rancher/k3s/storage")
FILES = {"chunks/0001": os.urandom(50_000), "wal/00000001": b"wal record\n" * 100, "index.db": b"\x00" * 4096}


def _world(tmp_path: Path, drkit: Any, monkeypatch: Any) -> tuple[Any, dict[str, Any]]:
    orig = tmp_path / "orig"
    made: dict[str, Any] = {}

    def seed(fake: FakeKube) -> None:
        pv = fake.provision_local_path("apps", "logs", STORAGE, host_root=orig)
        made["pv"] = pv
        made["uid"] = fake.get("PersistentVolumeClaim", "apps", "logs")["metadata"]["uid"]
        for rel, data in FILES.items():
            p = orig / pv["spec"]["hostPath"]["path"].lstrip("/") / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)

    w = make_rebuild_world(tmp_path, drkit, monkeypatch, before_backup=seed, extra_sources=[
        {"name": "lp", "type": "local-path", "kubeconfig": str(tmp_path / "fake-kube" / "kubeconfig.yaml"),
         "host_root": str(orig), "node_name": "node-1", "poll_interval": 0.02, "bind_timeout": 5}])
    made["path"] = made["pv"]["spec"]["hostPath"]["path"]
    return w, made


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _args(w: Any, tmp_path: Path, runbook: str) -> list[Any]:
    return ["-c", w.config, "runbook", "run", runbook, "--state-dir", tmp_path / "journal",
            "--var", f"root={w.root}", "--var", f"path={w.path}", "--var", f"staging={tmp_path / 'staging'}",
            "--var", "wait_delay=0.05", "--var", "wait_retries=50",
            "--var", "local_path_restore_args=-o node=node-1"]  # the fake's node; this host is named otherwise


def test_datastore_model_puts_local_path_directories_back_before_k3s_starts(tmp_path, drkit, monkeypatch) -> None:
    w, made = _world(tmp_path, drkit, monkeypatch)
    try:
        before = {(o["kind"], o["metadata"]["name"], o["metadata"]["resourceVersion"])
                  for k in ("PersistentVolume", "PersistentVolumeClaim") for o in w.fake.list(k)}
        r = drkit(*_args(w, tmp_path, "rebuild-node"), "--var", "restore_volumes=false")
        assert r.code == 0, r.text
        journal = Journal.latest(tmp_path / "journal").steps
        names = [s.name for s in journal]
        st = {s.name: s.status for s in journal}
        assert st["local-path-dirs"] == "changed"
        assert names.index("restore-sqlite") < names.index("local-path-dirs") < names.index("k3s-running")
        # K3s was started once, after the directory was back (the stand-in logs every call in order)
        calls = mutating(read_log(w.log))
        assert ["systemctl", "enable", "--now", "k3s"] in calls
        restored = w.root / made["path"].lstrip("/")
        assert _tree(restored) == FILES
        assert restored.stat().st_mode & 0o777 == 0o777  # as the provisioner made it
        # the datastore's objects are the ones that point at it: same UIDs, nothing rewritten
        assert w.fake.get("PersistentVolumeClaim", "apps", "logs")["metadata"]["uid"] == made["uid"]
        assert {(o["kind"], o["metadata"]["name"], o["metadata"]["resourceVersion"])
                for k in ("PersistentVolume", "PersistentVolumeClaim") for o in w.fake.list(k)} == before
        assert (w.root / "var/lib/drkit/rebuild/local-path-restored").read_text().strip() == w.run_id
        # a second run changes nothing
        r = drkit(*_args(w, tmp_path, "rebuild-node"), "--var", "restore_volumes=false")
        assert r.code == 0, r.text
        assert {s.name: s.status for s in Journal.latest(tmp_path / "journal").steps}["local-path-dirs"] == "ok"
    finally:
        w.server.stop()


def test_gitops_model_precreates_local_path_claims_before_argocd_syncs(tmp_path, drkit, monkeypatch) -> None:
    w, made = _world(tmp_path, drkit, monkeypatch)
    server = fresh_cluster(w)
    fake = server.fake
    stop, early = threading.Event(), []  # a stand-in Argo CD controller: syncs only while scaled up
    sim = threading.Thread(target=_argocd_controller, args=(fake, stop, early), daemon=True)
    sim.start()
    try:
        r = drkit(*_args(w, tmp_path, "rebuild-node-gitops"))
        assert r.code == 0, r.text
        assert early == []
        journal = Journal.latest(tmp_path / "journal").steps
        names = [s.name for s in journal]
        assert {s.name: s.status for s in journal}["local-path-claims"] == "changed"
        assert names.index("local-path-claims") < names.index("argocd-state") < names.index("argocd-sync")
        pvc = fake.get("PersistentVolumeClaim", "apps", "logs")
        assert pvc is not None and pvc["status"]["phase"] == "Bound"
        pv = fake.get("PersistentVolume", None, pvc["spec"]["volumeName"])
        assert pv["metadata"]["name"] == made["pv"]["metadata"]["name"]  # the original names
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
        assert pv["spec"]["hostPath"]["path"] == made["path"]
        assert pv["spec"]["nodeAffinity"] == made["pv"]["spec"]["nodeAffinity"]
        assert _tree(w.root / made["path"].lstrip("/")) == FILES
    finally:
        stop.set()
        sim.join(5)
        server.stop()


def test_without_a_local_path_source_in_the_run_the_stage_is_skipped(tmp_path, drkit, monkeypatch) -> None:
    w = make_rebuild_world(tmp_path, drkit, monkeypatch)
    try:
        r = drkit("-c", w.config, "runbook", "plan", "rebuild-node", "--json")
        assert r.code == 0, r.text
        steps = {s["name"]: s for s in json.loads(r.out)["steps"]}
        assert steps["local-path-dirs"]["enabled"] is False
    finally:
        w.server.stop()
