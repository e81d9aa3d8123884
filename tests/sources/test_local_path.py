"""local-path against the FAKE API server (tests/fakes/kube_api.py) with the real
``kubernetes`` client, real directories in a temp root and the real repository
(``drkit backup`` / ``restore`` / ``drill`` through the CLI).

The fake plays K3s's local-path provisioner (``provision_local_path``): a bound claim,
a PV ``pvc-<uid>`` with ``hostPath`` (or ``local``) ``<root>/pvc-<uid>_<ns>_<claim>``,
node affinity, reclaim policy Delete, and the directory itself.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from drkit.errors import EXIT_PARTIAL, EXIT_REFUSED, EXIT_USAGE
from drkit.kube import PV, PVC, connect
from drkit.sources import build_source
from drkit.sources.local_path import LocalPathSource
from tests.fakes.kube_api import FakeKube
from tests.sources.kube_cli import Drkit

FILES = {
    "app.db": os.urandom(300_000),
    "logs/0001.log": b"line one\nline two\n",
    "logs/empty": b"",
    "config/settings.yaml": b"retention: 7d\n",
}


def spec(kubeconfig: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "lp", "type": "local-path", "kubeconfig": str(kubeconfig), "poll_interval": 0.02,
            "bind_timeout": 5, "node_name": "node-1", **extra}  # the fake's node is this host


def fill(directory: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = directory / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def tree(directory: Path) -> dict[str, bytes]:
    """Every regular file under *directory* (relative path -> bytes)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def pv_path(pv: dict[str, Any]) -> Path:
    spec_ = pv["spec"]
    return Path((spec_.get("hostPath") or spec_.get("local"))["path"])


@pytest.fixture
def cluster(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> tuple[Path, FakeKube, Path]:
    """The fake with the local-path provisioner installed; volumes under ``tmp/storage``."""
    kubeconfig, fake = fake_kube
    storage = tmp_path / "node" / "var/lib/rancher/k3s/storage"
    storage.mkdir(parents=True)
    fake.install_local_path(storage)
    return kubeconfig, fake, storage


@pytest.fixture
def app(tmp_path: Path, cluster: tuple[Path, FakeKube, Path]) -> tuple[Path, FakeKube, Path, dict[str, Any], Drkit]:
    """One claim apps/data with FILES (and a symlink), a configured drkit."""
    kubeconfig, fake, storage = cluster
    pv = fake.provision_local_path("apps", "data", storage, labels={"app": "db"})
    fill(pv_path(pv), FILES)
    os.symlink("config/settings.yaml", pv_path(pv) / "current")
    (pv_path(pv) / "config").chmod(0o750)
    d = Drkit.setup(tmp_path / "drkit", [spec(kubeconfig)])
    return kubeconfig, fake, storage, pv, d


def test_claims_resolve_to_directories_through_their_pvs_hostpath_and_local(cluster: tuple) -> None:
    kubeconfig, fake, storage = cluster
    host = fake.provision_local_path("apps", "data", storage, labels={"backup": "yes"})
    local = fake.provision_local_path("monitoring", "loki-0", storage, volume_type="local")
    fake.provision("apps", "db-longhorn", 4 * 1024 * 1024, attach=False)  # another class: not ours
    fake.seed({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "later", "namespace": "apps"},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                        "storageClassName": "local-path"}})  # WaitForFirstConsumer: not bound yet
    source = build_source(spec(kubeconfig), key="sources[0]")
    assert isinstance(source, LocalPathSource)
    with connect(kubeconfig) as kube:
        selected, skipped = source.select(kube)
    got = {c.ref: (c.path, c.volume_type, c.pv["metadata"]["name"]) for c in selected}
    assert got == {
        "apps/data": (str(pv_path(host)), "hostPath", host["metadata"]["name"]),
        "monitoring/loki-0": (str(pv_path(local)), "local", local["metadata"]["name"]),
    }
    uid = fake.get("PersistentVolumeClaim", "apps", "data")["metadata"]["uid"]
    assert got["apps/data"][0] == str(storage / f"pvc-{uid}_apps_data")
    assert skipped == ["claim apps/later is not bound to a PV yet (the provisioner makes its directory when a pod "
                       "first uses it)"]
    assert selected[0].record()["node"] == fake.node_id
    # label selector and namespaces narrow the choice; a named claim of another kind is an error
    narrowed = build_source(spec(kubeconfig, label_selector="backup=yes"), key="s")
    only_ns = build_source(spec(kubeconfig, namespaces=["monitoring"]), key="s")
    wrong = build_source(spec(kubeconfig, claims=["apps/db-longhorn"]), key="s")
    with connect(kubeconfig) as kube:
        assert [c.ref for c in narrowed.select(kube)[0]] == ["apps/data"]  # type: ignore[attr-defined]
        assert [c.ref for c in only_ns.select(kube)[0]] == ["monitoring/loki-0"]  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="claim apps/db-longhorn .* is neither a hostPath nor a local volume"):
            wrong.select(kube)  # type: ignore[attr-defined]


def test_backup_records_cleaned_manifests_and_target_restore_gives_the_bytes_back(tmp_path: Path, app: tuple) -> None:
    kubeconfig, fake, storage, pv, d = app
    snap = d.backup("lp")
    assert snap["stats"]["files_new"] == len(FILES)
    (rec,) = d.snapshot_meta("lp")["claims"]
    pvc = fake.get("PersistentVolumeClaim", "apps", "data")
    assert (rec["namespace"], rec["claim"], rec["uid"], rec["pv"]) == ("apps", "data", pvc["metadata"]["uid"],
                                                                       pv["metadata"]["name"])
    assert (rec["path"], rec["volume_type"], rec["node"], rec["saved"]) == (str(pv_path(pv)), "hostPath", "node-1", True)
    assert (rec["files"], rec["bytes"]) == (len(FILES), sum(map(len, FILES.values())))
    # cleaned as for Longhorn: no uid/resourceVersion/status, no claimRef uid
    assert "uid" not in rec["pvc_manifest"]["metadata"] and "status" not in rec["pvc_manifest"]
    assert "resourceVersion" not in rec["pv_manifest"]["metadata"]
    assert "uid" not in rec["pv_manifest"]["spec"]["claimRef"]
    assert rec["pv_manifest"]["spec"]["hostPath"]["path"] == str(pv_path(pv))

    out = tmp_path / "out"
    d.restore("lp", "--target", str(out))
    assert tree(out / "apps/data") == FILES
    assert os.readlink(out / "apps/data/current") == "config/settings.yaml"
    assert stat.S_IMODE((out / "apps/data/config").stat().st_mode) == 0o750
    assert stat.S_IMODE((out / "apps/data").stat().st_mode) == 0o777  # as the provisioner made it
    # a second run reads nothing unchanged again
    again = d.backup("lp")
    assert again["bytes_read"] < 1000


def test_backup_while_a_writer_appends_saves_a_prefix_of_each_file(tmp_path: Path, app: tuple) -> None:
    """A real writer process appends numbered records during the backup: the saved
    log is a prefix of the final file (never bytes that were not there), longer than
    the file was when the writer started, and the snapshot says it changed while read."""
    kubeconfig, fake, storage, pv, d = app
    log = pv_path(pv) / "logs/append.log"
    log.write_bytes(b"".join(b"%09d\n" % i for i in range(400_000)))  # 4 MB: reading it takes a while
    started_size = log.stat().st_size
    stop = tmp_path / "stop-writer"
    ready = tmp_path / "writer-ready"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "log, stop, ready = sys.argv[1:]\n"
        "fd = os.open(log, os.O_WRONLY | os.O_APPEND)\n"
        "i = 400000\n"
        "open(ready, 'w').close()\n"
        "while not os.path.exists(stop):\n"
        "    for _ in range(200):\n"
        "        os.write(fd, b'%09d\\n' % i); i += 1\n"
        "    time.sleep(0.001)\n"
        "for _ in range(200):\n"
        "    os.write(fd, b'%09d\\n' % i); i += 1\n"  # and some more after the backup ended
    ), str(log), str(stop), str(ready)])
    try:
        while not ready.exists():
            assert writer.poll() is None
        d.backup("lp")
    finally:
        stop.touch()
        writer.wait(timeout=30)
    final = log.read_bytes()
    out = tmp_path / "out"
    d.restore("lp", "--target", str(out))
    saved = (out / "apps/data/logs/append.log").read_bytes()
    assert started_size < len(saved) < len(final)
    assert final.startswith(saved)
    whole = saved[: len(saved) - len(saved) % 10]
    assert whole == b"".join(b"%09d\n" % i for i in range(len(whole) // 10))
    (rec,) = d.snapshot_meta("lp")["claims"]
    assert "apps/data/logs/append.log" in rec["changed_while_read"]
    assert "apps/data/app.db" not in rec["changed_while_read"]
    assert tree(out / "apps/data")["app.db"] == FILES["app.db"]


def test_in_place_is_refused_while_a_pod_mounts_the_claim(tmp_path: Path, app: tuple) -> None:
    kubeconfig, fake, storage, pv, d = app
    d.backup("lp")
    shutil.rmtree(pv_path(pv))
    pv_path(pv).mkdir()
    fake.add_pod("apps", "db-0", ["data"], owner=("StatefulSet", "db"))
    fake.add_pod("apps", "migrate-x1", ["data"], phase="Succeeded")  # finished: does not count
    err = d.fails("restore", "latest", "-s", "lp", "--in-place")
    assert err.exit_code == EXIT_REFUSED
    assert err.message == ("PVC apps/data is mounted by pod apps/db-0 (StatefulSet db): not restoring its directory "
                           "under a running workload")
    assert "kubectl -n apps scale statefulset/db --replicas=0" in (err.hint or "")
    assert list(pv_path(pv).iterdir()) == []  # nothing written
    assert fake.get("PersistentVolumeClaim", "apps", "data") is not None and not fake.deleted


def test_in_place_over_a_directory_with_data_needs_force_and_keeps_the_old_one(tmp_path: Path, app: tuple) -> None:
    kubeconfig, fake, storage, pv, d = app
    d.backup("lp")
    (pv_path(pv) / "app.db").write_bytes(b"corrupted by the app")
    err = d.fails("restore", "latest", "-s", "lp", "--in-place")
    assert err.exit_code == EXIT_REFUSED and "is not empty: not overwriting it" in err.message
    assert (pv_path(pv) / "app.db").read_bytes() == b"corrupted by the app"
    res = d.restore("lp", "--in-place", "--force")
    assert tree(pv_path(pv)) == FILES
    (aside,) = [p for p in storage.iterdir() if ".drkit-replaced-" in p.name]
    assert (aside / "app.db").read_bytes() == b"corrupted by the app"
    assert any(f"moved the existing {pv_path(pv)} aside to {aside}" in line for line in res["lines"])
    assert not [p for p in storage.iterdir() if p.name.startswith(".drkit-restore-")]  # no staging left


def test_restore_to_a_new_namespace_creates_a_bound_retain_pv_at_a_new_directory(tmp_path: Path, app: tuple) -> None:
    kubeconfig, fake, storage, pv, d = app
    d.backup("lp")
    (pv_path(pv) / "app.db").write_bytes(b"the original goes on")
    res = d.restore("lp", "--namespace", "apps-copy")
    pvc = fake.get("PersistentVolumeClaim", "apps-copy", "data")
    assert pvc is not None and pvc["status"]["phase"] == "Bound"
    new_pv = fake.get("PersistentVolume", None, pvc["spec"]["volumeName"])
    assert new_pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert new_pv["status"]["phase"] == "Bound"
    assert new_pv["spec"]["claimRef"]["uid"] == pvc["metadata"]["uid"]
    assert new_pv["spec"]["nodeAffinity"] == pv["spec"]["nodeAffinity"]
    assert new_pv["spec"]["hostPath"]["type"] == "DirectoryOrCreate"
    assert new_pv["spec"]["storageClassName"] == pvc["spec"]["storageClassName"] == "local-path"
    assert "pv.kubernetes.io/provisioned-by" not in new_pv["metadata"].get("annotations", {})
    assert pvc["metadata"]["labels"] == {"app": "db"}
    new_dir = pv_path(new_pv)
    assert new_dir.parent == storage  # from local-path-config
    assert new_dir.name == f"{new_pv['metadata']['name']}_apps-copy_data"
    assert tree(new_dir) == FILES
    assert (pv_path(pv) / "app.db").read_bytes() == b"the original goes on"  # the original is untouched
    assert [c["claim"] for c in res["details"]["claims"]] == ["apps/data"]
    # a second restore into the same namespace is refused: the claim exists
    err = d.fails("restore", "latest", "-s", "lp", "--namespace", "apps-copy")
    assert err.exit_code == EXIT_REFUSED and err.message == "claim apps-copy/data exists: not touching it"


def test_restore_of_a_local_volume_to_a_new_namespace_keeps_it_local(tmp_path: Path, cluster: tuple) -> None:
    kubeconfig, fake, storage = cluster
    pv = fake.provision_local_path("monitoring", "loki-0", storage, volume_type="local")
    fill(pv_path(pv), {"chunks/a": b"A" * 5000})
    d = Drkit.setup(tmp_path / "drkit", [spec(kubeconfig)])
    d.backup("lp")
    d.restore("lp", "--namespace", "loki-drill")
    pvc = fake.get("PersistentVolumeClaim", "loki-drill", "loki-0")
    new_pv = fake.get("PersistentVolume", None, pvc["spec"]["volumeName"])
    assert "hostPath" not in new_pv["spec"] and new_pv["spec"]["local"]["path"].startswith(str(storage) + "/")
    assert pvc["status"]["phase"] == "Bound" and new_pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert tree(pv_path(new_pv)) == {"chunks/a": b"A" * 5000}


def test_rebuilt_node_objects_back_directories_missing_ends_with_same_uids_and_bytes(tmp_path: Path,
                                                                                   cluster: tuple) -> None:
    """Datastore model: the restored datastore brought the claims and PVs back (same
    UIDs), the new disk has no directories. The restore puts them back where the PVs
    point, touching no object."""
    kubeconfig, fake, storage = cluster
    data = fake.provision_local_path("apps", "data", storage)
    loki = fake.provision_local_path("monitoring", "loki-0", storage, volume_type="local")
    fill(pv_path(data), FILES)
    fill(pv_path(loki), {"index/x": os.urandom(70_000), "wal/00000001": b"w" * 1000})
    want = {"apps/data": tree(pv_path(data)), "monitoring/loki-0": tree(pv_path(loki))}
    uids = {ref: fake.get("PersistentVolumeClaim", *ref.split("/"))["metadata"]["uid"] for ref in want}
    d = Drkit.setup(tmp_path / "drkit", [spec(kubeconfig)])
    d.backup("lp")
    shutil.rmtree(storage)  # the new disk
    objects_before = {(k, o["metadata"]["resourceVersion"]) for k in ("PersistentVolume", "PersistentVolumeClaim")
                      for o in fake.list(k)}
    err = d.fails("restore", "latest", "-s", "lp", "--in-place", "-o", "node=node-2")  # run on the wrong host
    assert err.exit_code == EXIT_REFUSED
    assert err.message == "claim apps/data lives on node node-1, this host is node-2: its directory would be written here"
    assert not storage.exists()
    res = d.restore("lp", "--in-place")
    assert tree(pv_path(data)) == want["apps/data"] and tree(pv_path(loki)) == want["monitoring/loki-0"]
    assert {ref: fake.get("PersistentVolumeClaim", *ref.split("/"))["metadata"]["uid"] for ref in want} == uids
    assert {(k, o["metadata"]["resourceVersion"]) for k in ("PersistentVolume", "PersistentVolumeClaim")
            for o in fake.list(k)} == objects_before  # no object touched
    assert not [m for m, _, _ in fake.requests if m in ("POST", "PUT", "PATCH", "DELETE")]
    assert sorted(c["claim"] for c in res["details"]["claims"]) == ["apps/data", "monitoring/loki-0"]


def test_rebuilt_node_offline_before_k3s_starts_puts_directories_at_recorded_paths(
        tmp_path: Path, app: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """Datastore model, before K3s starts: no API; the directories go back where the
    snapshot recorded them. Not while K3s runs (pods could mount them), even with --force."""
    from drkit.sources import k3s_common

    kubeconfig, fake, storage, pv, d = app
    d.backup("lp")
    shutil.rmtree(storage)
    kubeconfig.write_text(kubeconfig.read_text().replace("127.0.0.1", "127.0.0.2"))  # nothing answers there
    with monkeypatch.context() as m:
        m.setattr(k3s_common, "find_k3s_server", lambda *a: k3s_common.RunningProcess(4242, "k3s server"))
        err = d.fails("restore", "latest", "-s", "lp", "--in-place", "-o", "offline=true", "--force")
    assert err.exit_code == EXIT_REFUSED and err.message.startswith("a K3s server runs on this host (pid 4242)")
    assert not storage.exists()
    d.restore("lp", "--in-place", "-o", "offline=true")
    assert tree(pv_path(pv)) == FILES


def test_gitops_rebuild_precreates_claim_and_pv_bound_at_the_recorded_directory(tmp_path: Path, app: tuple) -> None:
    """GitOps model: no objects, no directories. The restore creates the PV (Retain)
    and the claim under the original names, bound, before Argo CD syncs."""
    kubeconfig, fake, storage, pv, d = app
    d.backup("lp")
    with connect(kubeconfig) as kube:
        kube.delete(PVC, "data", "apps")
        kube.delete(PV, pv["metadata"]["name"], missing_ok=True)  # gone with the claim (reclaim policy Delete)
    shutil.rmtree(storage)
    lines = d.restore("lp", "--in-place", "--dry-run")["lines"]
    assert lines[0] == (f"would restore claim apps/data into {pv_path(pv)} (claim apps/data and PV "
                        f"{pv['metadata']['name']} created)")
    assert lines[1].startswith("would create PersistentVolume:\n") and "persistentVolumeReclaimPolicy: Retain" in lines[1]
    assert lines[2].startswith("would create PersistentVolumeClaim:\n")
    assert not storage.exists() and fake.get("PersistentVolumeClaim", "apps", "data") is None
    d.restore("lp", "--in-place")
    pvc = fake.get("PersistentVolumeClaim", "apps", "data")
    new_pv = fake.get("PersistentVolume", None, pv["metadata"]["name"])
    assert pvc["status"]["phase"] == "Bound" and pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    assert new_pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert new_pv["spec"]["hostPath"]["path"] == str(pv_path(pv))
    assert tree(pv_path(pv)) == FILES


def test_in_place_for_a_pending_claim_creates_a_pv_pre_bound_to_it(tmp_path: Path, app: tuple) -> None:
    """The claim is back (Argo CD synced it, WaitForFirstConsumer: pending, no PV), its PV
    and directory are not: a Retain PV pre-bound to the claim, at the recorded path."""
    kubeconfig, fake, storage, pv, d = app
    d.backup("lp")
    with connect(kubeconfig) as kube:
        kube.delete(PVC, "data", "apps")
        kube.delete(PV, pv["metadata"]["name"], missing_ok=True)
        kube.create(PVC, {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                          "metadata": {"name": "data", "namespace": "apps"},
                          "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                                   "storageClassName": "local-path"}})
    shutil.rmtree(storage)
    uid = fake.get("PersistentVolumeClaim", "apps", "data")["metadata"]["uid"]
    res = d.restore("lp", "--in-place")
    pvc = fake.get("PersistentVolumeClaim", "apps", "data")
    assert pvc["metadata"]["uid"] == uid and pvc["status"]["phase"] == "Bound"
    new_pv = fake.get("PersistentVolume", None, pvc["spec"]["volumeName"])
    assert new_pv["metadata"]["name"] == pv["metadata"]["name"]  # the recorded name, free again
    assert new_pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert new_pv["spec"]["claimRef"]["uid"] == uid
    assert tree(pv_path(new_pv)) == FILES and pv_path(new_pv) == pv_path(pv)
    assert f"claim apps/data is Bound to PersistentVolume {pv['metadata']['name']}" in res["lines"]


def test_hooks_run_locally_around_each_claim_and_a_failing_pre_hook_skips_it(tmp_path: Path, cluster: tuple) -> None:
    kubeconfig, fake, storage = cluster
    a = fake.provision_local_path("apps", "a", storage)
    b = fake.provision_local_path("apps", "b", storage)
    fill(pv_path(a), {"x": b"x"})
    fill(pv_path(b), {"y": b"y"})
    marker = tmp_path / "post-ran"
    hooks = {
        "apps/a": {"pre": [["sh", "-c", 'echo "dump of $DRKIT_CLAIM_NAMESPACE/$DRKIT_CLAIM_NAME" > "$DRKIT_CLAIM_PATH/dump.sql"']],
                   "post": [["sh", "-c", 'rm "$DRKIT_CLAIM_PATH/dump.sql"']]},
        "apps/b": {"pre": [{"command": ["sh", "-c", "echo app is busy >&2; exit 3"], "timeout": 10}],
                   "post": [["touch", str(marker)]]},
    }
    d = Drkit.setup(tmp_path / "drkit", [spec(kubeconfig, hooks=hooks)])
    err = d.fails("backup", "-s", "lp")
    assert err.exit_code == EXIT_PARTIAL and err.message == "backup incomplete: lp (1 item(s) skipped)"
    assert not (pv_path(a) / "dump.sql").exists() and marker.exists()  # both post hooks ran
    recs = {r["claim"]: r for r in d.snapshot_meta("lp")["claims"]}
    assert recs["a"]["saved"] and not recs["b"]["saved"]
    assert recs["b"]["error"].startswith("pre hook of claim apps/b failed: command failed (exit 3)")
    assert "app is busy" in recs["b"]["error"]
    out = tmp_path / "out"
    d.restore("lp", "--target", str(out))
    assert tree(out / "apps/a") == {"x": b"x", "dump.sql": b"dump of apps/a\n"}
    assert not (out / "apps/b").exists()


def test_bad_hook_keys_are_a_config_error(tmp_path: Path, cluster: tuple) -> None:
    kubeconfig, fake, storage = cluster
    with pytest.raises(Exception, match=r"hooks are keyed by namespace/claim, got 'data'"):
        build_source(spec(kubeconfig, hooks={"data": {"pre": [["true"]]}}), key="sources[0]")


def test_drill_restores_into_scratch_and_compares_hashes_per_claim(tmp_path: Path, cluster: tuple) -> None:
    kubeconfig, fake, storage = cluster
    for ns, claim in (("apps", "data"), ("monitoring", "loki-0")):
        pv = fake.provision_local_path(ns, claim, storage)
        fill(pv_path(pv), {"f1": os.urandom(20_000), "sub/f2": b"two"})
    d = Drkit.setup(tmp_path / "drkit", [spec(kubeconfig)])
    d.backup("lp")
    report = json.loads(d.ok("drill", "--json").stdout)
    (src,) = report["sources"]
    assert src["ok"], src
    groups = src["check"]["details"]["groups"]
    assert groups == {"apps/data": {"files": 2, "bytes": 20_003, "problems": 0},
                      "monitoring/loki-0": {"files": 2, "bytes": 20_003, "problems": 0}}
    assert src["check"]["details"]["apps/data"] == {"files": 2, "bytes": 20_003}


def test_restore_of_a_claim_not_in_the_snapshot_names_what_is(tmp_path: Path, app: tuple) -> None:
    kubeconfig, fake, storage, pv, d = app
    d.backup("lp")
    err = d.fails("restore", "latest", "-s", "lp", "--target", str(tmp_path / "o"), "--volume", "apps/nope")
    assert err.exit_code == EXIT_USAGE
    assert err.message == "claim(s) not in this snapshot: apps/nope" and err.hint == "in this snapshot: apps/data"


def test_config_detect_lists_the_local_path_claims_and_writes_a_source(tmp_path: Path, cluster: tuple) -> None:
    import yaml

    from drkit.config import parse_config
    from drkit.detect import detect, render_config
    from tests.fixtures.k3s_layout import make_k3s_layout

    kubeconfig, fake, storage = cluster
    layout = make_k3s_layout(tmp_path / "node")
    det = detect(root=layout.root, kubeconfig=kubeconfig)
    assert det.local_path_claims == []
    assert "# local-path: no bound local-path claims" in render_config(det)
    data = fake.provision_local_path("apps", "data", storage)
    loki = fake.provision_local_path("monitoring", "loki-0", storage, volume_type="local")
    fake.provision("apps", "db", 4 * 1024 * 1024, attach=False)  # Longhorn: not listed
    det = detect(root=layout.root, kubeconfig=kubeconfig)
    assert det.local_path_claims == [f"apps/data -> {pv_path(data)}", f"monitoring/loki-0 -> {pv_path(loki)}"]
    assert det.summary()["local_path_claims"] == det.local_path_claims
    text = render_config(det)
    assert f"#   monitoring/loki-0 -> {pv_path(loki)}" in text
    sources = {s["name"]: s for s in yaml.safe_load(text)["sources"]}
    assert sources["local-path"] == {"name": "local-path", "type": "local-path", "kubeconfig": str(kubeconfig)}
    cfg = parse_config(yaml.safe_load(text))
    assert "local-path" in {s.type_name for s in cfg.sources}
