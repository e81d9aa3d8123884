"""drkit.kube: where the connection comes from, and manifest helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from drkit import kube as kube_mod
from drkit.kube import (
    SECRET,
    KubeInvalid,
    connect,
    dump_manifest,
    load_manifest,
    manifest_path,
)
from tests.fakes.kube_api import start_fake_kube


def test_default_falls_back_to_the_k3s_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    running = start_fake_kube(tmp_path / "fake")
    try:
        monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kube/config
        monkeypatch.setattr(kube_mod, "K3S_KUBECONFIG", running.kubeconfig)
        from kubernetes.config import kube_config

        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", "~/.kube/config")
        with connect() as kube:
            assert kube.server == running.url
            assert kube.list(SECRET, "default") == []
    finally:
        running.stop()


def test_manifest_helpers_round_trip_and_refuse_garbage() -> None:
    obj = {"kind": "Secret", "apiVersion": "v1", "data": {"k": "dg=="}, "metadata": {"name": "s", "namespace": "n"}}
    text = dump_manifest(obj)
    assert text.decode().splitlines()[:2] == ["apiVersion: v1", "kind: Secret"]
    assert load_manifest(text) == obj
    assert manifest_path(obj) == "secrets/n/s.yaml"
    assert manifest_path({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv"}}) == \
        "persistentvolumes/pv.yaml"
    with pytest.raises(KubeInvalid, match="not a Kubernetes object"):
        load_manifest(b"- just a list")
    with pytest.raises(KubeInvalid, match="not valid YAML"):
        load_manifest(b"kind: [", name="x.yaml")


def _pod(name: str, claim: str, *, phase: str = "Running", owner: tuple[str, str] | None = None,
         labels: dict[str, str] | None = None) -> dict:
    meta: dict = {"name": name, "namespace": "apps", "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1], "uid": "u-1",
                                    "controller": True}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "c"}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]},
            "_phase": phase}


def test_pods_using_a_claim_are_named_with_their_owners(tmp_path: Path) -> None:
    from drkit.errors import Refused
    from drkit.kube import pods_using_claim, refuse_if_claim_in_use

    running = start_fake_kube(tmp_path / "fake")
    try:
        fake = running.fake
        fake.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}})
        for pod in (_pod("db-0", "data", owner=("StatefulSet", "db")),
                    _pod("web-5d8f7-x2x", "data", phase="Pending", owner=("ReplicaSet", "web-5d8f7"),
                         labels={"pod-template-hash": "5d8f7"}),
                    _pod("done", "data", phase="Succeeded", owner=("Job", "migrate")),  # terminal: mounts nothing
                    _pod("other", "logs")):
            phase = pod.pop("_phase")
            fake.seed(pod, status={"phase": phase})
        with connect(running.kubeconfig) as kube:
            users = pods_using_claim(kube, "apps", "data")
            assert [(u.pod, u.phase, u.owners) for u in users] == [
                ("db-0", "Running", ("StatefulSet db",)),
                ("web-5d8f7-x2x", "Pending", ("Deployment web (ReplicaSet web-5d8f7)",))]
            assert pods_using_claim(kube, "apps", "unused") == []
            refuse_if_claim_in_use(kube, "apps", "unused", action="replacing it")  # no pod: no error
            with pytest.raises(Refused) as err:
                refuse_if_claim_in_use(kube, "apps", "data", action="replacing it")
            assert err.value.exit_code == 9
            assert err.value.message == ("PVC apps/data is mounted by pod apps/db-0 (StatefulSet db), pod "
                                         "apps/web-5d8f7-x2x (Deployment web (ReplicaSet web-5d8f7)): not replacing it")
            assert "kubectl -n apps scale deployment/web --replicas=0" in (err.value.hint or "")
        assert [a for a in fake.mutations() if a.path.startswith("/api")] == []  # the check only reads
    finally:
        running.stop()
