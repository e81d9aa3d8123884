"""The runbooks shipped in ``runbooks/``: every one lints and plans, and ``rebuild-node``
runs end to end against a real sshd on loopback, in a temp root.

In the end-to-end test the programs that cannot run here (k3s, kubectl, helm, apt-get,
systemctl, curl, swapon/swapoff, modprobe/lsmod, sysctl, dpkg-query) are the STAND-INS
in ``tests/runbook/standins/``: they record every call and model just enough state for
the probes. Everything else is real: the SSH transport, sudo-less root login, the shell
commands, file uploads, and the data restores, which are ``drkit restore`` of real
snapshots (a SQLite datastore through the k3s-sqlite source, sealed-secrets key manifests
and a volume image through the files source) from a real repository made by ``drkit
init`` and ``drkit backup`` in the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from drkit.runbook.catalog import shipped_dirs
from drkit.runbook.journal import Journal
from tests.fixtures.k3s_layout import TOKEN as K3S_TOKEN
from tests.runbook.world import kine_rows, mutating, read_log

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "runbooks").glob("*.yaml"))
REQUIRED = {
    "rebuild-node": ["node_name=node1"],
    "restore-datastore": ["node_name=node1", "restore_tag=incident-1"],
    "restore-volume": ["namespace=apps", "pvc_name=data", "workload=deployment/app", "app=app", "restore_tag=i1"],
    "restore-git": [],
}


def test_all_four_runbooks_are_shipped_and_found():
    assert [p.stem for p in SHIPPED] == ["rebuild-node", "restore-datastore", "restore-git", "restore-volume"]
    assert REPO / "runbooks" in shipped_dirs()


def test_every_shipped_runbook_passes_lint(drkit):
    r = drkit("runbook", "lint")
    assert r.code == 0, r.text
    assert r.out.count("ok      ") == len(SHIPPED)


def test_lint_reports_a_broken_file_and_fails(tmp_path, drkit):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "runbooks" / "restore-git.yaml").read_text().replace("probe: git -C", "prob: git -C", 1))
    r = drkit("runbook", "lint", REPO / "runbooks" / "restore-git.yaml", bad)
    assert r.code == 2
    assert "ok      " in r.out
    assert f"invalid {bad}: step 'restored' (steps[0]).prob: Extra inputs are not permitted" in r.err


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_runbook_plans_and_has_a_header(path, drkit):
    args = [a for v in REQUIRED[path.stem] for a in ("--var", v)]
    r = drkit("runbook", "plan", path.stem, *args, "--json")
    assert r.code == 0, r.text
    plan = json.loads(r.out)
    assert plan["steps"] and all(s["probe"] or s["apply"] for s in plan["steps"])
    show = drkit("runbook", "show", path.stem)
    assert show.code == 0 and "When to use:" in show.out and "Needs:" in show.out


@pytest.mark.parametrize("variant", [["install_mode=airgap"], ["datastore=etcd"], ["install_mode=airgap", "datastore=etcd"]])
def test_rebuild_node_variants_plan(variant, drkit):
    args = [a for v in ["node_name=n1", *variant] for a in ("--var", v)]
    r = drkit("runbook", "plan", "rebuild-node", *args, "--json")
    assert r.code == 0, r.text
    enabled = [s["name"] for s in json.loads(r.out)["steps"] if s["enabled"]]
    if "install_mode=airgap" in variant:
        assert "k3s-airgap-files" in enabled and "k3s-install-online" not in enabled
    if "datastore=etcd" in variant:
        assert "restore-etcd" in enabled and "restore-sqlite" not in enabled and "k3s-config-etcd" in enabled
        step = next(s for s in json.loads(r.out)["steps"] if s["name"] == "restore-etcd")
        assert any("k3s server --cluster-reset --cluster-reset-restore-path=/var/lib/rancher/k3s/server/db/snapshots/drkit-restore.db" in a
                   for a in step["apply"])


def test_rebuild_node_refuses_a_bad_choice(drkit):
    r = drkit("runbook", "plan", "rebuild-node", "--var", "node_name=n1", "--var", "datastore=postgres")
    assert r.code == 2 and "variable datastore='postgres' is not one of: sqlite, etcd" in r.err


# ---- rebuild-node end to end ------------------------------------------------------------

def test_rebuild_node_end_to_end_over_ssh(node, drkit, sshd_server, monkeypatch):
    tmp, root, config = node["tmp"], node["root"], node["config"]
    assert drkit("-c", config, "init").code == 0
    backup = drkit("-c", config, "backup")
    assert backup.code == 0, backup.text
    token = K3S_TOKEN  # the original server token, as the lost node had it
    access, secret_key = "AKIA" + os.urandom(8).hex(), os.urandom(20).hex()
    monkeypatch.setenv("K3S_TOKEN", token)
    monkeypatch.setenv("LONGHORN_BACKUP_ACCESS_KEY", access)
    monkeypatch.setenv("LONGHORN_BACKUP_SECRET_KEY", secret_key)
    staging = tmp / "staging"
    volumes = tmp / "restored-volumes"
    state_dir = tmp / "journal"
    path = f"{node['bin']}:{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
    args = [
        "-c", config, "runbook", "run", "rebuild-node", "--state-dir", state_dir,
        "--target", f"{sshd_server.user}@{sshd_server.host}:{sshd_server.port}",
        "--identity", sshd_server.key_file, "--known-hosts", sshd_server.known_hosts_file,
        "--var", f"root={root}", "--var", f"path={path}", "--var", "node_name=node1",
        "--var", f"staging={staging}", "--var", "wait_delay=0.05",
        "--var", "longhorn_backup_target=s3://backups@us-east-1/",
        "--var", "longhorn_backup_endpoint=https://s3.example.net",
        "--var", f"volume_restore_args=--target {volumes} --force",
    ]
    r = drkit(*args)
    assert r.code == 0, r.text + sshd_server.log()[-2000:]
    j = Journal.latest(state_dir)
    st = {s.name: s.status for s in j.steps}
    assert st == {
        "os-supported": "ok", "swap-off": "changed", "packages": "changed", "iscsid": "changed",
        "kernel-modules-config": "changed", "kernel-modules": "changed", "sysctl-config": "changed",
        "sysctl-applied": "changed", "k3s-config": "changed", "k3s-config-etcd": "skipped",
        "k3s-install-online": "changed", "k3s-airgap-files": "skipped", "k3s-install-airgap": "skipped",
        "restore-sqlite": "changed", "restore-etcd": "skipped", "datastore-staging-removed": "changed",
        "k3s-running": "changed", "node-ready": "changed", "argocd": "changed", "sealed-secrets-keys": "changed",
        "sealed-secrets-staging-removed": "changed", "sealed-secrets-controller": "changed",
        "longhorn": "changed", "longhorn-backup-credentials": "changed", "longhorn-backup-target": "changed",
        "restore-volumes": "changed", "argocd-automation-on": "changed", "argocd-sync": "changed",
        "health-node-ready": "ok", "health-pvcs-bound": "ok", "health-apps": "ok", "cleanup-staging": "changed",
    }

    calls = read_log(node["log"])
    tmpdir = root / "var/tmp"
    patch_bt = ('{"spec":{"backupTargetURL":"s3://backups@us-east-1/","credentialSecret":"longhorn-backup-credentials",'
                '"pollInterval":"300s"}}')
    patch_app = '{"operation":{"initiatedBy":{"username":"drkit"},"sync":{}}}'
    assert mutating(calls) == [
        ["swapoff", "-a"],
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "curl", "ca-certificates", "open-iscsi", "nfs-common", "jq"],
        ["systemctl", "enable", "--now", "iscsid"],
        ["modprobe", "overlay"],
        ["modprobe", "br_netfilter"],
        ["sysctl", "--system"],
        ["curl", "-sfL", "https://get.k3s.io", "-o", f"{tmpdir}/k3s-install.sh"],
        ["k3s-install-standin", "server"],
        ["systemctl", "enable", "--now", "k3s"],
        ["kubectl", "wait", "--for=condition=Ready", "node/node1", "--timeout=600s"],
        ["helm", "upgrade", "--install", "argocd", "argo-cd", "--repo", "https://argoproj.github.io/argo-helm",
         "--version", "7.7.11", "-n", "argocd", "--create-namespace", "--set", "controller.replicas=0", "--wait",
         "--timeout", "10m"],
        ["kubectl", "create", "namespace", "kube-system", "--dry-run=client", "-o", "yaml"],
        ["kubectl", "apply", "-f", "-"],
        ["kubectl", "apply", "-R", "-f", f"{tmpdir}/drkit-sealed-secrets"],
        ["helm", "upgrade", "--install", "sealed-secrets", "sealed-secrets", "--repo",
         "https://bitnami-labs.github.io/sealed-secrets", "--version", "2.16.2", "-n", "kube-system",
         "--set", "fullnameOverride=sealed-secrets-controller", "--wait", "--timeout", "10m"],
        ["helm", "upgrade", "--install", "longhorn", "longhorn", "--repo", "https://charts.longhorn.io", "--version",
         "1.12.1", "-n", "longhorn-system", "--create-namespace", "--set", "persistence.defaultClassReplicaCount=1",
         "--set", "defaultSettings.defaultReplicaCount=1", "--wait", "--timeout", "15m"],
        ["kubectl", "apply", "-f", "-"],
        ["kubectl", "-n", "longhorn-system", "patch", "backuptargets.longhorn.io/default", "--type", "merge", "-p", patch_bt],
        ["kubectl", "wait", "--for=jsonpath={.status.available}=true", "backuptargets.longhorn.io/default",
         "-n", "longhorn-system", "--timeout=600s"],
        ["kubectl", "-n", "argocd", "scale", "statefulset/argocd-application-controller", "--replicas=1"],
        ["kubectl", "wait", "--for=jsonpath={.status.readyReplicas}=1", "statefulset/argocd-application-controller",
         "-n", "argocd", "--timeout=600s"],
        ["kubectl", "-n", "argocd", "patch", "application.argoproj.io/app1", "--type", "merge", "-p", patch_app],
        ["kubectl", "-n", "argocd", "patch", "application.argoproj.io/app2", "--type", "merge", "-p", patch_app],
    ]
    installer = next(c for c in calls if c["tool"] == "k3s-install-standin")
    assert installer["env"] == {
        "INSTALL_K3S_VERSION": "v1.31.4+k3s1", "INSTALL_K3S_SKIP_START": "true", "INSTALL_K3S_SKIP_ENABLE": "true",
        "INSTALL_K3S_SKIP_DOWNLOAD": None, "K3S_TOKEN_sha256": hashlib.sha256(token.encode()).hexdigest(),
    }

    # the datastore: the snapshot's rows, in place before K3s first started
    placed = root / "var/lib/rancher/k3s/server/db/state.db"
    assert not (placed.parent / "state.db-wal").exists()  # (before anything opens it)
    assert kine_rows(placed) == kine_rows(node["db"])
    assert stat.S_IMODE(placed.stat().st_mode) == 0o600
    world = json.loads(node["state"].read_text())
    assert world["k3s_starts"] == [{"state_db_sha256": hashlib.sha256(placed.read_bytes()).hexdigest()}]
    cfg = root / "etc/rancher/k3s/config.yaml"
    assert yaml.safe_load(cfg.read_text())["token"] == token
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    # sealed-secrets keys were in the cluster when the controller started
    assert world["sealed_secrets_keys_at_controller_start"] == ["sealed-secrets-keyabcde"]
    assert not (tmpdir / "drkit-sealed-secrets").exists()
    creds = world["objects"]["secret/longhorn-system/longhorn-backup-credentials"]["data_sha256"]
    assert creds["AWS_ACCESS_KEY_ID"] == hashlib.sha256(access.encode()).hexdigest()
    assert creds["AWS_SECRET_ACCESS_KEY"] == hashlib.sha256(secret_key.encode()).hexdigest()
    # the volume image restored from its snapshot, byte for byte
    restored = list(volumes.rglob("pvc-data.img"))
    assert len(restored) == 1 and restored[0].read_bytes() == node["image"]
    # the host
    assert "# disabled by drkit: /swap.img none swap sw 0 0" in (root / "etc/fstab").read_text()
    assert (root / "etc/sysctl.d/90-k3s.conf").read_text() == (REPO / "runbooks/templates/k3s-sysctl.conf").read_text()
    assert (root / "etc/modules-load.d/k3s.conf").read_text() == "overlay\nbr_netfilter\n"
    assert not staging.exists()
    for text in (r.out, r.err, *(p.read_text() for p in state_dir.iterdir())):
        assert token not in text and access not in text and secret_key not in text

    # second run: every probe holds, nothing is called that changes anything
    n_calls = len(calls)
    r2 = drkit(*args)
    assert r2.code == 0, r2.text
    assert "nothing changed: every step already held" in r2.out
    assert mutating(read_log(node["log"])[n_calls:]) == []
    assert kine_rows(placed) == kine_rows(node["db"])
