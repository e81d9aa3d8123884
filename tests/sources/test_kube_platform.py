"""The three Kubernetes-facing sources together, end to end through ``drkit backup``
and ``drkit drill`` against the FAKE API server: one run, every snapshot restored and
checked semantically (manifests parse and match, the volume image passes e2fsck)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.fakes.kube_api import LONGHORN_NS, MIB, FakeKube
from tests.sources.kube_cli import Drkit
from tests.sources.test_argocd import seed_argocd
from tests.sources.test_k8s_secrets import seed_cluster
from tests.sources.test_longhorn import make_ext4, source_spec


def test_one_run_of_the_platform_sources_drills_clean(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    seed_cluster(fake)
    seed_argocd(fake)
    volume = fake.provision("apps", "data", 32 * MIB)
    make_ext4(fake, volume, tmp_path, {"db.sqlite": os.urandom(MIB)})
    blank = fake.provision("apps", "never-mounted", 8 * MIB)  # all zeros: no filesystem yet
    d = Drkit.setup(tmp_path / "drkit", [
        {"name": "secrets", "type": "k8s-secrets", "kubeconfig": str(kubeconfig)},
        {"name": "argocd", "type": "argocd", "kubeconfig": str(kubeconfig)},
        source_spec(kubeconfig, fake),
    ])
    run = json.loads(d.ok("backup", "--json").stdout)
    assert [s["source"] for s in run["snapshots"]] == ["secrets", "argocd", "vols"]
    assert len({s["run"] for s in run["snapshots"]}) == 1
    assert run["run_meta"]["kubernetes_version"] == "v1.31.4+k3s1"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    report = json.loads(d.ok("drill", "--json", "--scratch", str(scratch)).stdout)
    assert report["ok"] is True
    checks = {s["source"]: s["check"] for s in report["sources"]}
    assert checks["secrets"]["summary"] == "4 manifest(s) parse as Kubernetes objects"
    assert checks["argocd"]["summary"] == "9 manifest(s) parse as Kubernetes objects"
    assert checks["vols"]["details"] == {
        "apps/data": "ext4: e2fsck -fn clean",
        "apps/never-mounted": "ext4: no filesystem yet (never formatted), size checked",
    }
    # the drill only read: nothing changed in the cluster, no clone is left
    assert sorted(fake.volume_names()) == sorted([volume, blank])
    assert len(fake.list("Snapshot", LONGHORN_NS)) == 2
