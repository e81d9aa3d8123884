"""The rebuilt-node scenario: an original cluster backed up for real, then a node whose
disk is gone, with the restored cluster in the (FAKE) Kubernetes API.

- The cluster is the FAKE API server (tests/fakes/kube_api.py, over TLS) that Debian's
  real ``kubectl`` talks to: a Node, Argo CD (its application controller StatefulSet,
  two automated Applications), sealed-secrets (a key Secret, the controller
  Deployment), and an app Deployment (2 replicas, pods Running) mounting a Longhorn
  claim whose volume holds random bytes.
- One ``drkit backup`` run saves the original node's files (k3s-node, a real
  K3s-laid-out data dir with a SQLite datastore), the datastore, the sealed-secrets
  keys (k8s-secrets, through the API) and the volume (longhorn, drkit mode).
- Then the disk is lost: the datastore restore would bring back every object with its
  UID, so the fake keeps them, but the volume's replicas are gone (``lose_replicas``:
  faulted, no data).
- The node is a bare "Ubuntu 24.04" under a temp root; the programs that cannot run here
  (k3s, systemctl, apt-get, dpkg-query, curl, helm, swapon/swapoff, modprobe, lsmod,
  sysctl) are the STAND-INS of tests/runbook/standins (kubectl is NOT: the real one is on
  the PATH). The stand-in ``systemctl start k3s`` writes the fake's kubeconfig to
  ``/etc/rancher/k3s/k3s.yaml`` under the root, as K3s writes its own.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import yaml

from tests.conftest import require_binary
from tests.fakes.kube_api import LONGHORN_NS, MIB, FakeKube, FakeKubeServer, start_fake_kube
from tests.fixtures.k3s_layout import K3sLayout, make_k3s_layout, write_standin_k3s
from tests.runbook.world import STANDINS

VOLUME_SIZE = 8 * MIB
ORIGINAL_UNIT = ("[Unit]\nDescription=Lightweight Kubernetes\n[Service]\nType=notify\n"
                 "EnvironmentFile=-/etc/systemd/system/k3s.service.env\n"
                 "ExecStart=/usr/local/bin/k3s server '--disable=traefik' '--cluster-cidr=10.52.0.0/16'\n")
ORIGINAL_ENV = "K3S_KUBECONFIG_MODE=0600\n"
SEALED_KEY = "sealed-secrets-keyabcde"


@dataclass
class RebuildWorld:
    tmp: Path
    root: Path
    bin: Path
    log: Path
    state: Path
    config: Path
    server: FakeKubeServer
    layout: K3sLayout
    volume: str
    data: bytes
    run_id: str
    uids: dict[str, str]

    @property
    def fake(self) -> FakeKube:
        return self.server.fake

    @property
    def path(self) -> str:
        """PATH for the node's commands: stand-ins first, then the system (real kubectl)."""
        return f"{self.bin}:{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"


def _seed_cluster(fake: FakeKube) -> tuple[str, bytes]:
    fake.seed({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1", "labels": {"kubernetes.io/hostname": "node1"}}},
              status={"conditions": [{"type": "Ready", "status": "True"}]})
    for ns in ("argocd", "apps"):
        fake.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    fake.seed({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "argocd-cm", "namespace": "argocd"},
               "data": {"url": "https://argocd.example.test"}})
    fake.seed({"apiVersion": "apps/v1", "kind": "StatefulSet",
               "metadata": {"name": "argocd-application-controller", "namespace": "argocd"},
               "spec": {"replicas": 1, "serviceName": "argocd-application-controller",
                        "selector": {"matchLabels": {"app.kubernetes.io/name": "argocd-application-controller"}},
                        "template": {"metadata": {"labels": {"app.kubernetes.io/name": "argocd-application-controller"}},
                                     "spec": {"containers": [{"name": "controller", "image": "quay.io/argoproj/argocd"}]}}}})
    for app in ("app1", "app2"):
        fake.seed({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
                   "metadata": {"name": app, "namespace": "argocd"},
                   "spec": {"project": "default", "destination": {"server": "https://kubernetes.default.svc",
                                                                  "namespace": "apps"},
                            "source": {"repoURL": "https://git.example.test/gitops.git", "path": app},
                            "syncPolicy": {"automated": {"prune": True, "selfHeal": True}}},
                   "status": {"sync": {"status": "Synced"}, "health": {"status": "Healthy"}}})
    fake.seed({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": SEALED_KEY, "namespace": "kube-system",
                            "labels": {"sealedsecrets.bitnami.com/sealed-secrets-key": "active"}},
               "data": {"tls.crt": "Y3J0", "tls.key": "a2V5"}})
    fake.seed({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "sealed-secrets-controller", "namespace": "kube-system"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"name": "sealed-secrets-controller"}},
                        "template": {"metadata": {"labels": {"name": "sealed-secrets-controller"}},
                                     "spec": {"containers": [{"name": "controller", "image": "bitnami/sealed-secrets"}]}}}})
    volume = fake.provision("apps", "data", VOLUME_SIZE, labels={"app": "web"})
    data = os.urandom(VOLUME_SIZE - 4096) + b"\0" * 4096
    with open(fake.volume_path(volume), "r+b") as f:
        f.write(data)
    fake.seed({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "apps"},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "web", "image": "nginx",
                                                              "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                                              "volumes": [{"name": "data",
                                                           "persistentVolumeClaim": {"claimName": "data"}}]}}}})
    return volume, data


def _bare_node(tmp: Path, kubeconfig: Path) -> tuple[Path, Path, Path, Path]:
    root = tmp / "root"
    for d in ("etc", "var/tmp"):
        (root / d).mkdir(parents=True)
    (root / "etc/os-release").write_text('NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="24.04"\n')
    (root / "etc/fstab").write_text("UUID=abc / ext4 defaults 0 1\n/swap.img none swap sw 0 0\n")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for tool in STANDINS.iterdir():
        if tool.is_symlink() and tool.name != "kubectl":  # the real kubectl talks to the fake
            (bin_dir / tool.name).symlink_to(tool)
    log, state = tmp / "standin-calls.jsonl", tmp / "standin-state.json"
    (bin_dir / "standin.json").write_text(json.dumps({"root": str(root), "log": str(log), "state": str(state),
                                                      "node_name": "node1", "kubeconfig": str(kubeconfig)}))
    state.write_text(json.dumps({"swap": ["/swap.img file 2G 0B -2"], "objects": {}}))
    return root, bin_dir, log, state


def make_rebuild_world(tmp: Path, drkit: Any, monkeypatch: Any, *, datastore: str = "sqlite",
                       extra_sources: list[dict[str, Any]] | None = None,
                       before_backup: Callable[[FakeKube], None] | None = None) -> RebuildWorld:
    require_binary("kubectl")
    server = start_fake_kube(tmp / "fake-kube", tls=True)
    fake = server.fake
    volume, data = _seed_cluster(fake)
    if before_backup is not None:  # more of the original cluster (e.g. local-path claims)
        before_backup(fake)
    # the original node, its files and datastore; its k3s says v1.30.4+k3s1
    layout = make_k3s_layout(tmp / "orig", datastore=datastore, secrets_encryption=True)
    k3s_bin = tmp / "orig-bin"
    write_standin_k3s(k3s_bin, version="v1.30.4+k3s1")
    monkeypatch.setenv("PATH", f"{k3s_bin}:{os.environ['PATH']}")
    (tmp / "passphrase").write_text("correct horse battery staple\n")
    (tmp / "passphrase").chmod(0o600)
    orig_unit = tmp / "orig/etc/systemd/system/k3s.service"
    orig_unit.parent.mkdir(parents=True)
    orig_unit.write_text(ORIGINAL_UNIT)
    (orig_unit.parent / "k3s.service.env").write_text(ORIGINAL_ENV)
    kube = {"kubeconfig": str(server.kubeconfig)}
    sources: list[dict[str, Any]] = [
        {"name": "k3s-node", "type": "k3s-node", "data_dir": str(layout.data_dir), "config_dir": str(layout.config_dir),
         "unit_file": str(orig_unit), "unit_env_file": str(orig_unit.parent / "k3s.service.env"),
         "default_env_file": str(tmp / "orig/etc/default/k3s"), "sysconfig_env_file": str(tmp / "orig/etc/sysconfig/k3s"),
         "node_password_file": str(tmp / "orig/etc/rancher/node/password")},
    ]
    if datastore == "sqlite":
        sources.append({"name": "k3s-db", "type": "k3s-sqlite", "path": str(layout.db),
                        "config_dir": str(layout.config_dir)})
    sources += [
        {"name": "sealed-secrets-keys", "type": "k8s-secrets", "presets": ["sealed-secrets"], **kube},
        {"name": "argocd", "type": "argocd", **kube},
        {"name": "longhorn", "type": "longhorn", **kube, "device_dir": str(fake.device_dir), "poll_interval": 0.02,
         "snapshot_timeout": 10, "clone_timeout": 10, "attach_timeout": 10, "backup_timeout": 10},
        *(extra_sources or []),
    ]
    config = tmp / "drkit.yaml"
    config.write_text(yaml.safe_dump({"repository": {"url": str(tmp / "repo"), "password_file": str(tmp / "passphrase")},
                                      "sources": sources}))
    config.chmod(0o600)
    assert drkit("-c", config, "init").code == 0
    r = drkit("-c", config, "backup", "--json")
    assert r.code == 0, r.text
    run_id = json.loads(r.out)["run"]
    # the disk is gone: the datastore brings the objects back, the volume data is not there
    uids = {"pvc": fake.get("PersistentVolumeClaim", "apps", "data")["metadata"]["uid"],
            "pv": fake.get("PersistentVolume", None, volume)["metadata"]["uid"]}
    fake.lose_replicas(volume)
    assert fake.volume_path(volume).read_bytes() != data
    root, bin_dir, log, state = _bare_node(tmp, server.kubeconfig)
    return RebuildWorld(tmp, root, bin_dir, log, state, config, server, layout, volume, data, run_id, uids)


def fresh_cluster(w: RebuildWorld) -> FakeKubeServer:
    """A NEW cluster for the GitOps model: an empty FAKE API (its node Ready, Longhorn's
    kinds served) behind the kubeconfig path the drkit config and the stand-ins use."""
    import shutil

    w.server.stop()
    base = w.server.kubeconfig.parent
    for gone in ("state", "dev"):  # the old disk, its volumes and devices
        shutil.rmtree(base / gone)
    server = start_fake_kube(base, tls=True)  # same kubeconfig path and device dir as in the drkit config
    server.fake.seed({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"}},
                     status={"conditions": [{"type": "Ready", "status": "True"}]})
    return server


def scale_patches(fake: FakeKube) -> list[tuple[int, str]]:
    """(audit index, path) of every write to a scale subresource."""
    return [(i, a.path) for i, a in enumerate(fake.audit) if a.method in ("PATCH", "PUT") and "/scale" in a.path]


def longhorn_writes(fake: FakeKube) -> list[int]:
    """Audit indexes of writes to Longhorn objects (what a volume restore does)."""
    return [i for i, a in enumerate(fake.audit)
            if a.method in ("POST", "PUT", "PATCH", "DELETE") and "/apis/longhorn.io/" in a.path
            and f"/namespaces/{LONGHORN_NS}/" in a.path]
