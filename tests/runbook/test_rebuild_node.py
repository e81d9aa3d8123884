"""``rebuild-node`` (the datastore model) end to end, over a real sshd, against the rebuilt
node scenario of tests/runbook/rebuild_world.py: the cluster is the FAKE API (real
kubectl talks to it), the node programs that cannot run here are stand-ins, the data
restores are real ``drkit restore`` runs of ONE backup run."""

from __future__ import annotations

import hashlib
import json
import stat

import pytest

from drkit.runbook.journal import Journal
from tests.runbook.rebuild_world import ORIGINAL_UNIT, RebuildWorld, longhorn_writes, make_rebuild_world, scale_patches
from tests.runbook.world import kine_rows, mutating, read_log


@pytest.fixture
def world(tmp_path, drkit, monkeypatch) -> RebuildWorld:
    w = make_rebuild_world(tmp_path, drkit, monkeypatch)
    yield w
    w.server.stop()


def _args(w: RebuildWorld, sshd, *extra: str) -> list:
    return ["-c", w.config, "runbook", "run", "rebuild-node", "--state-dir", w.tmp / "journal",
            "--target", f"{sshd.user}@{sshd.host}:{sshd.port}", "--identity", sshd.key_file,
            "--known-hosts", sshd.known_hosts_file,
            "--var", f"root={w.root}", "--var", f"path={w.path}", "--var", f"staging={w.tmp / 'staging'}",
            "--var", "wait_delay=0.05", "--var", "wait_retries=20", *extra]


def test_rebuild_node_brings_back_the_run_with_its_volume_data(world: RebuildWorld, drkit, sshd_server) -> None:
    w, fake = world, world.fake
    start = len(fake.audit)  # what the backup did is not part of the rebuild
    r = drkit(*_args(w, sshd_server))
    assert r.code == 0, r.text + sshd_server.log()[-1500:]
    st = {s.name: s.status for s in Journal.latest(w.tmp / "journal").steps}
    assert st["node-files"] == "changed" and st["k3s-unit-from-run"] == "changed"
    assert st["restore-sqlite"] == "changed" and st["restore-etcd"] == "skipped"
    assert st["reconciliation-stopped"] == "changed" and st["workloads-scaled-down"] == "changed"
    assert st["volumes-restored"] == "changed"
    assert (st["workloads-scaled-up"], st["reconciliation-resumed"]) == ("changed", "changed")
    # the datastore restored everything: nothing is installed over it
    for step in ("argocd-present", "sealed-secrets-controller", "longhorn-present", "health-node-ready",
                 "health-claims-bound", "health-pods-running", "health-apps"):
        assert st[step] == "ok", (step, st[step])
    calls = mutating(read_log(w.log))
    assert not any(c[0] == "helm" for c in calls)
    installer = next(c for c in read_log(w.log) if c["tool"] == "k3s-install-standin")
    assert installer["env"]["INSTALL_K3S_VERSION"] == "v1.30.4+k3s1"  # the run's version

    # the node files of the run, the unit of the run over the installer's
    data_dir = w.root / str(w.layout.data_dir).lstrip("/")
    assert (data_dir / "server/token").read_bytes() == w.layout.token.read_bytes()
    assert (data_dir / "server/cred/encryption-config.json").is_file()
    assert (w.root / "etc/rancher/k3s/registries.yaml").read_bytes() == (w.layout.config_dir / "registries.yaml").read_bytes()
    unit = w.root / "etc/systemd/system/k3s.service"
    assert unit.read_text() == ORIGINAL_UNIT and stat.S_IMODE(unit.stat().st_mode) == 0o600
    # the datastore of the run, in place before K3s first started
    placed = data_dir / "server/db/state.db"
    assert kine_rows(placed) == kine_rows(w.layout.db)
    world_state = json.loads(w.state.read_text())
    assert world_state["k3s_starts"] == [{"state_db_sha256": hashlib.sha256(placed.read_bytes()).hexdigest()}]

    # the volume data is back in the claim the datastore restored: same names and UIDs
    pvc = fake.get("PersistentVolumeClaim", "apps", "data")
    pv = fake.get("PersistentVolume", None, w.volume)
    assert pvc["metadata"]["uid"] == w.uids["pvc"] and pv["metadata"]["uid"] == w.uids["pv"]
    assert pvc["spec"]["volumeName"] == w.volume and pvc["status"]["phase"] == "Bound"
    assert fake.volume_path(w.volume).read_bytes() == w.data
    assert not [d for d in fake.deleted if d[0] in ("PersistentVolumeClaim", "PersistentVolume")]
    # Argo CD and the app were at 0 while the volume was written, and are back after
    scales = scale_patches(fake)
    controller = [i for i, p in scales if "argocd-application-controller" in p]
    web = [i for i, p in scales if p.endswith("/deployments/web/scale")]
    writes = [i for i in longhorn_writes(fake) if i >= start]
    assert len(controller) == 2 and len(web) == 2 and writes
    assert controller[0] < web[0] < writes[0] and writes[-1] < web[1] < controller[1]
    ctrl = fake.list("StatefulSet", "argocd")[0]
    assert ctrl["spec"]["replicas"] == 1
    assert not [a for a in (ctrl["metadata"].get("annotations") or {}) if a.startswith("drkit.io/")]
    web_obj = next(d for d in fake.list("Deployment", "apps") if d["metadata"]["name"] == "web")
    assert web_obj["spec"]["replicas"] == 2
    assert [p["status"]["phase"] for p in fake.list("Pod", "apps")] == ["Running", "Running"]
    journal_text = (w.tmp / "journal").joinpath(Journal.latest(w.tmp / "journal").run_id + ".json").read_text()
    assert "Argo CD application controller had 1 replica(s)" in journal_text
    assert "Deployment apps/web had 2 replica(s)" in journal_text
    assert not (w.tmp / "staging").exists()

    # second run: every probe holds, nothing changes on the node or in the cluster
    n_calls, n_audit = len(read_log(w.log)), len(fake.audit)
    r2 = drkit(*_args(w, sshd_server))
    assert r2.code == 0, r2.text
    assert "nothing changed: every step already held" in r2.out
    assert mutating(read_log(w.log)[n_calls:]) == []
    assert [a for a in fake.audit[n_audit:] if a.method != "GET"] == []


def test_a_var_that_contradicts_the_run_is_refused_before_anything_runs(world: RebuildWorld, drkit, sshd_server) -> None:
    r = drkit(*_args(world, sshd_server, "--var", "k3s_version=v1.29.8+k3s1"))
    assert r.code == 9 and "older minor than the run's v1.30.4+k3s1" in r.err
    r = drkit(*_args(world, sshd_server, "--var", "datastore=etcd"))
    assert r.code == 9 and "contradicts the backup run" in r.err
    assert read_log(world.log) == [] and not (world.tmp / "journal").exists()
