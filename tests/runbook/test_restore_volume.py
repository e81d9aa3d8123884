"""``restore-volume`` on this host with the kubectl STAND-IN as the cluster: Argo CD's
automated sync is paused (and saved), the workload scaled to zero (replicas saved), the
volume restored (a real ``drkit restore`` of a volume image; the Longhorn in-place
restore itself needs a cluster and is covered by the longhorn source's tests), the PVC
checked Bound, the workload and automated sync put back exactly as they were. A second
run with the same tag changes nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from drkit.runbook.journal import Journal
from tests.runbook.world import mutating, read_log


def test_restore_volume_pauses_restores_and_puts_everything_back(node, drkit, monkeypatch):
    tmp, config = node["tmp"], node["config"]
    assert drkit("-c", config, "init").code == 0
    assert drkit("-c", config, "backup", "--source", "longhorn").code == 0
    world = json.loads(node["state"].read_text())
    world["objects"]["deployment/apps/app"] = {"kind": "deployment", "metadata": {"name": "app", "namespace": "apps"},
                                               "spec": {"replicas": 2}, "status": {"replicas": 2, "readyReplicas": 2}}
    node["state"].write_text(json.dumps(world))
    restored = tmp / "restored"
    args = ["-c", config, "runbook", "run", "restore-volume", "--state-dir", tmp / "journal",
            "--var", "namespace=apps", "--var", "pvc_name=data", "--var", "workload=deployment/app",
            "--var", "app=app1", "--var", "restore_tag=incident-7", "--var", f"state_dir={tmp / 'rv'}",
            "--var", f"restore_args=--target {restored} --force"]
    # every step is local here: kubectl on this host's PATH is the stand-in
    monkeypatch.setenv("PATH", f"{node['bin']}:{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin")
    r = drkit(*args)
    assert r.code == 0, r.text
    assert {s.name: s.status for s in Journal.latest(tmp / "journal").steps} == {
        "argocd-app-paused": "changed", "workload-stopped": "changed", "restore-volume": "changed",
        "pvc-bound": "ok", "workload-started": "changed", "argocd-app-resumed": "changed"}
    assert mutating(read_log(node["log"])) == [
        ["kubectl", "-n", "argocd", "patch", "application", "app1", "--type", "merge",
         "-p", '{"spec":{"syncPolicy":{"automated":null}}}'],
        ["kubectl", "-n", "apps", "scale", "deployment/app", "--replicas=0"],
        ["kubectl", "-n", "apps", "scale", "deployment/app", "--replicas=2"],
        ["kubectl", "-n", "argocd", "patch", "application", "app1", "--type", "merge",
         "-p", '{"spec":{"syncPolicy":{"automated":{"prune":true,"selfHeal":true}}}}'],
    ]
    image = list(restored.rglob("pvc-data.img"))
    assert len(image) == 1 and image[0].read_bytes() == node["image"]
    objs = json.loads(node["state"].read_text())["objects"]
    assert objs["application/argocd/app1"]["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert objs["deployment/apps/app"]["spec"]["replicas"] == 2

    n = len(read_log(node["log"]))
    again = drkit(*args)
    assert again.code == 0, again.text
    assert "nothing changed: every step already held" in again.out
    assert mutating(read_log(node["log"])[n:]) == []
