"""``rebuild-node`` air-gapped with embedded etcd, run on this host (no --target) in a
temp root: the k3s binary, images tarball and install script are uploaded (never
downloaded: curl must not be called); the datastore kind (etcd), K3s version and node
name come from the backup run; the etcd snapshot of that run comes from a real ``drkit
restore`` and K3s is reset from it with the run's token file (``k3s server
--cluster-reset``, a stand-in) before its first normal start. The etcd snapshot is taken
by the real k3s-etcd source (etcdctl) from a real etcd, and what reaches the node is
checked with ``etcdctl snapshot status``."""

from __future__ import annotations

import json
import os
import stat
import subprocess

from drkit.runbook.journal import Journal
from tests.conftest import require_binary
from tests.runbook.rebuild_world import SEALED_KEY, make_rebuild_world, scale_patches
from tests.runbook.world import STANDINS, mutating, read_log
from tests.servers.etcd import EtcdServer, etcd_server  # noqa: F401,F811  (fixture: a real etcd)


def test_rebuild_node_airgapped_with_etcd(tmp_path, drkit, monkeypatch, etcd_server: EtcdServer) -> None:  # noqa: F811
    for i in range(50):
        etcd_server.etcdctl("put", f"/registry/configmaps/default/cm{i}", f"value-{i}")
    w = make_rebuild_world(tmp_path, drkit, monkeypatch, datastore="etcd", extra_sources=[
        {"name": "etcd-db", "type": "k3s-etcd", "endpoints": [etcd_server.client_url],
         "config_dir": str(tmp_path / "orig/etc/rancher/k3s"), "data_dir": str(tmp_path / "orig/var/lib/rancher/k3s")}])
    try:
        # the datastore came back without the run's sealed-secrets key, and a controller that
        # started meanwhile made its own: that key must not count
        w.fake.delete(w.fake.types[("", "secrets")], "kube-system", SEALED_KEY)
        w.fake.seed({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                     "metadata": {"name": "sealed-secrets-keynew01", "namespace": "kube-system",
                                  "labels": {"sealedsecrets.bitnami.com/sealed-secrets-key": "active"}},
                     "data": {"tls.crt": "bmV3", "tls.key": "bmV3"}})
        airgap = tmp_path / "airgap"
        airgap.mkdir()
        binary = b"\x7fELF stand-in k3s binary " + os.urandom(1000)
        images = os.urandom(500_000)
        (airgap / "k3s").write_bytes(binary)
        (airgap / "k3s-airgap-images-arm64.tar.zst").write_bytes(images)
        (airgap / "install.sh").write_text('#!/bin/sh\n# STAND-IN install script\nexec k3s-install-standin "$@"\n')
        args = ["-c", w.config, "runbook", "run", "rebuild-node", "--state-dir", tmp_path / "journal",
                "--var", f"root={w.root}", "--var", f"path={w.path}", "--var", f"staging={tmp_path / 'staging'}",
                "--var", "wait_delay=0.05", "--var", "install_mode=airgap", "--var", f"airgap_dir={airgap}",
                "--var", "arch=arm64", "--var", "datastore_source=etcd-db", "--var", "restore_volumes=false"]
        r = drkit(*args)
        assert r.code == 0, r.text
        assert "backup run: run " in r.out
        st = {s.name: s.status for s in Journal.latest(tmp_path / "journal").steps}
        assert {k: st[k] for k in ("k3s-install-online", "k3s-airgap-files", "k3s-install-airgap", "restore-sqlite",
                                   "restore-etcd", "volumes-restored")} == {
            "k3s-install-online": "skipped", "k3s-airgap-files": "changed", "k3s-install-airgap": "changed",
            "restore-sqlite": "skipped", "restore-etcd": "changed", "volumes-restored": "skipped"}

        calls = mutating(read_log(w.log))
        assert not any(c[0] in ("curl", "helm") for c in calls)  # air-gapped; nothing installed over the datastore
        data_dir = w.root / str(w.layout.data_dir).lstrip("/")
        on_node = data_dir / "server/db/snapshots/drkit-restore.db"
        key_calls = [c for c in calls if c[0] in ("k3s", "k3s-install-standin") or c[:3] == ["systemctl", "enable", "--now"]]
        assert key_calls == [
            ["systemctl", "enable", "--now", "iscsid"],
            ["k3s-install-standin", "server"],
            ["k3s", "server", "--cluster-reset", f"--cluster-reset-restore-path={on_node}",
             f"--token-file={data_dir}/server/token", f"--data-dir={data_dir}"],
            ["systemctl", "enable", "--now", "k3s"],
        ]
        installer = next(c for c in read_log(w.log) if c["tool"] == "k3s-install-standin")
        assert installer["env"]["INSTALL_K3S_SKIP_DOWNLOAD"] == "true"
        assert installer["env"]["INSTALL_K3S_VERSION"] == "v1.30.4+k3s1"  # the run's
        assert installer["env"]["K3S_TOKEN_sha256"] is None  # the token is the run's file, not typed in
        assert (data_dir / "server/token").read_bytes() == w.layout.token.read_bytes()
        world = json.loads(w.state.read_text())
        import hashlib

        assert world["cluster_reset_from_sha256"] == hashlib.sha256(on_node.read_bytes()).hexdigest()
        status = subprocess.run([require_binary("etcdctl"), "snapshot", "status", str(on_node), "-w", "json"],
                                check=True, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=60)
        assert json.loads(status.stdout)["totalKey"] >= 50
        k3s_bin = w.root / "usr/local/bin/k3s"
        assert k3s_bin.read_bytes() == binary and stat.S_IMODE(k3s_bin.stat().st_mode) == 0o755
        assert (data_dir / "agent/images/k3s-airgap-images-arm64.tar.zst").read_bytes() == images
        assert (data_dir / "server/db/.drkit-restored").read_text().strip() == w.run_id
        assert STANDINS.is_dir()
        # Argo CD and the workload mounting the Longhorn claim were stopped as soon as the API
        # answered and came back to their recorded replicas; the claim and its PV are untouched
        scales = scale_patches(w.fake)
        assert [p.rsplit("/", 3)[-2] for _, p in scales] == [
            "argocd-application-controller", "web", "web", "argocd-application-controller"]
        ctrl = w.fake.list("StatefulSet", "argocd")[0]
        web = next(d for d in w.fake.list("Deployment", "apps") if d["metadata"]["name"] == "web")
        assert ctrl["spec"]["replicas"] == 1 and web["spec"]["replicas"] == 2
        assert st["reconciliation-stopped"] == st["reconciliation-resumed"] == "changed"
        assert st["workloads-scaled-down"] == st["workloads-scaled-up"] == "changed"
        for obj in (ctrl, web):
            assert not [a for a in (obj["metadata"].get("annotations") or {}) if a.startswith("drkit.io/")]
        assert w.fake.get("PersistentVolumeClaim", "apps", "data")["metadata"]["uid"] == w.uids["pvc"]
        assert not [d for d in w.fake.deleted if d[0] in ("PersistentVolumeClaim", "PersistentVolume")]
        # the run's key is back and the controller was restarted to load it
        assert w.fake.get("Secret", "kube-system", SEALED_KEY)["data"] == {"tls.crt": "Y3J0", "tls.key": "a2V5"}
        ctrl_ss = next(d for d in w.fake.list("Deployment", "kube-system") if d["metadata"]["name"] == "sealed-secrets-controller")
        assert "kubectl.kubernetes.io/restartedAt" in ctrl_ss["spec"]["template"]["metadata"]["annotations"]
        assert st["sealed-secrets-keys"] == "changed"

        # a second run changes nothing: not on the node, not in the cluster (Argo CD is not stopped again)
        n_calls, n_audit = len(read_log(w.log)), len(w.fake.audit)
        r2 = drkit(*args)
        assert r2.code == 0, r2.text
        assert "nothing changed: every step already held" in r2.out
        assert mutating(read_log(w.log)[n_calls:]) == []
        assert [(a.method, a.path) for a in w.fake.audit[n_audit:] if a.method != "GET"] == []
    finally:
        w.server.stop()
