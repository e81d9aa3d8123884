"""argocd against the FAKE API server (tests/fakes/kube_api.py), driven through the real
``kubernetes`` client and the real repository (``drkit backup``/``restore``)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import yaml

from drkit.kube import ARGO_APPLICATION, CONFIGMAP, connect
from drkit.sources.argocd import PAUSED_ANNOTATION, pause_automated_sync
from tests.fakes.kube_api import FakeKube
from tests.sources.kube_cli import Drkit


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def app(name: str, *, automated: bool = True) -> dict:
    spec = {
        "project": "platform",
        "source": {"repoURL": "https://git.example.org/gitops.git", "path": f"apps/{name}", "targetRevision": "main"},
        "destination": {"server": "https://kubernetes.default.svc", "namespace": name},
    }
    if automated:
        spec["syncPolicy"] = {"automated": {"prune": True, "selfHeal": True}, "syncOptions": ["CreateNamespace=true"]}
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
            "metadata": {"name": name, "namespace": "argocd",
                         "finalizers": ["resources-finalizer.argocd.argoproj.io"]},
            "spec": spec, "operation": {"sync": {"revision": "abc"}}}


def seed_argocd(fake: FakeKube, ns: str = "argocd") -> None:
    fake.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    fake.seed({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "argocd-cm", "namespace": ns, "labels": {"app.kubernetes.io/part-of": "argocd"}},
               "data": {"url": "https://argocd.example.org", "admin.enabled": "false"}})
    fake.seed({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "argocd-rbac-cm", "namespace": ns},
               "data": {"policy.default": "role:readonly"}})
    fake.seed({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unrelated-cm", "namespace": ns},
               "data": {"x": "y"}})
    fake.seed({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "argocd-secret", "namespace": ns},
               "data": {"server.secretkey": b64("s3cr3t")}})
    fake.seed({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "repo-gitops", "namespace": ns,
                            "labels": {"argocd.argoproj.io/secret-type": "repository"}},
               "data": {"url": b64("https://git.example.org/gitops.git"), "password": b64("token")}})
    fake.seed({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "cluster-prod", "namespace": ns,
                            "labels": {"argocd.argoproj.io/secret-type": "cluster"}},
               "data": {"server": b64("https://prod:6443")}})
    fake.seed({"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
               "metadata": {"name": "platform", "namespace": ns},
               "spec": {"sourceRepos": ["*"], "destinations": [{"server": "*", "namespace": "*"}]}})
    fake.seed(app("grafana"))
    fake.seed(app("loki", automated=False))
    fake.seed({"apiVersion": "argoproj.io/v1alpha1", "kind": "ApplicationSet",
               "metadata": {"name": "tenants", "namespace": ns},
               "spec": {"generators": [{"list": {"elements": [{"name": "a"}]}}],
                        "template": {"metadata": {"name": "{{name}}"},
                                     "spec": {"project": "platform",
                                              "source": {"repoURL": "https://git.example.org/t.git", "path": "."},
                                              "destination": {"server": "https://kubernetes.default.svc"},
                                              "syncPolicy": {"automated": {"prune": True}}}}}})


def test_export_contents_and_target_restore(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    seed_argocd(fake)
    fake.set_status("Application", "argocd", "grafana", {"sync": {"status": "Synced"}})
    d = Drkit.setup(tmp_path, [{"name": "argocd", "type": "argocd", "kubeconfig": str(kubeconfig)}])
    d.backup("argocd")
    assert d.snapshot_meta("argocd")["counts"] == {
        "ConfigMap": 2, "Secret": 3, "AppProject": 1, "Application": 2, "ApplicationSet": 1}
    out = tmp_path / "out"
    d.restore("argocd", "--target", str(out))
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.yaml"))
    assert files == [
        "applications/argocd/grafana.yaml",
        "applications/argocd/loki.yaml",
        "applicationsets/argocd/tenants.yaml",
        "appprojects/argocd/platform.yaml",
        "configmaps/argocd/argocd-cm.yaml",
        "configmaps/argocd/argocd-rbac-cm.yaml",
        "secrets/argocd/argocd-secret.yaml",
        "secrets/argocd/cluster-prod.yaml",
        "secrets/argocd/repo-gitops.yaml",
    ]
    grafana = yaml.safe_load((out / "applications/argocd/grafana.yaml").read_text())
    assert grafana["apiVersion"] == "argoproj.io/v1alpha1" and grafana["kind"] == "Application"
    assert "status" not in grafana and "operation" not in grafana
    assert grafana["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}  # stored as it was
    assert grafana["metadata"] == {"name": "grafana", "namespace": "argocd",
                                   "finalizers": ["resources-finalizer.argocd.argoproj.io"]}
    cm = yaml.safe_load((out / "configmaps/argocd/argocd-cm.yaml").read_text())
    assert cm["data"] == {"url": "https://argocd.example.org", "admin.enabled": "false"}
    check = d.source("argocd").check_restored(out, d.latest("argocd"))
    assert check.ok, check.problems
    assert check.details["counts"]["Application"] == 2
    (out / "configmaps/argocd/argocd-cm.yaml").unlink()
    check = d.source("argocd").check_restored(out, d.latest("argocd"))
    assert not check.ok
    assert "8 manifest(s) restored, the snapshot recorded 9" in check.problems
    assert "configmaps/argocd/argocd-cm.yaml is missing" in check.problems


def test_wrong_namespace_is_refused(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    seed_argocd(fake)
    d = Drkit.setup(tmp_path, [{"name": "argocd", "type": "argocd", "kubeconfig": str(kubeconfig),
                                "namespace": "argo-cd"}])
    err = d.fails("backup", "-s", "argocd")
    assert err.exit_code == 9
    assert "no ConfigMap argocd-cm in namespace 'argo-cd'" in err.message
    assert "namespace" in (err.hint or "")


def test_in_place_restore_pauses_automated_sync(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    seed_argocd(fake)
    d = Drkit.setup(tmp_path, [{"name": "argocd", "type": "argocd", "kubeconfig": str(kubeconfig)}])
    d.backup("argocd")
    # a rebuilt cluster: Argo CD freshly installed (its own argocd-cm), no apps yet
    with connect(kubeconfig) as kube:
        for name in ("grafana", "loki"):
            kube.delete(ARGO_APPLICATION, name, "argocd")
        kube.merge_patch(CONFIGMAP, "argocd-cm", "argocd", {"data": {"url": None}})
    fake.version = {"major": "1", "minor": "32", "gitVersion": "v1.32.0+k3s1"}  # the rebuilt node is newer
    lines = d.restore("argocd", "--in-place")["lines"]
    assert lines[0] == ("warning: the snapshot was taken on Kubernetes v1.31.4+k3s1, this cluster runs "
                        "v1.32.0+k3s1: check the restored objects (API fields differ between minor versions)")
    assert lines.index("replaced ConfigMap argocd/argocd-cm") < lines.index("replaced Secret argocd/repo-gitops")
    assert lines.index("replaced AppProject argocd/platform") < lines.index(
        "created Application argocd/grafana (automated sync paused)")
    assert "created Application argocd/loki" in lines
    assert "replaced ApplicationSet argocd/tenants (automated sync paused)" in lines
    grafana = fake.get("Application", "argocd", "grafana")
    assert grafana is not None
    assert "automated" not in grafana["spec"]["syncPolicy"]
    assert grafana["spec"]["syncPolicy"]["syncOptions"] == ["CreateNamespace=true"]
    assert json.loads(grafana["metadata"]["annotations"][PAUSED_ANNOTATION]) == {"prune": True, "selfHeal": True}
    appset = fake.get("ApplicationSet", "argocd", "tenants")
    assert "automated" not in appset["spec"]["template"]["spec"]["syncPolicy"]  # type: ignore[index]
    assert fake.get("ConfigMap", "argocd", "argocd-cm")["data"]["url"] == "https://argocd.example.org"  # type: ignore[index]


def test_pause_automated_sync_is_pure_and_leaves_other_kinds() -> None:
    original = app("x")
    paused, note = pause_automated_sync(original)
    assert note == "automated sync paused"
    assert original["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert "automated" not in paused["spec"]["syncPolicy"]
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    assert pause_automated_sync(cm) == (cm, None)
    assert pause_automated_sync(app("y", automated=False))[1] is None
