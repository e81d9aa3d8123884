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
