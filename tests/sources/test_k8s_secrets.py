"""k8s-secrets against the FAKE API server (tests/fakes/kube_api.py), driven through the
real ``kubernetes`` client and the real repository (``drkit backup``/``restore``)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from drkit.kube import KubeAuthError, KubeUnreachable, connect
from drkit.sources import build_source
from tests.fakes.kube_api import FakeKube, write_kubeconfig
from tests.sources.kube_cli import Drkit


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def seed_cluster(fake: FakeKube) -> None:
    for ns in ("sealed", "cert-manager", "web", "apps"):
        fake.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    # sealed-secrets: an active and an old key, in a namespace found by label only
    for name, state in (("sealed-secrets-keyabcde", "active"), ("sealed-secrets-keyold01", "compromised")):
        fake.seed({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": "sealed",
                         "labels": {"sealedsecrets.bitnami.com/sealed-secrets-key": state},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "data": {"tls.crt": b64(f"CERT {name}"), "tls.key": b64(f"KEY {name}")},
        })
    # cert-manager: an issued certificate, an ACME account key named by a ClusterIssuer
    fake.seed({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "www-tls", "namespace": "web",
                     "annotations": {"cert-manager.io/certificate-name": "www", "cert-manager.io/issuer-name": "le"}},
        "data": {"tls.crt": b64("WWW CERT"), "tls.key": b64("WWW KEY")},
    })
    fake.seed({
        "apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "letsencrypt"},
        "spec": {"acme": {"server": "https://acme-v02.api.letsencrypt.org/directory",
                          "privateKeySecretRef": {"name": "letsencrypt-account-key"}, "solvers": []}},
    })
    fake.seed({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "letsencrypt-account-key", "namespace": "cert-manager"},
               "data": {"tls.key": b64("ACME ACCOUNT KEY")}})
    # noise that must not be selected: a TLS secret not from cert-manager, an app secret
    fake.seed({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": "manual-tls", "namespace": "web"},
               "data": {"tls.crt": b64("x"), "tls.key": b64("y")}})
    fake.seed({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-password", "namespace": "apps",
                                                                  "labels": {"app": "db"}},
               "data": {"password": b64("hunter2")}})


def test_default_presets_select_sealed_secrets_keys_and_cert_manager_across_namespaces(
        tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    seed_cluster(fake)
    d = Drkit.setup(tmp_path, [{"name": "secrets", "type": "k8s-secrets", "kubeconfig": str(kubeconfig)}])
    d.backup("secrets")
    meta = d.snapshot_meta("secrets")
    assert meta["objects"] == [
        "cert-manager/letsencrypt-account-key",
        "sealed/sealed-secrets-keyabcde",
        "sealed/sealed-secrets-keyold01",
        "web/www-tls",
    ]
    assert meta["counts"] == {"sealed-secrets": 2, "cert-manager-certificates": 1, "cert-manager-acme-keys": 1}
    assert meta["kubernetes_version"] == "v1.31.4+k3s1"
    assert d.latest("secrets").run_meta["kubernetes_version"] == "v1.31.4+k3s1"

    out = tmp_path / "out"
    d.restore("secrets", "--target", str(out))
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.yaml"))
    assert files == [
        "secrets/cert-manager/letsencrypt-account-key.yaml",
        "secrets/sealed/sealed-secrets-keyabcde.yaml",
        "secrets/sealed/sealed-secrets-keyold01.yaml",
        "secrets/web/www-tls.yaml",
    ]
    key = yaml.safe_load((out / "secrets/sealed/sealed-secrets-keyabcde.yaml").read_text())
    live = fake.get("Secret", "sealed", "sealed-secrets-keyabcde")
    assert key["data"] == live["data"]  # type: ignore[index]
    assert key["apiVersion"] == "v1" and key["kind"] == "Secret" and key["type"] == "kubernetes.io/tls"
    for stripped in ("uid", "resourceVersion", "creationTimestamp", "generation"):
        assert stripped not in key["metadata"]
    assert "annotations" not in key["metadata"]  # only last-applied-configuration was there
    assert key["metadata"]["labels"] == {"sealedsecrets.bitnami.com/sealed-secrets-key": "active"}
    check = d.source("secrets").check_restored(out, d.latest("secrets"))
    assert check.ok, check.problems
    (out / "secrets/web/www-tls.yaml").write_text("kind: [broken")
    check = d.source("secrets").check_restored(out, d.latest("secrets"))
    assert not check.ok and "secrets/web/www-tls.yaml is not valid YAML" in check.summary


def test_own_selection_by_namespace_and_label(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    seed_cluster(fake)
    fake.seed({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-other", "namespace": "web",
                                                                  "labels": {"app": "db"}}, "data": {}})
    src = build_source({"name": "s", "type": "k8s-secrets", "kubeconfig": str(kubeconfig), "presets": [],
                        "label_selector": "app in (db)"}, key="sources[0]")
    with connect(kubeconfig) as kube:
        found, _counts = src.select(kube)  # type: ignore[attr-defined]
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in found] == [("apps", "db-password"),
                                                                                     ("web", "db-other")]
    src2 = build_source({"name": "s", "type": "k8s-secrets", "kubeconfig": str(kubeconfig), "presets": [],
                         "namespaces": ["web"], "label_selector": "app=db"}, key="sources[0]")
    with connect(kubeconfig) as kube:
        found2, _ = src2.select(kube)  # type: ignore[attr-defined]
    assert [o["metadata"]["name"] for o in found2] == ["db-other"]


def test_restore_in_place_creates_and_replaces(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    seed_cluster(fake)
    d = Drkit.setup(tmp_path, [{"name": "secrets", "type": "k8s-secrets", "kubeconfig": str(kubeconfig)}])
    d.backup("secrets")
    original = fake.get("Secret", "sealed", "sealed-secrets-keyabcde")
    # the cluster is rebuilt: one key is gone, another was regenerated with new content,
    # the cert-manager namespace does not exist yet
    with connect(kubeconfig) as kube:
        from drkit.kube import NAMESPACE, SECRET

        kube.delete(SECRET, "sealed-secrets-keyabcde", "sealed")
        kube.merge_patch(SECRET, "www-tls", "web", {"data": {"tls.key": b64("NEW KEY")}})
        kube.delete(SECRET, "letsencrypt-account-key", "cert-manager")
        kube.delete(NAMESPACE, "cert-manager")
    result = d.restore("secrets", "--in-place")
    lines = result["lines"]
    assert "created Namespace cert-manager" in lines
    assert "created Secret sealed/sealed-secrets-keyabcde" in lines
    assert "replaced Secret web/www-tls" in lines
    assert "replaced Secret sealed/sealed-secrets-keyold01" in lines
    assert "created Secret cert-manager/letsencrypt-account-key" in lines
    restored = fake.get("Secret", "sealed", "sealed-secrets-keyabcde")
    assert restored is not None and original is not None
    assert restored["data"] == original["data"]
    assert restored["metadata"]["uid"] != original["metadata"]["uid"]  # a new object, server-assigned uid
    assert fake.get("Secret", "web", "www-tls")["data"]["tls.key"] == b64("WWW KEY")  # type: ignore[index]
    # idempotent: a second run replaces everything, creates nothing
    again = d.restore("secrets", "--in-place")["lines"]
    assert not any(line.startswith("created") for line in again)


def test_nothing_selected_is_refused(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, _ = fake_kube
    d = Drkit.setup(tmp_path, [{"name": "secrets", "type": "k8s-secrets", "kubeconfig": str(kubeconfig)}])
    err = d.fails("backup", "-s", "secrets")
    assert err.exit_code == 9
    assert "selected no Secrets" in err.message and err.hint


def test_restore_without_target_or_in_place_is_a_usage_error(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    seed_cluster(fake)
    d = Drkit.setup(tmp_path, [{"name": "secrets", "type": "k8s-secrets", "kubeconfig": str(kubeconfig)}])
    d.backup("secrets")
    err = d.fails("restore", "latest", "-s", "secrets")
    assert err.exit_code == 2


def test_connection_errors_are_one_line_drkit_errors(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, _fake = fake_kube
    bad_token = write_kubeconfig(tmp_path / "bad.yaml", yaml.safe_load(kubeconfig.read_text())["clusters"][0]
                                 ["cluster"]["server"], token="wrong")
    from drkit.kube import SECRET

    with connect(bad_token) as kube, pytest.raises(KubeAuthError) as exc:
        kube.list(SECRET)
    assert exc.value.status == 401 and "credentials" in (exc.value.hint or "")
    with pytest.raises(KubeUnreachable, match="does not exist"):
        connect(tmp_path / "missing.yaml")
    with pytest.raises(KubeUnreachable, match="cannot load"):
        connect(kubeconfig, context="nope")
    closed = write_kubeconfig(tmp_path / "closed.yaml", "http://127.0.0.1:9")
    with connect(closed) as kube, pytest.raises(KubeUnreachable, match="cannot reach"):
        kube.list(SECRET)
