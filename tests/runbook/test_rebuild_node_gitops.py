"""``rebuild-node-gitops`` (the fresh-cluster model) end to end on this host: the original
cluster of tests/runbook/rebuild_world.py is backed up, then a NEW, empty FAKE API stands
for the rebuilt node's cluster. Real kubectl talks to it; the helm stand-in installs what
a chart would (through the real kubectl); a small stand-in for Argo CD's application
controller marks Applications synced only while its StatefulSet has replicas, so a sync
before the data is back would show."""

from __future__ import annotations

import threading

from drkit.runbook.journal import Journal
from tests.fakes.kube_api import FakeKube
from tests.runbook.rebuild_world import SEALED_KEY, fresh_cluster, make_rebuild_world
from tests.runbook.world import mutating, read_log


def _argocd_controller(fake: FakeKube, stop: threading.Event, early: list[str]) -> None:
    """What Argo CD's application controller does for this test: an Application with a
    sync operation (or never synced) becomes Synced/Healthy, but only while the
    controller runs; a volume that did not exist when an app synced is recorded."""
    while not stop.wait(0.05):
        with fake.lock:
            ctrl = [o for k, o in fake.objects.items() if k[:2] == ("apps", "statefulsets")
                    and o["metadata"]["name"] == "argocd-application-controller"]
            if not ctrl or not ctrl[0]["spec"].get("replicas"):
                continue
            for key, app in fake.objects.items():
                if key[:2] != ("argoproj.io", "applications") or (app.get("status") or {}).get("sync"):
                    continue
                if ("", "persistentvolumeclaims", "apps", "data") not in fake.objects:
                    early.append(app["metadata"]["name"])  # would have provisioned an empty claim
                app["status"] = {"sync": {"status": "Synced"}, "health": {"status": "Healthy"}}
                app.pop("operation", None)
                fake._bump(app)


def test_gitops_model_rebuilds_a_fresh_cluster_in_order(tmp_path, drkit, monkeypatch) -> None:
    w = make_rebuild_world(tmp_path, drkit, monkeypatch)
    server = fresh_cluster(w)
    fake = server.fake
    stop, early = threading.Event(), []
    sim = threading.Thread(target=_argocd_controller, args=(fake, stop, early), daemon=True)
    sim.start()
    try:
        r = drkit("-c", w.config, "runbook", "run", "rebuild-node-gitops", "--state-dir", tmp_path / "journal",
                  "--var", f"root={w.root}", "--var", f"path={w.path}", "--var", f"staging={tmp_path / 'staging'}",
                  "--var", "wait_delay=0.1", "--var", "wait_retries=50")
        assert r.code == 0, r.text
        st = {s.name: s.status for s in Journal.latest(tmp_path / "journal").steps}
        for step in ("node-files", "k3s-unit-from-run", "argocd", "sealed-secrets-keys", "sealed-secrets-controller",
                     "volumes-restored", "argocd-state", "reconciliation-resumed"):
            assert st[step] == "changed", (step, st[step])
        assert st["longhorn"] == "ok"  # the cluster serves Longhorn's kinds: not installed again
        helm = [c for c in mutating(read_log(w.log)) if c[0] == "helm"]
        assert [c[3] for c in helm] == ["argocd", "sealed-secrets"]
        assert "controller.replicas=0" in helm[0]
        state = __import__("json").loads(w.state.read_text())
        # the run's key was in the cluster when the sealed-secrets controller was installed
        assert state["sealed_secrets_keys_in_cluster_at_controller_start"] == [f"secret/{SEALED_KEY}"]
        # the volume and its claim under the original names, with the backed-up bytes, before any app synced
        pvc = fake.get("PersistentVolumeClaim", "apps", "data")
        assert pvc is not None and pvc["status"]["phase"] == "Bound"
        pv = fake.get("PersistentVolume", None, pvc["spec"]["volumeName"])
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
        data = fake.volume_path(pv["spec"]["csi"]["volumeHandle"]).read_bytes()
        assert data[:len(w.data)] == w.data
        assert early == []
        # the Argo CD state of the run, synced once the controller was back
        apps = {a["metadata"]["name"]: a for a in fake.list("Application", "argocd")}
        assert set(apps) == {"app1", "app2"}
        assert all(a["status"]["sync"]["status"] == "Synced" for a in apps.values())
        assert apps["app1"]["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
        ctrl = fake.list("StatefulSet", "argocd")[0]
        assert ctrl["spec"]["replicas"] == 1
    finally:
        stop.set()
        sim.join(5)
        server.stop()
