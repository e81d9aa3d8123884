"""Longhorn in-place restores that never delete what cannot be brought back, against the
FAKE API server (tests/fakes/kube_api.py: reclaim policy, pvc-protection, Longhorn's
deletion of the PV/claim a Volume's status names, faulted volumes) through the real
client and ``drkit restore``.

Every case asserts the uids of the claim, PV and volume before and after, exactly which
objects left the store, the bytes read back through the restored volume's device, and
that the fake's audit holds no request a real server would refuse or prune."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from drkit.kube import LH_VOLUME_ATTACHMENT, SECRET, connect
from tests.fakes.kube_api import LONGHORN_NS, MIB, FakeKube
from tests.sources.kube_cli import Drkit
from tests.sources.test_longhorn import SIZE, fs_read, fsck_ok, make_ext4, source_spec, wipe_cluster_copy

CLAIM = ("PersistentVolumeClaim", "apps", "data-db-0")


def uid(fake: FakeKube, kind: str, ns: str | None, name: str) -> str | None:
    obj = fake.get(kind, ns, name)
    return obj["metadata"]["uid"] if obj else None


def meta_of(fake: FakeKube, kind: str, ns: str | None, name: str) -> dict[str, Any]:
    """What must not change: uid, labels, annotations, spec."""
    obj = fake.get(kind, ns, name)
    assert obj is not None
    return {"uid": obj["metadata"]["uid"], "labels": obj["metadata"].get("labels"),
            "annotations": obj["metadata"].get("annotations"), "spec": obj["spec"],
            "deleting": obj["metadata"].get("deletionTimestamp")}


def read_device(kubeconfig: Path, fake: FakeKube, volume: str) -> bytes:
    """Attach *volume* as a workload would (a ticket), read its block device, detach."""
    ticket = f"t-{secrets.token_hex(3)}"
    with connect(kubeconfig) as kube:
        kube.merge_patch(LH_VOLUME_ATTACHMENT, volume, LONGHORN_NS, {"spec": {"attachmentTickets": {ticket: {
            "id": ticket, "type": "csi-attacher", "nodeID": fake.node_id, "parameters": {"disableFrontend": "false"}}}}})
        fake.tick()  # the fake applies due transitions lazily
        assert fake.device_path(volume).exists(), "the volume did not attach"
        data = fake.device_path(volume).read_bytes()
        kube.merge_patch(LH_VOLUME_ATTACHMENT, volume, LONGHORN_NS, {"spec": {"attachmentTickets": {ticket: None}}})
    fake.tick()
    assert not fake.device_path(volume).exists()
    return data


def mount_pod(fake: FakeKube, claim: str, *, owner: str = "db") -> None:
    fake.seed({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{owner}-0", "namespace": "apps", "ownerReferences": [
                   {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": owner, "uid": "u-1", "controller": True}]},
               "spec": {"containers": [{"name": "c"}],
                        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}},
              status={"phase": "Running"})


@pytest.fixture
def backed_up(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> tuple[Path, FakeKube, str, bytes, Drkit]:
    """An app claim (ext4 with two files, annotated as Argo CD tracks it) backed up in drkit mode."""
    kubeconfig, fake = fake_kube
    volume = fake.provision("apps", "data-db-0", SIZE, labels={"app": "db"})
    with connect(kubeconfig) as kube:
        from drkit.kube import PVC

        kube.merge_patch(PVC, "data-db-0", "apps", {"metadata": {"annotations": {
            "argocd.argoproj.io/tracking-id": "db:/PersistentVolumeClaim:apps/data-db-0"}}})
    make_ext4(fake, volume, tmp_path, {"hello.txt": b"hello from the volume\n", "random.bin": os.urandom(MIB + 7)})
    original = fake.volume_path(volume).read_bytes()
    d = Drkit.setup(tmp_path / "drkit", [source_spec(kubeconfig, fake)])
    d.backup("vols")
    return kubeconfig, fake, volume, original, d


def test_in_place_restores_into_a_claim_whose_volume_lost_its_replicas(backed_up: tuple) -> None:
    kubeconfig, fake, volume, original, d = backed_up
    fake.lose_replicas(volume)  # a datastore restore onto a new disk: objects back, data gone
    claim_before = meta_of(fake, *CLAIM)
    pv_before = meta_of(fake, "PersistentVolume", None, volume)
    old_volume_uid = uid(fake, "Volume", LONGHORN_NS, volume)
    deleted, n = list(fake.deleted), len(fake.audit)

    result = d.restore("vols", "--in-place")
    assert result["details"]["volumes"] == [
        {"pvc": "apps/data-db-0", "volume": volume, "mode": "drkit", "how": "into-claim"}]
    assert fake.deleted[len(deleted):] == [("Volume", LONGHORN_NS, volume)]  # the data-less volume, nothing else
    assert meta_of(fake, *CLAIM) == claim_before
    assert meta_of(fake, "PersistentVolume", None, volume) == pv_before
    vol = fake.get("Volume", LONGHORN_NS, volume)
    assert vol is not None and vol["metadata"]["uid"] != old_volume_uid  # same name, a new volume
    assert vol["metadata"]["labels"]["drkit.io/restore-state"] == "done"
    assert vol["spec"]["numberOfReplicas"] == 1 and vol["status"]["robustness"] != "faulted"
    assert fake.get("PersistentVolumeClaim", "apps", "data-db-0")["status"]["phase"] == "Bound"
    # the bytes, as a workload attaching the volume sees them
    seen = read_device(kubeconfig, fake, volume)
    assert seen == original
    assert fs_read(fake.volume_path(volume), "hello.txt") == b"hello from the volume\n"
    fsck_ok(fake.volume_path(volume))
    # the link to PV and claim was cleared through the status subresource before the delete
    changes = [(a.method, a.path.rsplit("/", 2)[-2:]) for a in fake.audit[n:] if a.method != "GET"]
    assert changes[:2] == [("PATCH", [volume, "status"]), ("DELETE", ["volumes", volume])]
    assert fake.rejected() == []
    lines = result["lines"]
    assert any("(it held no data); PVC apps/data-db-0 and its PV are untouched" in line for line in lines)

    # now the volume holds data: a second restore into it is refused, and changes nothing
    n = len(fake.audit)
    err = d.fails("restore", "latest", "-s", "vols", "--in-place")
    assert err.exit_code == 9 and "holds data" in err.message and "--force" in (err.hint or "")
    assert [a for a in fake.audit[n:] if a.method != "GET"] == []


def test_into_claim_with_a_pod_mounting_it_is_refused_before_any_change(backed_up: tuple) -> None:
    kubeconfig, fake, volume, _, d = backed_up
    fake.lose_replicas(volume)
    mount_pod(fake, "data-db-0")
    deleted, n = list(fake.deleted), len(fake.audit)
    err = d.fails("restore", "latest", "-s", "vols", "--in-place")
    assert err.exit_code == 9
    assert err.message == "PVC apps/data-db-0 is mounted by pod apps/db-0 (StatefulSet db): not restoring into it"
    assert fake.deleted == deleted and [a for a in fake.audit[n:] if a.method != "GET"] == []
    assert fake.get("Volume", LONGHORN_NS, volume)["status"]["robustness"] == "faulted"


def test_dry_run_prints_every_change_and_sends_none(backed_up: tuple) -> None:
    kubeconfig, fake, volume, _, d = backed_up
    fake.lose_replicas(volume)
    n = len(fake.audit)
    lines = d.restore("vols", "--in-place", "--dry-run")["lines"]
    assert lines[0] == "apps/data-db-0: into-claim"
    heads = [line.splitlines()[0] for line in lines[1:]]
    assert heads == [
        f"would patch Volume {LONGHORN_NS}/{volume} (status.kubernetesStatus: unlink PV and claim, so that Longhorn "
        "does not delete them with the volume)",
        f"would delete Volume {LONGHORN_NS}/{volume} (it holds no data: faulted, no replica left that did not fail)",
        f"would create Volume {LONGHORN_NS}/{volume} (same name: PV {volume} finds it):",
        f"would write Volume {volume} ({SIZE} bytes of the drkit image)",
    ]
    assert "numberOfReplicas: 1" in lines[3] and "frontend: blockdev" in lines[3]
    assert [a for a in fake.audit[n:] if a.method != "GET"] == []
    assert fake.get("Volume", LONGHORN_NS, volume)["status"]["robustness"] == "faulted"


def test_force_rebinds_the_claim_and_keeps_the_old_pv_and_volume(backed_up: tuple) -> None:
    kubeconfig, fake, volume, original, d = backed_up
    with open(fake.volume_path(volume), "r+b") as f:  # the live volume changed since the backup
        f.seek(SIZE - 4096)
        f.write(b"newer data")
    live = fake.volume_path(volume).read_bytes()
    pv_uid, vol_uid, claim_uid = (uid(fake, "PersistentVolume", None, volume), uid(fake, "Volume", LONGHORN_NS, volume),
                                  uid(fake, *CLAIM))
    lines = d.restore("vols", "--in-place", "--force", "--dry-run")["lines"]
    heads = [line.splitlines()[0] for line in lines]
    assert heads[0] == "apps/data-db-0: replace"
    assert heads[1] == (f"would patch PersistentVolume {volume} (persistentVolumeReclaimPolicy Retain: kept when the "
                        "claim goes)")
    assert [h.split(" ")[1:3] for h in heads[2:]] == [["create", "Volume"], ["write", "Volume"],
                                                      ["create", "PersistentVolume"],
                                                      ["delete", "PersistentVolumeClaim"],
                                                      ["create", "PersistentVolumeClaim"]]
    deleted = list(fake.deleted)
    result = d.restore("vols", "--in-place", "--force")
    (vol_detail,) = result["details"]["volumes"]
    new_volume = vol_detail["volume"]
    assert vol_detail == {"pvc": "apps/data-db-0", "volume": new_volume, "mode": "drkit", "how": "replace",
                          "kept_pv": volume, "kept_volume": volume}
    assert fake.deleted[len(deleted):] == [CLAIM]  # only the claim; its PV and volume stay
    assert uid(fake, "PersistentVolume", None, volume) == pv_uid and uid(fake, "Volume", LONGHORN_NS, volume) == vol_uid
    old_pv = fake.get("PersistentVolume", None, volume)
    assert old_pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain" and old_pv["status"]["phase"] == "Released"
    assert fake.volume_path(volume).read_bytes() == live  # the old data is still there
    claim = fake.get(*CLAIM)
    assert claim["metadata"]["uid"] != claim_uid and claim["spec"]["volumeName"] == new_volume
    assert claim["status"]["phase"] == "Bound"
    assert claim["metadata"]["annotations"] == {"argocd.argoproj.io/tracking-id":
                                                "db:/PersistentVolumeClaim:apps/data-db-0"}  # same app, same claim
    assert read_device(kubeconfig, fake, new_volume) == original
    assert any(line == f"kept the old PersistentVolume {volume} (Retain, Released) and Longhorn volume {volume} under "
               "their names: delete them when no longer needed" for line in result["lines"])
    assert fake.rejected() == []


def test_restore_under_a_new_namespace_and_claim(backed_up: tuple) -> None:
    kubeconfig, fake, volume, original, d = backed_up
    before = {k: uid(fake, *k) for k in (CLAIM, ("PersistentVolume", None, volume), ("Volume", LONGHORN_NS, volume))}
    deleted = list(fake.deleted)
    result = d.restore("vols", "--in-place", "--namespace", "apps-copy", "--claim", "data-check")
    (detail,) = result["details"]["volumes"]
    new_volume = detail["volume"]
    assert detail["pvc"] == "apps-copy/data-check" and detail["how"] == "new" and detail["from"] == "apps/data-db-0"
    assert new_volume != volume and new_volume.startswith(volume) and len(new_volume) <= 63
    assert fake.deleted == deleted and {k: uid(fake, *k) for k in before} == before  # the original is untouched
    claim = fake.get("PersistentVolumeClaim", "apps-copy", "data-check")
    assert claim["status"]["phase"] == "Bound" and claim["spec"]["volumeName"] == new_volume
    assert claim["metadata"]["labels"] == {"app": "db"}
    assert "annotations" not in claim["metadata"]  # Argo CD must not take the copy for the app's own claim
    pv = fake.get("PersistentVolume", None, new_volume)
    assert pv["spec"]["claimRef"]["namespace"] == "apps-copy" and pv["spec"]["claimRef"]["name"] == "data-check"
    assert read_device(kubeconfig, fake, new_volume) == original
    assert fake.rejected() == []


def test_namespace_and_claim_names_are_checked(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    for ns, pvc in (("apps", "a"), ("web", "b")):
        fake.provision(ns, pvc, 4 * MIB)
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake)])
    d.backup("vols")
    n = len(fake.audit)
    err = d.fails("restore", "latest", "-s", "vols", "--in-place", "--claim", "x")
    assert err.exit_code == 2 and "2 volumes are selected (apps/a, web/b)" in err.message
    assert "--volume" in (err.hint or "")
    err = d.fails("restore", "latest", "-s", "vols", "--in-place", "--namespace", "Bad_NS")
    assert err.exit_code == 2 and "--namespace 'Bad_NS' is not a valid namespace name" in err.message
    err = d.fails("restore", "latest", "-s", "vols", "--in-place", "--volume", "web/b", "--claim", "UPPER")
    assert err.exit_code == 2 and "--claim 'UPPER'" in err.message
    assert [a for a in fake.audit[n:] if a.method != "GET"] == []  # refused before any request that changes


def test_an_encrypted_volume_comes_back_encrypted_and_needs_its_secret(
        tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    secret_ref = {"name": "longhorn-crypto", "namespace": LONGHORN_NS}
    volume = fake.provision("apps", "vault", 8 * MIB, encrypted_with=secret_ref)
    luks = b"LUKS\xba\xbe\x00\x02" + os.urandom(4 * MIB)  # what the raw device of an encrypted volume holds
    with open(fake.volume_path(volume), "r+b") as f:
        f.write(luks)
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake)])
    d.backup("vols")
    (vmeta,) = d.snapshot_meta("vols")["volumes"]
    assert vmeta["encrypted"] is True
    out = tmp_path / "files"
    d.restore("vols", "--target", str(out))
    import yaml

    record = yaml.safe_load((out / "volumes/apps/vault.yaml").read_text())
    assert record["encrypted"] is True
    assert record["secret_refs"] == {"nodePublishSecretRef": secret_ref, "nodeStageSecretRef": secret_ref}
    check = d.source("vols").check_restored(out, d.latest("vols"))
    assert check.ok and check.details["apps/vault"].startswith("encrypted (LUKS header present)")

    wipe_cluster_copy(kubeconfig, "apps", "vault", volume)
    n, deleted = len(fake.audit), list(fake.deleted)
    err = d.fails("restore", "latest", "-s", "vols", "--in-place")
    assert err.exit_code == 9
    assert err.message == (f"volume apps/vault is encrypted and its PV's nodePublishSecretRef names Secret "
                           f"{LONGHORN_NS}/longhorn-crypto, which does not exist: the volume could not be opened")
    assert [a for a in fake.audit[n:] if a.method != "GET"] == [] and fake.deleted == deleted
    with connect(kubeconfig) as kube:
        kube.create(SECRET, {"apiVersion": "v1", "kind": "Secret",
                             "metadata": {"name": "longhorn-crypto", "namespace": LONGHORN_NS},
                             "stringData": {"CRYPTO_KEY_VALUE": "passphrase"}})
    d.restore("vols", "--in-place")
    vol = fake.get("Volume", LONGHORN_NS, volume)
    assert vol["spec"]["encrypted"] is True
    pv = fake.get("PersistentVolume", None, volume)
    assert pv["spec"]["csi"]["nodeStageSecretRef"] == secret_ref and pv["spec"]["csi"]["nodePublishSecretRef"] == secret_ref
    assert read_device(kubeconfig, fake, volume)[:len(luks)] == luks
    assert fake.rejected() == []


def test_retention_counts_per_source_and_spares_other_sources_and_the_user(
        tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    volume = fake.provision("apps", "shared", 4 * MIB)
    fake.seed({"apiVersion": "longhorn.io/v1beta2", "kind": "Snapshot",
               "metadata": {"name": "users-own", "namespace": LONGHORN_NS},
               "spec": {"volume": volume, "createSnapshot": True}})
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake, name="vols", keep_snapshots=1),
                               source_spec(kubeconfig, fake, name="native", mode="native", keep_snapshots=1)])
    d.backup("vols")
    drkit_snap = d.snapshot_meta("vols")["volumes"][0]["snapshot"]
    d.backup("native")  # the newest snapshot of the volume is now the native source's
    native_snap = d.snapshot_meta("native")["volumes"][0]["snapshot"]
    names = sorted(s["metadata"]["name"] for s in fake.list("Snapshot", LONGHORN_NS))
    assert names == sorted([drkit_snap, native_snap, "users-own"])  # each source keeps its newest
    d.backup("vols")
    newest = d.snapshot_meta("vols")["volumes"][0]["snapshot"]
    names = sorted(s["metadata"]["name"] for s in fake.list("Snapshot", LONGHORN_NS))
    assert names == sorted([newest, native_snap, "users-own"])
    assert [n for k, _, n in fake.deleted if k == "Snapshot"] == [drkit_snap]


def test_native_backup_restores_into_a_claim_whose_volume_lost_its_data(
        tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    volume = fake.provision("apps", "data-db-0", 8 * MIB)
    original = os.urandom(8 * MIB)
    fake.volume_path(volume).write_bytes(original)
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake, mode="native")])
    d.backup("vols")
    url = d.snapshot_meta("vols")["volumes"][0]["backup_url"]
    fake.lose_replicas(volume)
    claim_before, pv_before = meta_of(fake, *CLAIM), meta_of(fake, "PersistentVolume", None, volume)
    deleted = list(fake.deleted)
    result = d.restore("vols", "--in-place")
    assert result["details"]["volumes"][0]["how"] == "into-claim"
    assert fake.deleted[len(deleted):] == [("Volume", LONGHORN_NS, volume)]
    assert meta_of(fake, *CLAIM) == claim_before and meta_of(fake, "PersistentVolume", None, volume) == pv_before
    assert fake.get("Volume", LONGHORN_NS, volume)["spec"]["fromBackup"] == url
    assert read_device(kubeconfig, fake, volume) == original
    assert [b for b in fake.deleted if b[0] == "Backup"] == [] and fake.rejected() == []


def test_a_link_that_longhorn_writes_back_stops_the_restore_before_any_deletion(backed_up: tuple) -> None:
    kubeconfig, fake, volume, _, d = backed_up
    fake.lose_replicas(volume)
    fake.pv_controller_races = True  # Longhorn's PV controller resyncs right after drkit's unlink
    claim_before, pv_before = meta_of(fake, *CLAIM), meta_of(fake, "PersistentVolume", None, volume)
    deleted = list(fake.deleted)
    err = d.fails("restore", "latest", "-s", "vols", "--in-place")
    assert err.exit_code == 8 and f"Longhorn linked volume {volume} to PV {volume} again at once" in err.message
    assert fake.deleted == deleted
    assert meta_of(fake, *CLAIM) == claim_before and meta_of(fake, "PersistentVolume", None, volume) == pv_before
    fake.pv_controller_races = False
    d.restore("vols", "--in-place")  # run again: it goes through
    assert fake.deleted[len(deleted):] == [("Volume", LONGHORN_NS, volume)]
    assert meta_of(fake, *CLAIM) == claim_before


# ---------------------------------------------------------------------- RBAC as documented
def documented_roles() -> dict[str, set[tuple[str, str, str]]]:
    """The ClusterRoles in docs/sources/longhorn.md, as (verb, group, resource) sets."""
    import re

    import yaml

    text = (Path(__file__).resolve().parents[2] / "docs/sources/longhorn.md").read_text()
    roles: dict[str, set[tuple[str, str, str]]] = {}
    for block in re.findall(r"```yaml\n(# rbac: (\S+).*?)```", text, re.S):
        body, name = block
        role = yaml.safe_load(body)
        assert role["kind"] == "ClusterRole"
        roles[name] = {(verb, group, res) for rule in role["rules"] for group in rule["apiGroups"]
                       for res in rule["resources"] for verb in rule["verbs"]}
    return roles


def test_each_operation_works_with_exactly_the_documented_rbac(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    roles = documented_roles()
    assert sorted(roles) == ["longhorn-backup", "longhorn-backup-drkit", "longhorn-backup-native",
                             "longhorn-restore", "longhorn-restore-force"]
    volume = fake.provision("apps", "data", 4 * MIB)
    fake.volume_path(volume).write_bytes(os.urandom(4 * MIB))
    d = Drkit.setup(tmp_path / "d", [source_spec(kubeconfig, fake), source_spec(kubeconfig, fake, name="native",
                                                                                   mode="native")])
    fake.allowed = roles["longhorn-backup"] | roles["longhorn-backup-drkit"]
    d.backup("vols")
    d.backup("vols")  # the second run's retention deletes the first snapshot
    fake.allowed = roles["longhorn-backup"] | roles["longhorn-backup-native"]
    d.backup("native")
    assert fake.rejected() == []

    fake.allowed = set()
    d.restore("vols", "--target", str(tmp_path / "files"))  # the cluster is not contacted
    fake.allowed = roles["longhorn-restore"]
    d.restore("vols", "--in-place", "--namespace", "copy", "--dry-run")
    d.restore("vols", "--in-place", "--namespace", "copy")  # new claims
    fake.lose_replicas(volume)
    d.restore("vols", "--in-place", "--dry-run")
    d.restore("vols", "--in-place")  # into the claim whose volume lost its data: no delete on claims
    assert fake.rejected() == []
    err = d.fails("restore", "latest", "-s", "vols", "--in-place", "--force")  # --force needs its own role
    assert err.exit_code == 2 and "forbidden" in err.message and "persistentvolumes" in err.message
    n = len(fake.audit)
    fake.allowed = roles["longhorn-restore"] | roles["longhorn-restore-force"]
    d.restore("vols", "--in-place", "--force")
    assert [a for a in fake.audit[n:] if a.code >= 400 and a.method != "GET"] == []
