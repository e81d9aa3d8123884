"""``rebuild-node`` air-gapped with embedded etcd, run on this host (no --target) in a
temp root: the k3s binary, images tarball and install script are uploaded (never
downloaded: curl must not be called), the etcd snapshot comes from a real ``drkit
restore`` and K3s is reset from it (``k3s server --cluster-reset``, a stand-in) before
its first normal start. The etcd snapshot is taken by the real k3s-etcd source from a
real etcd started for the test, and what reaches the node is checked with
``etcdctl snapshot status``."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import yaml

from drkit.runbook.journal import Journal
from tests.fixtures.k3s_layout import TOKEN as K3S_TOKEN
from tests.conftest import require_binary
from tests.runbook.world import STANDINS, mutating, read_log
from tests.servers.etcd import EtcdServer


def test_rebuild_node_airgapped_with_etcd(node, drkit, monkeypatch, etcd_server: EtcdServer):
    tmp, root, config = node["tmp"], node["root"], node["config"]
    for i in range(50):
        etcd_server.etcdctl("put", f"/registry/configmaps/default/cm{i}", f"value-{i}")
    cfg = yaml.safe_load(config.read_text())
    cfg["sources"].append({"name": "etcd-db", "type": "k3s-etcd", "endpoints": [etcd_server.client_url],
                           "config_dir": str(tmp / "noconf")})
    config.write_text(yaml.safe_dump(cfg))
    assert drkit("-c", config, "init").code == 0
    assert drkit("-c", config, "backup").code == 0
    airgap = tmp / "airgap"
    airgap.mkdir()
    binary = b"\x7fELF stand-in k3s binary " + os.urandom(1000)
    images = os.urandom(500_000)
    (airgap / "k3s").write_bytes(binary)
    (airgap / "k3s-airgap-images-arm64.tar.zst").write_bytes(images)
    (airgap / "install.sh").write_text('#!/bin/sh\n# STAND-IN install script\nexec k3s-install-standin "$@"\n')
    monkeypatch.setenv("K3S_TOKEN", K3S_TOKEN)
    staging = tmp / "staging"
    path = f"{node['bin']}:{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
    r = drkit("-c", config, "runbook", "run", "rebuild-node", "--state-dir", tmp / "journal",
              "--var", f"root={root}", "--var", f"path={path}", "--var", "node_name=node1",
              "--var", f"staging={staging}", "--var", "wait_delay=0.05", "--var", "install_mode=airgap",
              "--var", f"airgap_dir={airgap}", "--var", "arch=arm64", "--var", "datastore=etcd",
              "--var", "datastore_source=etcd-db", "--var", "restore_volumes=false")
    assert r.code == 0, r.text
    st = {s.name: s.status for s in Journal.latest(tmp / "journal").steps}
    assert {k: st[k] for k in ("k3s-install-online", "k3s-airgap-files", "k3s-install-airgap", "k3s-config-etcd",
                               "restore-sqlite", "restore-etcd", "restore-volumes", "longhorn-backup-target")} == {
        "k3s-install-online": "skipped", "k3s-airgap-files": "changed", "k3s-install-airgap": "changed",
        "k3s-config-etcd": "changed", "restore-sqlite": "skipped", "restore-etcd": "changed",
        "restore-volumes": "skipped", "longhorn-backup-target": "skipped"}

    calls = mutating(read_log(node["log"]))
    assert not any(c[0] == "curl" for c in calls)  # air-gapped: nothing downloaded
    reset = f"--cluster-reset-restore-path={root}/var/lib/rancher/k3s/server/db/snapshots/drkit-restore.db"
    key_calls = [c for c in calls if c[0] in ("k3s", "k3s-install-standin") or c[:3] == ["systemctl", "enable", "--now"]]
    assert key_calls == [
        ["systemctl", "enable", "--now", "iscsid"],
        ["k3s-install-standin", "server"],
        ["k3s", "server", "--cluster-reset", reset],
        ["systemctl", "enable", "--now", "k3s"],
    ]
    installer = next(c for c in read_log(node["log"]) if c["tool"] == "k3s-install-standin")
    assert installer["env"]["INSTALL_K3S_SKIP_DOWNLOAD"] == "true"
    assert installer["env"]["K3S_TOKEN_sha256"] == hashlib.sha256(K3S_TOKEN.encode()).hexdigest()
    world = json.loads(node["state"].read_text())
    on_node = root / "var/lib/rancher/k3s/server/db/snapshots/drkit-restore.db"
    assert world["cluster_reset_from_sha256"] == hashlib.sha256(on_node.read_bytes()).hexdigest()
    status = subprocess.run([require_binary("etcdctl"), "snapshot", "status", str(on_node), "-w", "json"],
                            check=True, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=60)
    assert json.loads(status.stdout)["totalKey"] >= 50
    k3s_bin = root / "usr/local/bin/k3s"
    assert k3s_bin.read_bytes() == binary and stat.S_IMODE(k3s_bin.stat().st_mode) == 0o755
    assert (root / "var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst").read_bytes() == images
    assert (root / "etc/rancher/k3s/config.yaml.d/10-cluster-init.yaml").read_text() == "cluster-init: true\n"
    assert (root / "var/lib/rancher/k3s/server/db/.drkit-restored").read_text() == "latest\n"
    assert STANDINS.is_dir()
