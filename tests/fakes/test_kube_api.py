"""The FAKE API server refuses what a real one (with Longhorn's webhooks) refuses.

Driven through the official ``kubernetes`` client via :mod:`drkit.kube`, so these
tests also pin the error translation (status codes, one-line messages).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from drkit.kube import (
    ARGO_APPLICATION,
    LH_BACKUP,
    LH_SNAPSHOT,
    LH_VOLUME,
    LH_VOLUME_ATTACHMENT,
    NAMESPACE,
    PV,
    SECRET,
    Kube,
    KubeAPIError,
    KubeAuthError,
    KubeConflict,
    KubeInvalid,
    KubeNotFound,
    connect,
    strip_object,
)
from tests.fakes.kube_api import LONGHORN_NS, MIB, TOKEN, FakeKube, parse_label_selector

VOLUME: dict[str, Any] = {
    "apiVersion": "longhorn.io/v1beta2",
    "kind": "Volume",
    "metadata": {"name": "vol-a", "namespace": LONGHORN_NS},
    "spec": {"size": str(10 * MIB), "frontend": "blockdev", "numberOfReplicas": 1},
}


@pytest.fixture
def kube(fake_kube: tuple[Path, FakeKube]) -> Any:
    kubeconfig, _ = fake_kube
    with connect(kubeconfig) as k:
        yield k


def raw(kube: Kube, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    """Send a request past the client's own checks, straight to the fake."""
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(kube.server + path, data=json.dumps(body).encode(), method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def vol(**spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(VOLUME)
    body["spec"].update(spec)
    return body


def test_a_wrong_field_name_fails(kube: Kube) -> None:
    body = vol()
    body["spec"]["numberOfReplica"] = 2  # misspelt
    with pytest.raises(KubeInvalid, match='unknown field "spec.numberOfReplica"') as exc:
        kube.create(LH_VOLUME, body)
    assert exc.value.status == 400
    app = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "metadata": {"name": "a", "namespace": "default"},
           "spec": {"project": "p", "destination": {"server": "s"}, "syncPolicy": {"automatic": {}}}}
    with pytest.raises(KubeInvalid, match='unknown field "spec.syncPolicy.automatic"'):
        kube.create(ARGO_APPLICATION, app)
    bad_meta = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "default", "lables": {}}}
    with pytest.raises(KubeInvalid, match="metadata.lables"):  # the client itself checks core bodies ...
        kube.create(SECRET, bad_meta)
    status, answer = raw(kube, "POST", "/api/v1/namespaces/default/secrets", bad_meta)  # ... and so does the fake
    assert status == 400 and 'unknown field "metadata.lables"' in answer["message"]


def test_warn_mode_prunes_unknown_fields_like_a_real_server(fake_kube: tuple[Path, FakeKube], kube: Kube) -> None:
    _, fake = fake_kube
    fake.unknown_fields = "Warn"
    body = vol()
    body["spec"]["numberOfReplica"] = 2
    created = kube.create(LH_VOLUME, body)
    assert "numberOfReplica" not in created["spec"]
    assert fake.warnings == ['unknown field "spec.numberOfReplica"']


def test_types_enums_and_required_fields_follow_the_crd_schema(kube: Kube) -> None:
    with pytest.raises(KubeInvalid, match=r"spec.size: 10485760 is not of type 'string'") as exc:
        kube.create(LH_VOLUME, vol(size=10 * MIB))
    assert exc.value.status == 422
    with pytest.raises(KubeInvalid, match="spec.accessMode: 'rwz' is not one of"):
        kube.create(LH_VOLUME, vol(accessMode="rwz"))
    with pytest.raises(KubeInvalid, match="'volume' is a required property"):
        kube.create(LH_SNAPSHOT, {"apiVersion": "longhorn.io/v1beta2", "kind": "Snapshot",
                                  "metadata": {"name": "s", "namespace": LONGHORN_NS}, "spec": {}})
    with pytest.raises(KubeInvalid, match="spec.accessModes: Required value"):
        kube.create(PV, {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "p"},
                         "spec": {"capacity": {"storage": "1Gi"},
                                  "csi": {"driver": "driver.longhorn.io", "volumeHandle": "v"}}})
    status, answer = raw(kube, "POST", "/api/v1/persistentvolumes", {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "p"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "csi": {"driver": "d"}}})
    assert status == 422 and "'volumeHandle' is a required property" in answer["message"]
    with pytest.raises(KubeInvalid, match="illegal base64"):
        kube.create(SECRET, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "default"},
                             "data": {"k": "not base64!"}})
    with pytest.raises(KubeInvalid, match="RFC 1123"):
        kube.create(SECRET, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "Bad_Name",
                                                                              "namespace": "default"}})


def test_server_assigned_metadata_and_create_with_resource_version(kube: Kube) -> None:
    created = kube.create(SECRET, {"apiVersion": "v1", "kind": "Secret",
                                   "metadata": {"name": "s", "namespace": "default"}, "stringData": {"a": "b"}})
    meta = created["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
    assert created["data"] == {"a": "Yg=="} and "stringData" not in created
    again = copy.deepcopy(created)
    again["metadata"]["name"] = "s2"
    with pytest.raises(KubeAPIError, match="resourceVersion should not be set on objects to be created") as exc:
        kube.create(SECRET, again)
    assert exc.value.status == 500
    kube.create(SECRET, strip_object(again))  # what drkit does: strip first
    with pytest.raises(KubeConflict, match="already exists"):
        kube.create(SECRET, strip_object(again))
    with pytest.raises(KubeNotFound, match='namespaces "nope" not found'):
        kube.create(SECRET, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": "nope"}})


def test_custom_resources_need_resource_version_on_replace_and_refuse_strategic_merge(
        kube: Kube, fake_kube: tuple[Path, FakeKube]) -> None:
    created = kube.create(LH_VOLUME, vol())
    body = strip_object(created)
    with pytest.raises(KubeInvalid, match="must be specified for an update"):
        kube.replace(LH_VOLUME, body)
    body["metadata"]["resourceVersion"] = "1"
    with pytest.raises(KubeConflict, match="the object has been modified"):
        kube.replace(LH_VOLUME, body)
    with pytest.raises(KubeInvalid, match="unknown format") as exc:
        kube.call("patch", kube.custom.patch_namespaced_custom_object, "longhorn.io", "v1beta2", LONGHORN_NS,
                  "volumes", "vol-a", {"spec": {"numberOfReplicas": 2}},
                  _content_type="application/strategic-merge-patch+json")
    assert exc.value.status == 415
    patched = kube.merge_patch(LH_VOLUME, "vol-a", LONGHORN_NS, {"spec": {"numberOfReplicas": 2}})
    assert patched["spec"]["numberOfReplicas"] == 2
    # a core kind may be replaced without resourceVersion (unconditional update)
    secret = kube.create(SECRET, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "default"}})
    kube.replace(SECRET, strip_object(secret))


def test_longhorn_webhooks(kube: Kube, fake_kube: tuple[Path, FakeKube]) -> None:
    with pytest.raises(KubeInvalid, match="invalid volume frontend") as exc:
        kube.create(LH_VOLUME, vol(frontend=""))
    assert exc.value.status == 422
    # null in a non-nullable field is pruned (as the API server does), then defaulted
    created = kube.create(LH_VOLUME, vol(size=str(5 * MIB + 1), numberOfReplicas=None))
    assert created["metadata"]["name"] == "vol-a"
    assert created["spec"]["size"] == str(6 * MIB)  # rounded up to 2 MiB
    assert created["spec"]["numberOfReplicas"] == 3  # Longhorn's default
    snap = {"apiVersion": "longhorn.io/v1beta2", "kind": "Snapshot",
            "metadata": {"name": "snap-1", "namespace": LONGHORN_NS}, "spec": {"volume": "missing", "createSnapshot": True}}
    with pytest.raises(KubeInvalid, match="volume missing not found"):
        kube.create(LH_SNAPSHOT, snap)
    backup = {"apiVersion": "longhorn.io/v1beta2", "kind": "Backup",
              "metadata": {"name": "backup-1", "namespace": LONGHORN_NS, "labels": {"backup-volume": "vol-a"}},
              "spec": {"snapshotName": "snap-1"}}
    with pytest.raises(KubeInvalid, match="snapshot 'snap-1' not found"):
        kube.create(LH_BACKUP, backup)
    restored = vol(fromBackup="s3://x@y/?backup=backup-0&volume=v")
    restored["metadata"]["name"] = "restored"
    with pytest.raises(KubeInvalid, match="cannot find backup"):
        kube.create(LH_VOLUME, restored)
    with pytest.raises(KubeInvalid, match="not ready"):
        body = vol(dataSource="snap://vol-a/none")
        body["metadata"]["name"] = "clone"
        kube.create(LH_VOLUME, body)


def test_attachment_tickets_make_the_device_appear_and_go(kube: Kube, fake_kube: tuple[Path, FakeKube]) -> None:
    _, fake = fake_kube
    kube.create(LH_VOLUME, vol())
    device = fake.device_path("vol-a")
    assert not device.exists()
    ticket = {"id": "t", "type": "longhorn-api", "nodeID": fake.node_id, "parameters": {"disableFrontend": "false"}}
    kube.merge_patch(LH_VOLUME_ATTACHMENT, "vol-a", LONGHORN_NS, {"spec": {"attachmentTickets": {"t": ticket}}})
    va = kube.get(LH_VOLUME_ATTACHMENT, "vol-a", LONGHORN_NS)
    assert va["status"]["attachmentTicketStatuses"]["t"]["satisfied"] is True
    assert kube.get(LH_VOLUME, "vol-a", LONGHORN_NS)["status"]["state"] == "attached"
    assert device.stat().st_size == 10 * MIB and device.stat().st_ino == fake.volume_path("vol-a").stat().st_ino
    kube.merge_patch(LH_VOLUME_ATTACHMENT, "vol-a", LONGHORN_NS, {"spec": {"attachmentTickets": {"t": None}}})
    assert not device.exists()
    assert kube.get(LH_VOLUME, "vol-a", LONGHORN_NS)["status"]["state"] == "detached"
    # a ticket for another node is never satisfied
    other = dict(ticket, nodeID="elsewhere")
    kube.merge_patch(LH_VOLUME_ATTACHMENT, "vol-a", LONGHORN_NS, {"spec": {"attachmentTickets": {"t": other}}})
    va = kube.get(LH_VOLUME_ATTACHMENT, "vol-a", LONGHORN_NS)
    assert va["status"]["attachmentTicketStatuses"]["t"]["satisfied"] is False and not device.exists()


def test_snapshot_content_is_taken_at_creation_and_ready_after_delay(
        kube: Kube, fake_kube: tuple[Path, FakeKube]) -> None:
    _, fake = fake_kube
    fake.snapshot_delay = 0.2
    kube.create(LH_VOLUME, vol())
    fake.volume_path("vol-a").write_bytes(b"A" * (10 * MIB))
    kube.create(LH_SNAPSHOT, {"apiVersion": "longhorn.io/v1beta2", "kind": "Snapshot",
                              "metadata": {"name": "s1", "namespace": LONGHORN_NS},
                              "spec": {"volume": "vol-a", "createSnapshot": True}})
    fake.volume_path("vol-a").write_bytes(b"B" * (10 * MIB))
    assert kube.get(LH_SNAPSHOT, "s1", LONGHORN_NS)["status"]["readyToUse"] is False
    import time

    time.sleep(0.25)
    assert kube.get(LH_SNAPSHOT, "s1", LONGHORN_NS)["status"]["readyToUse"] is True
    clone = vol(dataSource="snap://vol-a/s1")
    clone["metadata"]["name"] = "clone"
    kube.create(LH_VOLUME, clone)
    assert fake.volume_path("clone").read_bytes() == b"A" * (10 * MIB)


def test_label_and_field_selectors_across_namespaces(kube: Kube, fake_kube: tuple[Path, FakeKube]) -> None:
    _, fake = fake_kube
    for ns in ("a", "b"):
        fake.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    labels = {"s1": {"tier": "db"}, "s2": {"tier": "web", "x": "1"}, "s3": {}}
    for i, (name, lb) in enumerate(labels.items()):
        fake.seed({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls" if i else "Opaque",
                   "metadata": {"name": name, "namespace": "ab"[i % 2], "labels": lb}})

    def names(**kw: Any) -> list[str]:
        return [o["metadata"]["name"] for o in kube.list(SECRET, **kw)]

    assert sorted(names(label_selector="tier")) == ["s1", "s2"]
    assert sorted(names(label_selector="tier in (db, cache)")) == ["s1"]
    assert sorted(names(label_selector="tier notin (db),!x")) == ["s3"]
    assert sorted(names(label_selector="tier!=db,x=1")) == ["s2"]
    assert sorted(names(field_selector="type=kubernetes.io/tls")) == ["s2", "s3"]
    assert names(namespace="b", label_selector="tier") == ["s2"]
    items = kube.list(SECRET, "a")
    assert all(o["kind"] == "Secret" and o["apiVersion"] == "v1" for o in items)  # drkit adds them back
    with pytest.raises(KubeInvalid, match="unable to parse"):
        kube.list(SECRET, label_selector="a in b")
    assert parse_label_selector("")({"any": "thing"})


def test_unauthenticated_and_unknown_paths(fake_kube: tuple[Path, FakeKube], tmp_path: Path) -> None:
    kubeconfig, _ = fake_kube
    from tests.fakes.kube_api import write_kubeconfig

    server = kubeconfig.read_text().split("server: ")[1].split()[0]
    with connect(write_kubeconfig(tmp_path / "k.yaml", server, token="nope")) as k, pytest.raises(KubeAuthError):
        k.get(NAMESPACE, "default")
    with connect(kubeconfig) as k, pytest.raises(KubeNotFound):
        k.get(SECRET, "nothing", "default")


def test_strip_object_removes_cluster_specific_metadata() -> None:
    pv = {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "pv", "uid": "u", "resourceVersion": "9", "creationTimestamp": "t", "generation": 2,
                     "managedFields": [{}], "selfLink": "/x", "finalizers": ["kubernetes.io/pv-protection"],
                     "ownerReferences": [{"uid": "o"}], "labels": {"a": "b"},
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "me",
                                     "pv.kubernetes.io/bound-by-controller": "yes"}},
        "spec": {"claimRef": {"namespace": "n", "name": "c", "uid": "old", "resourceVersion": "3"}},
        "status": {"phase": "Bound"},
    }
    out = strip_object(pv)
    assert out == {"apiVersion": "v1", "kind": "PersistentVolume",
                   "metadata": {"name": "pv", "labels": {"a": "b"}, "annotations": {"keep": "me"}},
                   "spec": {"claimRef": {"namespace": "n", "name": "c"}}}
    assert pv["metadata"]["uid"] == "u"  # the input is untouched
    assert strip_object(pv, keep_owner_references=True)["metadata"]["ownerReferences"] == [{"uid": "o"}]


def test_pod_exec_over_the_websocket_channel_protocol(kube: Kube, fake_kube: tuple[Path, FakeKube]) -> None:
    _, fake = fake_kube
    fake.seed({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db-0", "namespace": "default"},
               "spec": {"containers": [{"name": "pg"}, {"name": "sidecar"}]}}, status={"phase": "Running"})
    result = kube.exec("default", "db-0", ["sh", "-c", "echo out; echo err >&2; exit 5"], container="pg")
    assert (result.returncode, result.stdout, result.stderr) == (5, "out\n", "err\n")
    assert kube.exec("default", "db-0", ["true"], container="sidecar").returncode == 0
    with pytest.raises(KubeInvalid, match="a container name must be specified"):
        kube.exec("default", "db-0", ["true"])
    fake.seed({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "done", "namespace": "default"},
               "spec": {"containers": [{"name": "c"}]}}, status={"phase": "Succeeded"})
    with pytest.raises(KubeInvalid, match="completed pod"):
        kube.exec("default", "done", ["true"])
    with pytest.raises(KubeNotFound, match='pods "ghost" not found'):
        kube.exec("default", "ghost", ["true"])


def test_rbac_denial_is_a_one_line_error_with_a_hint(kube: Kube, fake_kube: tuple[Path, FakeKube]) -> None:
    _, fake = fake_kube
    fake.forbidden.add(("GET", "secrets"))
    with pytest.raises(KubeAuthError) as exc:
        kube.list(SECRET, "default")
    assert exc.value.status == 403 and exc.value.exit_code == 2
    assert exc.value.message == (
        'cannot list secrets in namespace default (HTTP 403, Forbidden): secrets is forbidden: User '
        '"system:serviceaccount:drkit:drkit" cannot list resource "secrets" in API group "" in the namespace "default"')
    assert "RBAC" in (exc.value.hint or "")


def _mounting_pod(fake: FakeKube, name: str, claim: str) -> None:
    fake.seed({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "apps"},
               "spec": {"containers": [{"name": "c"}],
                        "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]}},
              status={"phase": "Running"})


def test_reclaim_policy_decides_what_goes_with_a_deleted_claim(kube: Kube, fake_kube: tuple[Path, FakeKube]) -> None:
    from drkit.kube import PVC

    _, fake = fake_kube
    doomed = fake.provision("apps", "doomed", 4 * MIB)
    kept = fake.provision("apps", "kept", 4 * MIB)
    pv = kube.get(PV, doomed)
    assert pv["metadata"]["finalizers"] == ["kubernetes.io/pv-protection"]
    assert kube.get(PVC, "doomed", "apps")["metadata"]["finalizers"] == ["kubernetes.io/pvc-protection"]
    assert kube.get(LH_VOLUME, doomed, LONGHORN_NS)["status"]["kubernetesStatus"] == {
        "pvName": doomed, "pvStatus": "Bound", "pvcName": "doomed", "namespace": "apps", "lastPVCRefAt": ""}
    # Delete: the claim takes its PV and the Longhorn volume (with its data) along
    kube.delete(PVC, "doomed", "apps")
    assert fake.deleted == [("PersistentVolumeClaim", "apps", "doomed"), ("Volume", LONGHORN_NS, doomed),
                            ("PersistentVolume", "", doomed)]
    assert not fake.volume_path(doomed).exists()
    # Retain: the PV is Released and stays, so does the volume
    kube.merge_patch(PV, kept, None, {"spec": {"persistentVolumeReclaimPolicy": "Retain"}})
    kube.delete(PVC, "kept", "apps")
    assert fake.deleted[3:] == [("PersistentVolumeClaim", "apps", "kept")]
    assert kube.get(PV, kept)["status"]["phase"] == "Released"
    ks = kube.get(LH_VOLUME, kept, LONGHORN_NS)["status"]["kubernetesStatus"]
    assert ks["pvStatus"] == "Released" and ks["lastPVCRefAt"]
    assert fake.rejected() == []


def test_a_claim_mounted_by_a_pod_stays_terminating_until_the_pod_goes(
        kube: Kube, fake_kube: tuple[Path, FakeKube]) -> None:
    from drkit.kube import POD, PVC

    _, fake = fake_kube
    volume = fake.provision("apps", "data", 4 * MIB)
    _mounting_pod(fake, "db-0", "data")
    kube.delete(PVC, "data", "apps")
    pvc = kube.get(PVC, "data", "apps")
    assert pvc["metadata"]["deletionTimestamp"] and pvc["status"]["phase"] == "Bound"  # Terminating
    assert fake.deleted == [] and kube.get(LH_VOLUME, volume, LONGHORN_NS)
    with pytest.raises(KubeConflict):  # the name stays taken while it terminates
        kube.create(PVC, {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                          "metadata": {"name": "data", "namespace": "apps"},
                          "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}})
    kube.delete(POD, "db-0", "apps")  # the workload goes: so do the claim, the PV and the volume (Delete)
    assert fake.deleted == [("Pod", "apps", "db-0"), ("PersistentVolumeClaim", "apps", "data"),
                            ("Volume", LONGHORN_NS, volume), ("PersistentVolume", "", volume)]


def test_deleting_a_longhorn_volume_deletes_the_pv_and_claim_its_status_names(
        kube: Kube, fake_kube: tuple[Path, FakeKube]) -> None:
    from drkit.kube import PVC

    _, fake = fake_kube
    linked = fake.provision("apps", "linked", 4 * MIB)
    unlinked = fake.provision("apps", "unlinked", 4 * MIB)
    kube.delete(LH_VOLUME, linked, LONGHORN_NS)  # what longhorn-manager's volume controller does
    assert ("PersistentVolumeClaim", "apps", "linked") in fake.deleted
    assert ("PersistentVolume", "", linked) in fake.deleted
    # with the link cleared through the status subresource, PV and claim stay
    kube.merge_patch_status(LH_VOLUME, unlinked, LONGHORN_NS, {"status": {"kubernetesStatus": {
        "pvName": "", "pvStatus": "", "lastPVCRefAt": "2026-01-01T00:00:00Z"}}})
    assert kube.get(LH_VOLUME, unlinked, LONGHORN_NS)["spec"]["size"] == str(4 * MIB)  # spec untouched
    n = len(fake.deleted)
    kube.delete(LH_VOLUME, unlinked, LONGHORN_NS)
    assert fake.deleted[n:] == [("Volume", LONGHORN_NS, unlinked)]
    assert kube.get(PVC, "unlinked", "apps")["status"]["phase"] == "Bound" and kube.get(PV, unlinked)
    # ... until Longhorn's PV controller resyncs: then it links them again
    fake.seed(VOLUME | {"metadata": {"name": unlinked, "namespace": LONGHORN_NS}})
    fake.resync_pv_controller()
    assert kube.get(LH_VOLUME, unlinked, LONGHORN_NS)["status"]["kubernetesStatus"]["pvName"] == unlinked


def test_a_volume_whose_replicas_are_gone_is_faulted_and_never_attaches(
        kube: Kube, fake_kube: tuple[Path, FakeKube]) -> None:
    _, fake = fake_kube
    volume = fake.provision("apps", "data", 4 * MIB, attach=False)
    fake.volume_path(volume).write_bytes(b"\x01" * 4 * MIB)
    (replica,) = fake.list("Replica", LONGHORN_NS)
    assert replica["spec"]["volumeName"] == volume and replica["spec"]["failedAt"] == ""
    fake.lose_replicas(volume)
    (replica,) = fake.list("Replica", LONGHORN_NS)
    assert replica["spec"]["failedAt"]
    vol = kube.get(LH_VOLUME, volume, LONGHORN_NS)
    assert (vol["status"]["robustness"], vol["status"]["state"]) == ("faulted", "detached")
    assert fake.volume_path(volume).read_bytes() == bytes(4 * MIB)  # the data is gone
    kube.merge_patch(LH_VOLUME_ATTACHMENT, volume, LONGHORN_NS, {"spec": {"attachmentTickets": {"t": {
        "id": "t", "type": "longhorn-api", "nodeID": fake.node_id, "parameters": {"disableFrontend": "false"}}}}})
    va = kube.get(LH_VOLUME_ATTACHMENT, volume, LONGHORN_NS)
    assert va["status"]["attachmentTicketStatuses"]["t"]["satisfied"] is False
    assert kube.get(LH_VOLUME, volume, LONGHORN_NS)["status"]["state"] == "detached"
    assert not fake.device_path(volume).exists()


def test_the_audit_names_requests_a_real_server_would_reject(kube: Kube, fake_kube: tuple[Path, FakeKube]) -> None:
    _, fake = fake_kube
    assert kube.get_or_none(PV, "nope") is None  # a probe: not a rejection
    assert fake.rejected() == []
    with pytest.raises(KubeInvalid):
        kube.create(LH_VOLUME, vol(frontend=""))
    (entry,) = fake.rejected()
    assert (entry.method, entry.code) == ("POST", 422) and "frontend" in entry.message
