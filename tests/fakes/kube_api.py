"""A FAKE Kubernetes API server for tests. It is not Kubernetes and not Longhorn.

There is no API server on the test machines, so drkit's Kubernetes-facing code (which
talks through the official ``kubernetes`` client only) is tested against this small
threaded HTTP server on ``127.0.0.1:<free port>``. It serves the paths drkit uses:

- core v1: namespaces, secrets, configmaps, persistentvolumes, persistentvolumeclaims,
  pods (list in one namespace or across all, ``labelSelector``/``fieldSelector``, get,
  create, replace, merge patch, delete) and ``pods/exec`` over a websocket (channel
  protocol v4; the command runs on the test host unless ``exec_handler`` is set);
- ``storage.k8s.io/v1``: storageclasses;
- ``argoproj.io/v1alpha1``: applications, appprojects, applicationsets;
- ``cert-manager.io/v1``: issuers, clusterissuers;
- ``longhorn.io/v1beta2``: every kind of Longhorn v1.12.1 (validated against the real
  CRD schemas); Volume, Snapshot, Backup, BackupVolume, VolumeAttachment, Node and
  BackupTarget also *behave* (see below).

Validation (what a real API server does, and where the fake is deliberately stricter):

- every object received is checked against its schema (``jsonschema``; see
  :mod:`tests.fakes.schemas`): types, enums, required fields. A failure is ``422
  Invalid`` like the real server. ``null`` in a field that is not ``nullable`` is
  dropped first, as the real server does.
- unknown fields: the ``fieldValidation`` query parameter is honoured (``Strict``:
  ``400 BadRequest`` naming the field; ``Warn``: pruned with a ``Warning`` header;
  ``Ignore``: pruned). **Without the parameter the fake defaults to Strict** (a real
  server defaults to Warn and silently drops the field), so that a misspelt field fails
  a test instead of a restore. ``FakeKube(unknown_fields="Warn")`` restores the real
  default.
- ObjectMeta: ``metadata.name`` required (DNS-1123), namespace in the body must match
  the URL; ``uid``, ``resourceVersion``, ``creationTimestamp``, ``generation`` are
  assigned by the server. A create with ``metadata.resourceVersion`` set fails with
  ``500 resourceVersion should not be set on objects to be created`` (the real etcd3
  store's answer; like it, an unparsable value such as ``-1`` is ignored).
- replace (PUT) with a stale ``resourceVersion`` is ``409 Conflict``; a custom resource
  replaced without ``resourceVersion`` is ``422`` (CRs do not allow unconditional
  updates; core kinds do).
- status: for kinds with a status subresource (all Longhorn kinds, ApplicationSet,
  PV, PVC, Namespace) the ``status`` in a create/replace/patch body is ignored.
- patches: ``application/merge-patch+json`` (RFC 7386) everywhere;
  ``application/strategic-merge-patch+json`` on custom resources is ``415
  UnsupportedMediaType`` like the real server (on core kinds the fake applies it as a
  merge patch: good enough for the maps drkit patches); JSON patch and apply patch are
  ``415`` (not implemented by the fake).
- authentication: a bearer token is required (``401`` otherwise).

Longhorn behaviour imitated (DESIGN.md section 3):

- webhooks: a Volume without ``spec.frontend`` is refused (422); ``numberOfReplicas``
  defaults to 3; ``size`` is rounded up to a multiple of 2 MiB; a Snapshot of a missing
  Volume and a Backup of a missing Snapshot are refused (422); a Volume whose
  ``fromBackup`` names no known Backup is refused (422); ``dataSource`` must be
  ``snap://VOLUME/SNAPSHOT`` of an existing, ready snapshot.
- each Volume has a backing file ``STATE/volumes/NAME.img`` (sparse, ``size`` bytes)
  and a VolumeAttachment of the same name. Attaching is done the way Longhorn v1.5+
  does it: an entry in ``spec.attachmentTickets`` of the Volume's VolumeAttachment
  (``{id, type, nodeID, parameters: {disableFrontend: "false"}}``). A ticket for the
  fake's node is satisfied after ``attach_delay``: status ticket ``satisfied: true``,
  Volume ``status.state: attached`` and ``currentNodeID``, and the "block device"
  ``DEVICE_DIR/NAME`` appears (a hard link to the backing file, so writes land in the
  volume). With no tickets left the volume detaches and the device disappears; deleting
  the Volume removes its attachment, device, backing file and its Snapshots.
- Snapshot (``spec.createSnapshot: true``): the backing file is copied at creation
  time (the snapshot content); ``status.readyToUse`` becomes true after
  ``snapshot_delay``.
- a Volume with ``spec.dataSource: snap://VOL/SNAP`` is a clone: its backing file is
  a copy of that snapshot content; ``status.cloneStatus.state`` goes ``initiated`` ->
  ``completed`` after ``clone_delay`` (it cannot be attached before).
- Backup (label ``backup-volume``, ``spec.snapshotName``): ``status.state`` goes
  ``InProgress`` -> ``Completed`` after ``backup_delay``, with ``status.url`` as
  Longhorn writes it (``<backup target URL>?backup=<name>&volume=<volume>``) and a
  BackupVolume object; the snapshot content is kept as the backup content, so a
  Volume with ``spec.fromBackup: URL`` restores it (``status.restoreRequired`` true
  until ``restore_delay`` passes).
- injectable failures: ``fail_snapshots``, ``fail_backups``, ``fail_clones`` (an error
  message: the object ends in its error state) and ``stall_snapshots``,
  ``stall_backups``, ``stall_attach`` (never finishes, for timeouts), ``break_devices``
  (an attached volume's device cannot be read).

Core behaviour imitated (the PV, PVC-protection and PV-protection controllers):

- claims and PVs get ``kubernetes.io/pvc-protection``/``pv-protection`` on creation; a
  DELETE marks them Terminating (``deletionTimestamp``) until no pod that is not
  Succeeded/Failed mounts the claim, and until the PV is no longer Bound; other
  finalizers are treated as done at once (their controllers are not modelled);
- a claim that goes releases its PV; with reclaim policy ``Delete`` the Longhorn
  volume behind it and then the PV are deleted (``Retain``: the PV stays Released);
- Longhorn's kubernetes-pv controller keeps ``status.kubernetesStatus`` of a Volume
  (pvName, pvStatus, pvcName, namespace, lastPVCRefAt) on PV events
  (:meth:`FakeKube.resync_pv_controller` is its periodic resync), and deleting a
  Volume deletes the PV it names and, while ``lastPVCRefAt`` is empty, the claim
  (longhorn-manager ``controller/volume_controller.go``);
- each Volume has Replica CRs; :meth:`FakeKube.lose_replicas` makes a volume what a
  datastore restore onto a new disk leaves: replicas failed, ``faulted``, zeros, never
  attached;
- ``FakeKube.audit`` records every request and its answer; :meth:`FakeKube.rejected`
  lists what a real server would have refused or pruned.

State changes are applied lazily: before every request (and every handle accessor)
the fake runs the transitions whose time has come, so nothing races the tests.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest
import yaml

from tests.fakes import kube_kubectl, schemas

MIB = 1024 * 1024
LONGHORN_NS = "longhorn-system"
LOCAL_PATH_PROVISIONER = "rancher.io/local-path"
TOKEN = "fake-token-for-tests"
PROTECTION_FINALIZERS = ("kubernetes.io/pvc-protection", "kubernetes.io/pv-protection")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class ApiError(Exception):
    """An error the fake answers with a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, *, name: str = "", kind: str = "") -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.name, self.kind = code, reason, message, name, kind

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": {"name": self.name, "kind": self.kind},
            "code": self.code,
        }


def _invalid(kind: str, name: str, message: str) -> ApiError:
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {message}', name=name, kind=kind)


def _webhook_denied(kind: str, name: str, message: str) -> ApiError:
    # Longhorn's admission webhook answers like this (422 through the API server).
    return ApiError(
        422,
        "Invalid",
        f'admission webhook "validator.longhorn.io" denied the request: {message}',
        name=name,
        kind=kind,
    )


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for core
    version: str
    plural: str
    kind: str
    namespaced: bool
    schema: dict[str, Any]
    custom: bool
    status_subresource: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


def _builtin_types() -> list[ResourceType]:
    core = [
        ("namespaces", "Namespace", False, schemas.NAMESPACE, True),
        ("secrets", "Secret", True, schemas.SECRET, False),
        ("configmaps", "ConfigMap", True, schemas.CONFIGMAP, False),
        ("persistentvolumes", "PersistentVolume", False, schemas.PERSISTENT_VOLUME, True),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True, schemas.PERSISTENT_VOLUME_CLAIM, True),
        ("pods", "Pod", True, schemas.POD, True),
    ]
    types = [ResourceType("", "v1", p, k, ns, s, False, st) for p, k, ns, s, st in core]
    types.append(ResourceType("storage.k8s.io", "v1", "storageclasses", "StorageClass", False, schemas.STORAGE_CLASS,
                              False, False))
    types += [
        ResourceType("argoproj.io", "v1alpha1", "applications", "Application", True, schemas.APPLICATION, True, False),
        ResourceType("argoproj.io", "v1alpha1", "appprojects", "AppProject", True, schemas.APPPROJECT, True, False),
        ResourceType(
            "argoproj.io", "v1alpha1", "applicationsets", "ApplicationSet", True, schemas.APPLICATIONSET, True, True
        ),
        ResourceType("cert-manager.io", "v1", "issuers", "Issuer", True, schemas.CERT_MANAGER_ISSUER, True, True),
        ResourceType(
            "cert-manager.io", "v1", "clusterissuers", "ClusterIssuer", False, schemas.CERT_MANAGER_ISSUER, True, True
        ),
    ]
    for kind, crd in schemas.longhorn_crds().items():
        types.append(
            ResourceType(
                "longhorn.io", "v1beta2", crd["plural"], kind, crd["namespaced"], crd["schema"], True,
                crd["status_subresource"],
            )
        )
    # for kubectl in the runbooks (tests.fakes.kube_kubectl): nodes, workloads with a scale subresource
    types += [
        ResourceType("", "v1", "nodes", "Node", False, schemas.NODE, False, True),
        ResourceType("apps", "v1", "deployments", "Deployment", True, schemas.DEPLOYMENT, False, True),
        ResourceType("apps", "v1", "statefulsets", "StatefulSet", True, schemas.STATEFULSET, False, True),
    ]
    return types


# --- label and field selectors ---------------------------------------------------------
_SEL_SET = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_SEL_EQ = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")
_SEL_EXISTS = re.compile(r"^\s*(!?)\s*([A-Za-z0-9./_-]+)\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def parse_label_selector(text: str) -> Callable[[dict[str, str]], bool]:
    """Compile a Kubernetes label selector; ApiError 400 when malformed."""
    tests: list[Callable[[dict[str, str]], bool]] = []
    for part in _split_selector(text or ""):
        if m := _SEL_SET.match(part):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            if op == "in":
                tests.append(lambda lb, k=key, vs=values: lb.get(k) in vs)
            else:
                tests.append(lambda lb, k=key, vs=values: lb.get(k) not in vs)
        elif m := _SEL_EQ.match(part):
            key, op, value = m.groups()
            if op == "!=":
                tests.append(lambda lb, k=key, v=value: lb.get(k) != v)
            else:
                tests.append(lambda lb, k=key, v=value: lb.get(k) == v)
        elif m := _SEL_EXISTS.match(part):
            neg, key = m.groups()
            tests.append((lambda lb, k=key: k not in lb) if neg else (lambda lb, k=key: k in lb))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: invalid label selector {text!r}")
    return lambda labels: all(t(labels) for t in tests)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _quantity_bytes(q: Any) -> int:
    text = str(q)
    units = {"Ki": 1024, "Mi": MIB, "Gi": 1024**3, "Ti": 1024**4, "k": 1000, "M": 10**6, "G": 10**9}
    for suffix, mult in units.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * mult
    return int(text)


@dataclass(frozen=True)
class AuditEntry:
    """One request the fake answered."""

    method: str
    path: str
    code: int
    message: str = ""
    warnings: tuple[str, ...] = ()


@dataclass
class FakeKube:
    """The fake's state and its knobs. Create with :func:`start_fake_kube`."""

    state_dir: Path
    device_dir: Path
    node_id: str = "node-1"
    backup_target_url: str = "s3://drkit-test@us-east-1/backupstore"
    unknown_fields: str = "Strict"
    # delays (seconds) and injected failures
    snapshot_delay: float = 0.0
    backup_delay: float = 0.0
    clone_delay: float = 0.0
    attach_delay: float = 0.0
    restore_delay: float = 0.0
    fail_snapshots: str | None = None
    fail_backups: str | None = None
    fail_clones: str | None = None
    stall_snapshots: bool = False
    stall_backups: bool = False
    stall_attach: bool = False
    break_devices: bool = False
    """Attached volumes' devices appear as unreadable directories (a read failure)."""
    exec_handler: Callable[[str, str, str, list[str]], tuple[int, bytes, bytes]] | None = None
    """Runs ``pods/exec`` commands: (namespace, pod, container, argv) -> (exit status,
    stdout, stderr). Default: the command runs on the test host, as if the container
    were the host."""
    execs: list[tuple[str, str, str, list[str]]] = field(default_factory=list)
    forbidden: set[tuple[str, str]] = field(default_factory=set)
    """(HTTP method, plural) pairs answered with 403 Forbidden (RBAC denies them)."""
    allowed: set[tuple[str, str, str]] | None = None
    """RBAC as an allow-list of (verb, API group, resource) — verbs get, list, create,
    update, patch, delete; resources as in a Role (``volumes/status``): every other
    request is 403 Forbidden. None: everything is allowed."""
    pv_controller_races: bool = False
    """Longhorn's kubernetes-pv controller resyncs right after a Volume's status is
    patched (its 30 s resync falling into that moment)."""
    version: dict[str, str] = field(default_factory=lambda: {
        "major": "1", "minor": "31", "gitVersion": "v1.31.4+k3s1", "platform": "linux/amd64"})
    """What ``GET /version`` answers."""
    # observations for assertions
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    deleted: list[tuple[str, str, str]] = field(default_factory=list)
    """(kind, namespace, name) of every object that left the store, by a client's
    DELETE or by a controller the fake imitates (reclaim policy, Longhorn)."""
    audit: list[AuditEntry] = field(default_factory=list)
    """Every HTTP request with the fake's answer (see :meth:`rejected`)."""

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.types = {(t.group, t.plural): t for t in _builtin_types()}
        self.by_kind = {(t.api_version, t.kind): t for t in self.types.values()}
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._rv = 1000
        self._pending: list[tuple[float, Callable[[], None]]] = []
        self._validators: dict[tuple[str, str], jsonschema.Draft7Validator] = {}
        (self.state_dir / "volumes").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "snapshots").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "backups").mkdir(parents=True, exist_ok=True)
        self.device_dir.mkdir(parents=True, exist_ok=True)
        for ns in ("default", "kube-system", LONGHORN_NS):
            self.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        self.seed(
            {
                "apiVersion": "longhorn.io/v1beta2",
                "kind": "Node",
                "metadata": {"name": self.node_id, "namespace": LONGHORN_NS},
                "spec": {"allowScheduling": True, "name": self.node_id},
            }
        )
        self.seed(
            {
                "apiVersion": "longhorn.io/v1beta2",
                "kind": "BackupTarget",
                "metadata": {"name": "default", "namespace": LONGHORN_NS},
                "spec": {"backupTargetURL": self.backup_target_url, "pollInterval": "5m0s"},
            }
        )

    # ------------------------------------------------------------------ handle API
    def seed(self, body: dict[str, Any], *, status: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create an object as if a client had POSTed it (same validation and hooks)."""
        rtype = self.by_kind.get((body.get("apiVersion"), body.get("kind")))
        if rtype is None:
            raise KeyError(f"the fake does not serve {body.get('apiVersion')} {body.get('kind')}")
        ns = body.get("metadata", {}).get("namespace") if rtype.namespaced else None
        if rtype.namespaced and not ns:
            ns = "default"
        with self.lock:
            created = self.create(rtype, ns, copy.deepcopy(body), "Strict")
            if status is not None:
                created["status"] = merge_patch(created.get("status") or {}, status)
                self._bump(created)
            return copy.deepcopy(created)

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """A copy of one object (``kind`` as in the object, e.g. "Volume"), or None."""
        with self.lock:
            self.tick()
            rtype = self._type_of_kind(kind)
            found = self.objects.get((rtype.group, rtype.plural, namespace or "", name))
            return copy.deepcopy(found) if found else None

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            self.tick()
            rtype = self._type_of_kind(kind)
            return [
                copy.deepcopy(o)
                for (g, p, ns, _), o in sorted(self.objects.items())
                if (g, p) == (rtype.group, rtype.plural) and (namespace is None or ns == namespace)
            ]

    def set_status(self, kind: str, namespace: str | None, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge *status* into an object's status (what a controller would do)."""
        with self.lock:
            rtype = self._type_of_kind(kind)
            obj = self._must_get(rtype, namespace, name)
            obj["status"] = merge_patch(obj.get("status") or {}, status)
            self._bump(obj)
            return copy.deepcopy(obj)

    def rejected(self) -> list[AuditEntry]:
        """Requests a real API server would have refused or pruned: every answer of 400
        or more except a 404 to a read (drkit probes with GET), and every request whose
        unknown fields were dropped with a warning."""
        with self.lock:
            return [a for a in self.audit
                    if (a.code >= 400 and not (a.code == 404 and a.method == "GET")) or a.warnings]

    def mutations(self) -> list[AuditEntry]:
        """The requests that asked for a change (POST, PUT, PATCH, DELETE)."""
        with self.lock:
            return [a for a in self.audit if a.method in ("POST", "PUT", "PATCH", "DELETE")]

    def volume_path(self, name: str) -> Path:
        """The backing file of Longhorn volume *name* (its data)."""
        return self.state_dir / "volumes" / f"{name}.img"

    def device_path(self, name: str) -> Path:
        return self.device_dir / name

    def provision(
        self,
        namespace: str,
        pvc_name: str,
        size: int,
        *,
        storage_class: str = "longhorn",
        fs_type: str = "ext4",
        labels: dict[str, str] | None = None,
        attach: bool = True,
        encrypted_with: dict[str, str] | None = None,
    ) -> str:
        """Do what Longhorn's CSI provisioner does for a new PVC: Volume ``pvc-<uid>``,
        PV (``driver.longhorn.io``) and a bound PVC; attached to the node (a workload
        uses it) when *attach*. With *encrypted_with* (``{name, namespace}`` of the
        passphrase Secret, as an encrypted StorageClass gives it) the Volume is
        ``encrypted`` and the PV carries node-stage and node-publish secret references.
        Returns the volume name."""
        with self.lock:
            if self.get("Namespace", None, namespace) is None:
                self.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            pvc = self.seed(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": pvc_name, "namespace": namespace, "labels": labels or {}},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": str(size)}},
                        "storageClassName": storage_class,
                        "volumeMode": "Filesystem",
                    },
                }
            )
            volume = f"pvc-{pvc['metadata']['uid']}"
            self.seed(
                {
                    "apiVersion": "longhorn.io/v1beta2",
                    "kind": "Volume",
                    "metadata": {"name": volume, "namespace": LONGHORN_NS},
                    "spec": {"size": str(size), "frontend": "blockdev", "numberOfReplicas": 1, "accessMode": "rwo",
                             **({"encrypted": True} if encrypted_with else {})},
                }
            )
            secret_refs = {"nodeStageSecretRef": dict(encrypted_with), "nodePublishSecretRef": dict(encrypted_with)} \
                if encrypted_with else {}
            self.seed(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {
                        "name": volume,
                        "annotations": {"pv.kubernetes.io/provisioned-by": "driver.longhorn.io"},
                    },
                    "spec": {
                        "capacity": {"storage": str(size)},
                        "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Delete",
                        "storageClassName": storage_class,
                        "volumeMode": "Filesystem",
                        "csi": {
                            "driver": "driver.longhorn.io",
                            "volumeHandle": volume,
                            "fsType": fs_type,
                            "volumeAttributes": {"numberOfReplicas": "1", "staleReplicaTimeout": "30",
                                                 **({"encrypted": "true"} if encrypted_with else {})},
                            **secret_refs,
                        },
                        "claimRef": {
                            "apiVersion": "v1",
                            "kind": "PersistentVolumeClaim",
                            "namespace": namespace,
                            "name": pvc_name,
                            "uid": pvc["metadata"]["uid"],
                        },
                    },
                }
            )
            key = ("", "persistentvolumeclaims", namespace, pvc_name)
            self.objects[key]["spec"]["volumeName"] = volume
            self._bind_claims()
            if attach:
                self._add_ticket(volume, f"csi-{uuid.uuid4().hex}", "csi-attacher")
            self.tick()
            return volume

    def install_local_path(self, storage_root: Path, *, default_class: bool = True) -> None:
        """What K3s deploys for its local-path provisioner: the ``local-path``
        StorageClass (``rancher.io/local-path``, Delete, WaitForFirstConsumer) and the
        ``local-path-config`` ConfigMap of ``kube-system`` whose ``config.json`` puts
        volumes under *storage_root* on every node."""
        annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if default_class else {}
        self.seed({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                   "metadata": {"name": "local-path", "annotations": annotations},
                   "provisioner": LOCAL_PATH_PROVISIONER, "reclaimPolicy": "Delete",
                   "volumeBindingMode": "WaitForFirstConsumer"})
        config = {"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [str(storage_root)]}]}
        self.seed({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "local-path-config", "namespace": "kube-system"},
                   "data": {"config.json": json.dumps(config, indent=2), "setup": "#!/bin/sh\nmkdir -m 0777 -p \"$VOL_DIR\"\n",
                            "teardown": "#!/bin/sh\nrm -rf \"$VOL_DIR\"\n"}})

    def provision_local_path(
        self,
        namespace: str,
        claim: str,
        storage_root: Path,
        *,
        size: str = "1Gi",
        volume_type: str = "hostPath",
        storage_class: str = "local-path",
        labels: dict[str, str] | None = None,
        host_root: Path | None = None,
    ) -> dict[str, Any]:
        """Do what the local-path provisioner does for a claim once a pod is scheduled:
        a bound PVC, a PV ``pvc-<uid>`` (``Delete``, node affinity to this node) whose
        ``hostPath`` (type DirectoryOrCreate) or ``local`` path is
        ``<storage_root>/pvc-<uid>_<namespace>_<claim>``, and that directory (0777),
        made under *host_root* when given (the node's ``/`` lives there). Returns the PV."""
        with self.lock:
            if self.get("Namespace", None, namespace) is None:
                self.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            pvc = self.seed({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": namespace, "labels": labels or {},
                             "annotations": {"volume.kubernetes.io/selected-node": self.node_id,
                                             "volume.kubernetes.io/storage-provisioner": LOCAL_PATH_PROVISIONER}},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}},
                         "storageClassName": storage_class, "volumeMode": "Filesystem"},
            })
            name = f"pvc-{pvc['metadata']['uid']}"
            path = storage_root / f"{name}_{namespace}_{claim}"
            made = host_root / str(path).lstrip("/") if host_root else path
            made.mkdir(parents=True)
            made.chmod(0o777)
            source = {"hostPath": {"path": str(path), "type": "DirectoryOrCreate"}} if volume_type == "hostPath" \
                else {"local": {"path": str(path)}}
            pv = self.seed({
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": LOCAL_PATH_PROVISIONER,
                                                           "local.path.provisioner/selected-node": self.node_id},
                             "finalizers": ["kubernetes.io/pv-protection"]},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": storage_class,
                    "volumeMode": "Filesystem",
                    **source,
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": [self.node_id]}]}]}},
                    "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": namespace,
                                 "name": claim, "uid": pvc["metadata"]["uid"]},
                },
            })
            self.objects[("", "persistentvolumeclaims", namespace, claim)]["spec"]["volumeName"] = name
            self._bind_claims()
            return self.get("PersistentVolume", None, pv["metadata"]["name"]) or pv

    def add_pod(self, namespace: str, name: str, claims: list[str], *, owner: tuple[str, str] | None = None,
                phase: str = "Running") -> dict[str, Any]:
        """A pod (of *owner*: ``(kind, name)``) that mounts *claims*, in *phase*."""
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if owner is not None:
            meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                        "uid": str(uuid.uuid4()), "controller": True}]
        return self.seed({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "app", "image": "busybox",
                                     "volumeMounts": [{"name": f"v{i}", "mountPath": f"/data{i}"}
                                                      for i in range(len(claims))]}],
                     "volumes": [{"name": f"v{i}", "persistentVolumeClaim": {"claimName": c}}
                                 for i, c in enumerate(claims)],
                     "nodeName": self.node_id},
        }, status={"phase": phase})

    def volume_names(self) -> list[str]:
        return [o["metadata"]["name"] for o in self.list("Volume", LONGHORN_NS)]

    # ------------------------------------------------------------------ internals
    def _type_of_kind(self, kind: str) -> ResourceType:
        for t in self.types.values():
            if t.kind == kind:
                return t
        raise KeyError(kind)

    def _all(self, kind: str) -> list[dict[str, Any]]:
        """The live objects of one kind (no copies, no tick: for use inside the fake)."""
        rtype = self._type_of_kind(kind)
        return [o for (g, p, _, _), o in self.objects.items() if (g, p) == (rtype.group, rtype.plural)]

    def _must_get(self, rtype: ResourceType, ns: str | None, name: str) -> dict[str, Any]:
        found = self.objects.get((rtype.group, rtype.plural, ns or "", name))
        if found is None:
            group = f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural
            raise ApiError(404, "NotFound", f'{group} "{name}" not found', name=name, kind=rtype.plural)
        return found

    def _bump(self, obj: dict[str, Any]) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)

    def after(self, delay: float, action: Callable[[], None]) -> None:
        self._pending.append((time.monotonic() + delay, action))

    def tick(self) -> None:
        """Run the transitions that are due (called before every request)."""
        with self.lock:
            for _ in range(20):
                now = time.monotonic()
                due = [p for p in self._pending if p[0] <= now]
                if not due:
                    self._collect()
                    return
                self._pending = [p for p in self._pending if p[0] > now]
                for _, action in due:
                    action()

    def validate(self, rtype: ResourceType, body: dict[str, Any], mode: str) -> None:
        name = (body.get("metadata") or {}).get("name", "")
        if body.get("kind") not in (None, rtype.kind) or body.get("apiVersion") not in (None, rtype.api_version):
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({body.get('apiVersion')}) does not match the expected API version "
                f"({rtype.api_version}) or kind {body.get('kind')!r} is not {rtype.kind!r}",
            )
        meta = body.get("metadata")
        if not isinstance(meta, dict):
            raise _invalid(rtype.kind, name, "metadata: Required value")
        schemas.prune_nulls(body, rtype.schema)
        unknown_meta = schemas.unknown_fields(meta, schemas.OBJECT_META, ".metadata", prune=mode != "Strict")
        unknown = unknown_meta + schemas.unknown_fields(body, rtype.schema, prune=mode != "Strict")
        if unknown:
            if mode == "Strict":
                fields = ", ".join(f'unknown field "{p.lstrip(".")}"' for p in unknown)
                raise ApiError(400, "BadRequest", f"{rtype.kind} in version \"{rtype.version}\" cannot be handled "
                               f"as a {rtype.kind}: strict decoding error: {fields}", name=name, kind=rtype.kind)
            if mode == "Warn":
                self.warnings += [f'unknown field "{p.lstrip(".")}"' for p in unknown]
        key = (rtype.group, rtype.plural)
        if key not in self._validators:
            self._validators[key] = jsonschema.Draft7Validator(schemas.to_jsonschema(rtype.schema))
        meta_validator = jsonschema.Draft7Validator(schemas.to_jsonschema(schemas.OBJECT_META))
        errors = [(".metadata", e) for e in meta_validator.iter_errors(meta)]
        errors += [("", e) for e in self._validators[key].iter_errors(body)]
        if errors:
            prefix, err = errors[0]
            where = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
            raise _invalid(rtype.kind, name, f"{where.lstrip('.') or '<root>'}: {err.message}")
        if not name or not _DNS1123.match(name) or len(name) > 253:
            raise _invalid(rtype.kind, name, f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain "
                           "must consist of lower case alphanumeric characters, '-' or '.'")
        if rtype.kind == "Secret":
            import base64
            import binascii

            for k, v in (body.get("data") or {}).items():
                try:
                    base64.b64decode(v, validate=True)
                except (binascii.Error, ValueError):
                    raise _invalid("Secret", name, f"data[{k}]: Invalid value: illegal base64 data") from None
        if rtype.kind == "PersistentVolume":
            spec = body.get("spec") or {}
            if not spec.get("capacity", {}).get("storage"):
                raise _invalid(rtype.kind, name, "spec.capacity: Required value")
            if not spec.get("accessModes"):
                raise _invalid(rtype.kind, name, "spec.accessModes: Required value")
            sources = [s for s in ("csi", "hostPath", "local", "nfs") if s in spec]
            if len(sources) != 1:
                raise _invalid(rtype.kind, name, "spec: Required value: must specify a volume type")
            if "local" in spec and not spec.get("nodeAffinity"):
                raise _invalid(rtype.kind, name, "spec.nodeAffinity: Required value: Local volume requires node "
                               "affinity")
        if rtype.kind == "PersistentVolumeClaim":
            spec = body.get("spec") or {}
            if not spec.get("accessModes"):
                raise _invalid(rtype.kind, name, "spec.accessModes: Required value: at least 1 access mode is required")
            if not (spec.get("resources") or {}).get("requests", {}).get("storage"):
                raise _invalid(rtype.kind, name, "spec.resources[storage]: Required value")

    # ---- create / replace / patch / delete
    def create(self, rtype: ResourceType, ns: str | None, body: dict[str, Any], mode: str) -> dict[str, Any]:
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if rtype.namespaced:
            if meta.get("namespace") not in (None, ns):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                               "sent on the request")
            meta["namespace"] = ns
            if ("", "namespaces", "", ns) not in self.objects:
                raise ApiError(404, "NotFound", f'namespaces "{ns}" not found', name=ns or "", kind="namespaces")
        self.validate(rtype, body, mode)
        name = meta["name"]
        rv = str(meta.get("resourceVersion") or "")
        if rv.isdigit() and int(rv) != 0:  # the etcd3 store's check (an unparsable value slips through)
            raise ApiError(500, "", "resourceVersion should not be set on objects to be created")
        key = (rtype.group, rtype.plural, ns or "", name)
        if key in self.objects:
            group = f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural
            raise ApiError(409, "AlreadyExists", f'{group} "{name}" already exists', name=name, kind=rtype.plural)
        body["apiVersion"], body["kind"] = rtype.api_version, rtype.kind
        if rtype.status_subresource:
            body.pop("status", None)
        if rtype.kind == "Secret" and "stringData" in body:
            import base64

            data = body.setdefault("data", {})
            for k, v in body.pop("stringData").items():
                data[k] = base64.b64encode(v.encode()).decode()
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        protection = {"PersistentVolumeClaim": "kubernetes.io/pvc-protection",
                      "PersistentVolume": "kubernetes.io/pv-protection"}.get(rtype.kind)
        if protection and protection not in (meta.get("finalizers") or []):  # the StorageObjectInUseProtection plugin
            meta["finalizers"] = [*(meta.get("finalizers") or []), protection]
        self._longhorn_admit(rtype, body)
        self._bump(body)
        self.objects[key] = body
        self._after_create(rtype, body)
        kube_kubectl.reconcile(self, rtype, body)
        return body

    def replace(self, rtype: ResourceType, ns: str | None, name: str, body: dict[str, Any], mode: str,
                *, patch: bool = False) -> dict[str, Any]:
        current = self._must_get(rtype, ns, name)
        meta = body.setdefault("metadata", {})
        if meta.get("name") not in (None, name):
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        meta["name"] = name
        if rtype.namespaced:
            meta.setdefault("namespace", ns)
        self.validate(rtype, body, mode)
        rv = meta.get("resourceVersion")
        if not rv and rtype.custom and not patch:
            raise _invalid(rtype.kind, name, "metadata.resourceVersion: Invalid value: 0x0: must be specified for an "
                           "update")
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rtype.plural} "{name}": the object has '
                           "been modified; please apply your changes to the latest version and try again",
                           name=name, kind=rtype.plural)
        for k in ("uid", "creationTimestamp"):
            meta[k] = current["metadata"][k]
        body["apiVersion"], body["kind"] = rtype.api_version, rtype.kind
        if rtype.status_subresource:
            body.pop("status", None)
            if "status" in current:
                body["status"] = current["status"]
        if rtype.kind == "Volume":
            self._longhorn_admit(rtype, body)
        spec_changed = body.get("spec") != current.get("spec")
        meta["generation"] = current["metadata"].get("generation", 1) + (1 if spec_changed else 0)
        self._bump(body)
        self.objects[(rtype.group, rtype.plural, ns or "", name)] = body
        if rtype.kind == "VolumeAttachment":
            self._reconcile_attachment(name)
        elif rtype.kind == "PersistentVolume":
            self.sync_kubernetes_status(name)
        elif rtype.kind == "Pod":
            self._collect()
        kube_kubectl.reconcile(self, rtype, body)
        return body

    def delete(self, rtype: ResourceType, ns: str | None, name: str) -> dict[str, Any]:
        """DELETE: an object with finalizers gets ``deletionTimestamp`` and stays
        (Terminating) until they are gone; the protection finalizers are removed by
        :meth:`_collect` as the real controllers do."""
        obj = self._must_get(rtype, ns, name)
        meta = obj["metadata"]
        if meta.get("finalizers"):  # other controllers' finalizers: done at once (no such controller here)
            meta["finalizers"] = [f for f in meta["finalizers"] if f in PROTECTION_FINALIZERS]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                meta["deletionGracePeriodSeconds"] = 0
                self._bump(obj)
            self._collect()
            current = self.objects.get((rtype.group, rtype.plural, ns or "", name))
            return copy.deepcopy(current if current is not None else obj)
        return self._remove(rtype, ns, name)

    def _delete_if_present(self, kind: str, ns: str | None, name: str) -> None:
        """A deletion a controller sends (Longhorn, the PV controller): a missing
        object is fine."""
        rtype = self._type_of_kind(kind)
        if (rtype.group, rtype.plural, ns or "", name) in self.objects:
            self.delete(rtype, ns, name)

    def _remove(self, rtype: ResourceType, ns: str | None, name: str) -> dict[str, Any]:
        """The object leaves the store (its finalizers are gone); what follows from it."""
        obj = self.objects.pop((rtype.group, rtype.plural, ns or "", name))
        self.deleted.append((rtype.kind, ns or "", name))
        if rtype.kind == "Volume":
            # Longhorn's volume controller, on deletion, deletes the PV named in
            # status.kubernetesStatus.pvName and, while lastPVCRefAt is empty, the PVC
            # (longhorn-manager controller/volume_controller.go)
            ks = (obj.get("status") or {}).get("kubernetesStatus") or {}
            if ks.get("pvName"):
                self._delete_if_present("PersistentVolume", None, ks["pvName"])
            if ks.get("pvcName") and not ks.get("lastPVCRefAt"):
                self._delete_if_present("PersistentVolumeClaim", ks.get("namespace"), ks["pvcName"])
            self._delete_volume_parts(name)
        elif rtype.kind == "Snapshot":
            (self.state_dir / "snapshots" / f"{name}.img").unlink(missing_ok=True)
        elif rtype.kind == "PersistentVolumeClaim":
            for pv in list(self._all("PersistentVolume")):
                ref = pv["spec"].get("claimRef") or {}
                if (ref.get("namespace"), ref.get("name")) == (ns, name) and ref.get("uid") == obj["metadata"]["uid"]:
                    self._release(pv)
        elif rtype.kind == "Pod":
            self._collect()
        return obj

    def _release(self, pv: dict[str, Any]) -> None:
        """The PV controller: a PV whose claim is gone is Released; with reclaim policy
        Delete the CSI driver deletes the volume (Longhorn: the Volume), then the PV."""
        pv["status"] = {"phase": "Released"}
        self._bump(pv)
        pv_name = pv["metadata"]["name"]
        csi = pv["spec"].get("csi") or {}
        volume = self.objects.get(("longhorn.io", "volumes", LONGHORN_NS, csi.get("volumeHandle", "")))
        if volume is not None and csi.get("driver") == "driver.longhorn.io":
            ks = volume["status"].get("kubernetesStatus") or {}
            if ks.get("pvName") == pv_name:
                ks.update({"pvStatus": "Released", "lastPVCRefAt": ks.get("lastPVCRefAt") or _now()})
                self._bump(volume)
        if pv["spec"].get("persistentVolumeReclaimPolicy") == "Delete":
            if volume is not None and csi.get("driver") == "driver.longhorn.io":
                self._delete_if_present("Volume", LONGHORN_NS, csi["volumeHandle"])
            self._delete_if_present("PersistentVolume", None, pv_name)
        self._collect()

    def claim_users(self, ns: str, claim: str) -> list[str]:
        """Names of the pods of *ns* that are not terminal and mount PVC *claim*."""
        users = []
        for (g, p, pns, pname), pod in self.objects.items():
            if (g, p, pns) != ("", "pods", ns) or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            if any(((v or {}).get("persistentVolumeClaim") or {}).get("claimName") == claim
                   for v in pod["spec"].get("volumes") or []):
                users.append(pname)
        return users

    def _collect(self) -> None:
        """The protection controllers: drop ``kubernetes.io/pvc-protection`` from a
        deleted claim no pod mounts, ``kubernetes.io/pv-protection`` from a deleted PV
        that is not Bound; remove objects left without finalizers."""
        with self.lock:
            for _ in range(50):
                changed = False
                for key, obj in list(self.objects.items()):
                    meta = obj["metadata"]
                    if key not in self.objects or not meta.get("deletionTimestamp"):
                        continue
                    fins = list(meta.get("finalizers") or [])
                    if "kubernetes.io/pvc-protection" in fins and not self.claim_users(key[2], key[3]):
                        fins.remove("kubernetes.io/pvc-protection")
                    if "kubernetes.io/pv-protection" in fins and (obj.get("status") or {}).get("phase") != "Bound":
                        fins.remove("kubernetes.io/pv-protection")
                    if fins != list(meta.get("finalizers") or []):
                        meta["finalizers"] = fins
                        self._bump(obj)
                        changed = True
                    if not fins:
                        meta.pop("finalizers", None)
                        self._remove(self.types[key[:2]], key[2] or None, key[3])
                        changed = True
                        break
                if not changed:
                    return

    # ---- core behaviour: PV/PVC binding (what the PV controller does)
    def _bind_claims(self) -> None:
        for (g, p, ns, name), pvc in list(self.objects.items()):
            if (g, p) != ("", "persistentvolumeclaims"):
                continue
            vol = pvc["spec"].get("volumeName")
            if not vol:  # the PV controller binds an unbound claim to a PV pre-bound to it (claimRef by name)
                vol = self._prebound_pv(ns, name, pvc)
                if vol:
                    pvc["spec"]["volumeName"] = vol
            pv = self.objects.get(("", "persistentvolumes", "", vol)) if vol else None
            if pv is None:
                pvc["status"] = {"phase": "Pending"}
                continue
            ref = pv["spec"].get("claimRef")
            if ref and ((ref.get("namespace"), ref.get("name")) != (ns, name) or
                        ref.get("uid") not in (None, pvc["metadata"]["uid"])):
                pvc["status"] = {"phase": "Pending"}
                continue
            pv["spec"]["claimRef"] = {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": ns,
                "name": name,
                "uid": pvc["metadata"]["uid"],
                "resourceVersion": pvc["metadata"]["resourceVersion"],
            }
            was_bound = (pv.get("status") or {}).get("phase") == "Bound"
            pv["status"] = {"phase": "Bound"}
            pvc["status"] = {
                "phase": "Bound",
                "accessModes": pv["spec"]["accessModes"],
                "capacity": pv["spec"]["capacity"],
            }
            if not was_bound:
                self.sync_kubernetes_status(pv["metadata"]["name"])

    def _prebound_pv(self, ns: str, name: str, pvc: dict[str, Any]) -> str | None:
        """An Available PV whose ``claimRef`` names this claim (no uid, or its uid) and
        whose class is the claim's: what the PV controller binds first."""
        for pv in self._all("PersistentVolume"):
            ref = pv["spec"].get("claimRef") or {}
            if ((ref.get("namespace"), ref.get("name")) == (ns, name) and ref.get("uid") in (None, pvc["metadata"]["uid"])
                    and (pv.get("status") or {}).get("phase") == "Available"
                    and pv["spec"].get("storageClassName", "") == (pvc["spec"].get("storageClassName") or "")):
                return str(pv["metadata"]["name"])
        return None

    def sync_kubernetes_status(self, pv_name: str) -> None:
        """Longhorn's kubernetes-pv controller for one PV (it runs on PV events and on a
        30 s resync): the Volume behind a Longhorn PV records the PV, its phase and the
        bound claim in ``status.kubernetesStatus``."""
        with self.lock:
            pv = self.objects.get(("", "persistentvolumes", "", pv_name))
            csi = (pv or {}).get("spec", {}).get("csi") or {}
            if pv is None or csi.get("driver") != "driver.longhorn.io":
                return
            volume = self.objects.get(("longhorn.io", "volumes", LONGHORN_NS, csi.get("volumeHandle", "")))
            if volume is None:
                return
            phase = (pv.get("status") or {}).get("phase", "")
            ks = dict(volume["status"].get("kubernetesStatus") or {})
            if ks.get("pvName") != pv_name:
                ks = {}
            ks.update({"pvName": pv_name, "pvStatus": phase})
            ref = pv["spec"].get("claimRef") or {}
            if phase == "Bound" and ref:
                ks.update({"pvcName": ref.get("name", ""), "namespace": ref.get("namespace", ""), "lastPVCRefAt": ""})
            if ks != volume["status"].get("kubernetesStatus"):
                volume["status"]["kubernetesStatus"] = ks
                self._bump(volume)

    def resync_pv_controller(self) -> None:
        """Run :meth:`sync_kubernetes_status` for every PV (Longhorn's periodic resync)."""
        with self.lock:
            for pv in list(self._all("PersistentVolume")):
                self.sync_kubernetes_status(pv["metadata"]["name"])

    def _after_create(self, rtype: ResourceType, body: dict[str, Any]) -> None:
        if rtype.kind in ("PersistentVolume", "PersistentVolumeClaim"):
            if rtype.kind == "PersistentVolume":
                body["status"] = {"phase": "Available"}
            self._bind_claims()
        elif rtype.group == "longhorn.io":
            self._longhorn_created(rtype, body)

    # ---- Longhorn
    def _longhorn_admit(self, rtype: ResourceType, body: dict[str, Any]) -> None:
        """Longhorn's mutating and validating webhooks."""
        if rtype.group != "longhorn.io":
            return
        name = body["metadata"]["name"]
        spec = body.setdefault("spec", {})
        if rtype.kind == "Volume":
            if not spec.get("frontend"):
                raise _webhook_denied("Volume", name, "invalid volume frontend specified: ")
            if not spec.get("numberOfReplicas"):
                spec["numberOfReplicas"] = 3
            size = int(spec.get("size") or 0)
            if size <= 0 and not spec.get("fromBackup"):
                raise _webhook_denied("Volume", name, f"invalid volume size {size}")
            if size % (2 * MIB):
                size += 2 * MIB - size % (2 * MIB)
            spec["size"] = str(size)
            spec.setdefault("dataEngine", "v1")
            if "uid" in body["metadata"] and self.objects.get(("longhorn.io", "volumes", LONGHORN_NS, name)):
                return  # an update: data source checks are for creation only
            source = spec.get("dataSource") or ""
            if source:
                m = re.match(r"^snap://([^/]+)/([^/]+)$", source)
                if not m:
                    raise _webhook_denied("Volume", name, f"invalid dataSource {source}")
                snap = self.objects.get(("longhorn.io", "snapshots", LONGHORN_NS, m.group(2)))
                if ("longhorn.io", "volumes", LONGHORN_NS, m.group(1)) not in self.objects:
                    raise _webhook_denied("Volume", name, f"source volume {m.group(1)} not found")
                if snap is None or snap["spec"]["volume"] != m.group(1) or not snap.get("status", {}).get("readyToUse"):
                    raise _webhook_denied("Volume", name, f"snapshot {m.group(2)} of volume {m.group(1)} not ready")
            if spec.get("fromBackup") and not any(
                b.get("status", {}).get("url") == spec["fromBackup"] for b in self._all("Backup")
            ):
                raise _webhook_denied("Volume", name, f"cannot find backup {spec['fromBackup']}: the backup "
                                      "target has not synced it (no Backup object)")
        elif rtype.kind == "Snapshot":
            vol = spec.get("volume", "")
            if ("longhorn.io", "volumes", LONGHORN_NS, vol) not in self.objects:
                raise _webhook_denied("Snapshot", name, f"volume {vol} not found")
            body["metadata"].setdefault("labels", {})["longhornvolume"] = vol
        elif rtype.kind == "Backup":
            snap_name = spec.get("snapshotName", "")
            snap = self.objects.get(("longhorn.io", "snapshots", LONGHORN_NS, snap_name))
            if not snap_name or snap is None:
                raise _webhook_denied("Backup", name, f"snapshot {snap_name!r} not found")
            vol = (body["metadata"].get("labels") or {}).get("backup-volume")
            if not vol:
                raise _webhook_denied("Backup", name, "label backup-volume is required")
            if snap["spec"]["volume"] != vol:
                raise _webhook_denied("Backup", name, f"snapshot {snap_name} does not belong to volume {vol}")

    def _longhorn_created(self, rtype: ResourceType, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        spec = body["spec"]
        if rtype.kind == "Volume":
            size = int(spec["size"])
            status: dict[str, Any] = {"state": "detached", "robustness": "unknown", "currentNodeID": "",
                                      "frontendDisabled": False, "restoreRequired": False}
            backing = self.volume_path(name)
            with open(backing, "wb") as f:
                f.truncate(size)
            source = spec.get("dataSource") or ""
            if source:
                _, snap = source[len("snap://"):].split("/", 1)
                shutil.copyfile(self.state_dir / "snapshots" / f"{snap}.img", backing)
                with open(backing, "r+b") as f:
                    f.truncate(max(size, backing.stat().st_size))
                vol, snapname = source[len("snap://"):].split("/", 1)
                status["cloneStatus"] = {"sourceVolume": vol, "snapshot": snapname, "state": "initiated"}
                failure = self.fail_clones

                def finish_clone() -> None:
                    obj = self.objects.get(("longhorn.io", "volumes", LONGHORN_NS, name))
                    if obj is not None:
                        obj["status"]["cloneStatus"]["state"] = "failed" if failure else "completed"
                        self._bump(obj)
                        self._reconcile_attachment(name)

                self.after(self.clone_delay, finish_clone)
            if spec.get("fromBackup"):
                url = spec["fromBackup"]
                backup = next(b for b in self._all("Backup") if b.get("status", {}).get("url") == url)
                content = self.state_dir / "backups" / f"{backup['metadata']['name']}.img"
                shutil.copyfile(content, backing)
                status["restoreRequired"] = True
                status["state"] = "attached"  # Longhorn attaches a restoring volume itself

                def finish_restore() -> None:
                    obj = self.objects.get(("longhorn.io", "volumes", LONGHORN_NS, name))
                    if obj is not None:
                        obj["status"].update({"restoreRequired": False, "state": "detached"})
                        self._bump(obj)
                        self._reconcile_attachment(name)

                self.after(self.restore_delay, finish_restore)
            body["status"] = status
            for _ in range(int(spec.get("numberOfReplicas") or 1)):
                rname = f"{name}-r-{uuid.uuid4().hex[:8]}"
                self.create(
                    self.types[("longhorn.io", "replicas")],
                    LONGHORN_NS,
                    {
                        "apiVersion": "longhorn.io/v1beta2",
                        "kind": "Replica",
                        "metadata": {"name": rname, "namespace": LONGHORN_NS, "labels": {"longhornvolume": name}},
                        "spec": {"volumeName": name, "nodeID": self.node_id, "active": True, "healthyAt": "",
                                 "failedAt": "", "dataEngine": spec.get("dataEngine", "v1"),
                                 "volumeSize": str(size), "dataDirectoryName": rname},
                    },
                    "Strict",
                )
            self.create(
                self.types[("longhorn.io", "volumeattachments")],
                LONGHORN_NS,
                {
                    "apiVersion": "longhorn.io/v1beta2",
                    "kind": "VolumeAttachment",
                    "metadata": {"name": name, "namespace": LONGHORN_NS, "labels": {"longhornvolume": name}},
                    "spec": {"volume": name, "attachmentTickets": {}},
                },
                "Strict",
            )
        elif rtype.kind == "Snapshot":
            vol = spec["volume"]
            if spec.get("createSnapshot", False):
                shutil.copyfile(self.volume_path(vol), self.state_dir / "snapshots" / f"{name}.img")
            body["status"] = {"readyToUse": False, "ownerID": self.node_id}
            if self.stall_snapshots:
                return
            failure = self.fail_snapshots
            size = self.volume_path(vol).stat().st_size

            def finish_snapshot() -> None:
                obj = self.objects.get(("longhorn.io", "snapshots", LONGHORN_NS, name))
                if obj is None:
                    return
                if failure:
                    obj["status"].update({"error": failure, "readyToUse": False})
                else:
                    obj["status"].update({"readyToUse": True, "creationTime": _now(), "size": size,
                                          "restoreSize": size, "userCreated": True, "parent": ""})
                self._bump(obj)

            self.after(self.snapshot_delay, finish_snapshot)
        elif rtype.kind == "Backup":
            vol = body["metadata"]["labels"]["backup-volume"]
            snap = spec["snapshotName"]
            body["status"] = {"state": "InProgress", "progress": 0, "snapshotName": snap, "volumeName": vol,
                              "backupTargetName": "default"}
            content = self.state_dir / "snapshots" / f"{snap}.img"
            if content.exists():
                shutil.copyfile(content, self.state_dir / "backups" / f"{name}.img")
            if self.stall_backups:
                return
            failure = self.fail_backups

            def finish_backup() -> None:
                obj = self.objects.get(("longhorn.io", "backups", LONGHORN_NS, name))
                if obj is None:
                    return
                if failure:
                    obj["status"].update({"state": "Error", "error": failure})
                else:
                    obj["status"].update({
                        "state": "Completed",
                        "progress": 100,
                        "url": f"{self.backup_target_url}?backup={name}&volume={vol}",
                        "backupCreatedAt": _now(),
                        "size": str(self.volume_path(vol).stat().st_size) if self.volume_path(vol).exists() else "0",
                    })
                    if ("longhorn.io", "backupvolumes", LONGHORN_NS, vol) not in self.objects:
                        self.create(
                            self.types[("longhorn.io", "backupvolumes")],
                            LONGHORN_NS,
                            {
                                "apiVersion": "longhorn.io/v1beta2",
                                "kind": "BackupVolume",
                                "metadata": {"name": vol, "namespace": LONGHORN_NS,
                                             "labels": {"backup-volume": vol, "backup-target": "default"}},
                                "spec": {"backupTargetName": "default", "volumeName": vol},
                            },
                            "Strict",
                        )
                self._bump(obj)

            self.after(self.backup_delay, finish_backup)

    def _add_ticket(self, volume: str, ticket_id: str, ticket_type: str) -> None:
        va = self.objects[("longhorn.io", "volumeattachments", LONGHORN_NS, volume)]
        va["spec"].setdefault("attachmentTickets", {})[ticket_id] = {
            "id": ticket_id, "type": ticket_type, "nodeID": self.node_id, "parameters": {"disableFrontend": "false"},
        }
        self._bump(va)
        self._reconcile_attachment(volume)

    def _reconcile_attachment(self, volume: str) -> None:
        """Schedule the attach/detach that the attachment tickets ask for."""
        va = self.objects.get(("longhorn.io", "volumeattachments", LONGHORN_NS, volume))
        vol = self.objects.get(("longhorn.io", "volumes", LONGHORN_NS, volume))
        if va is None or vol is None:
            return
        tickets = va["spec"].get("attachmentTickets") or {}
        statuses: dict[str, Any] = {}
        for tid in tickets:
            old = (va.get("status") or {}).get("attachmentTicketStatuses", {}).get(tid)
            statuses[tid] = old or {"id": tid, "satisfied": False, "conditions": []}
        va["status"] = {"attachmentTicketStatuses": statuses}
        if not tickets:
            self._detach(volume)
            return
        busy = vol["status"].get("cloneStatus", {}).get("state") not in (None, "", "completed") or vol["status"].get(
            "restoreRequired")
        if self.stall_attach or busy or vol["status"].get("robustness") == "faulted":
            return  # Longhorn never attaches a faulted volume: the tickets stay unsatisfied

        def attach() -> None:
            va2 = self.objects.get(("longhorn.io", "volumeattachments", LONGHORN_NS, volume))
            vol2 = self.objects.get(("longhorn.io", "volumes", LONGHORN_NS, volume))
            if va2 is None or vol2 is None:
                return
            for tid, ticket in (va2["spec"].get("attachmentTickets") or {}).items():
                st = va2["status"]["attachmentTicketStatuses"].setdefault(tid, {"id": tid, "conditions": []})
                ok = ticket.get("nodeID") == self.node_id
                st["satisfied"] = ok
                st["conditions"] = [{"type": "Satisfied", "status": "True" if ok else "False",
                                     "message": "" if ok else f"node {ticket.get('nodeID')} not found",
                                     "lastTransitionTime": _now()}]
            if any(s.get("satisfied") for s in va2["status"]["attachmentTicketStatuses"].values()):
                for rep_obj in self._replicas_of(volume):
                    if not rep_obj["spec"].get("healthyAt"):
                        rep_obj["spec"]["healthyAt"] = rep_obj["spec"]["lastHealthyAt"] = _now()
                        self._bump(rep_obj)
                vol2["status"].update({"state": "attached", "robustness": "healthy", "currentNodeID": self.node_id})
                vol2["spec"]["nodeID"] = self.node_id
                dev = self.device_path(volume)
                if not dev.exists() and self.break_devices:
                    dev.mkdir()
                elif not dev.exists():
                    dev.hardlink_to(self.volume_path(volume))
            self._bump(va2)
            self._bump(vol2)

        self.after(self.attach_delay, attach)

    def _remove_device(self, volume: str) -> None:
        dev = self.device_path(volume)
        if dev.is_dir():
            dev.rmdir()
        else:
            dev.unlink(missing_ok=True)

    def _detach(self, volume: str) -> None:
        self._remove_device(volume)
        vol = self.objects.get(("longhorn.io", "volumes", LONGHORN_NS, volume))
        if vol is not None and vol["status"].get("state") == "attached" and not vol["status"].get("restoreRequired"):
            vol["status"].update({"state": "detached", "robustness": "unknown", "currentNodeID": ""})
            vol["spec"]["nodeID"] = ""
            self._bump(vol)

    def _replicas_of(self, volume: str) -> list[dict[str, Any]]:
        return [o for o in self._all("Replica") if o["spec"].get("volumeName") == volume]

    def lose_replicas(self, volume: str) -> None:
        """What a node rebuilt on a new disk finds after its datastore was restored: the
        Volume CR and its Replica CRs are back, their data is not. Every replica is
        failed (``spec.failedAt``), the volume ``faulted`` and detached, the backing
        file zeros; Longhorn never attaches it (tickets stay unsatisfied)."""
        with self.lock:
            vol = self.objects[("longhorn.io", "volumes", LONGHORN_NS, volume)]
            now = _now()
            for rep_obj in self._replicas_of(volume):
                rep_obj["spec"].update({"failedAt": now, "lastFailedAt": now})
                rep_obj["status"] = {"currentState": "error"}
                self._bump(rep_obj)
            self._remove_device(volume)
            vol["status"].update({"state": "detached", "robustness": "faulted", "currentNodeID": ""})
            vol["spec"]["nodeID"] = ""
            self._bump(vol)
            backing = self.volume_path(volume)
            size = backing.stat().st_size
            backing.unlink()
            with open(backing, "wb") as f:
                f.truncate(size)

    def _delete_volume_parts(self, volume: str) -> None:
        self._remove_device(volume)
        self.volume_path(volume).unlink(missing_ok=True)
        self.objects.pop(("longhorn.io", "volumeattachments", LONGHORN_NS, volume), None)
        for rep_obj in self._replicas_of(volume):
            self.objects.pop(("longhorn.io", "replicas", LONGHORN_NS, rep_obj["metadata"]["name"]), None)
        for key, snap in list(self.objects.items()):
            if key[:2] == ("longhorn.io", "snapshots") and snap["spec"].get("volume") == volume:
                del self.objects[key]
                (self.state_dir / "snapshots" / f"{key[3]}.img").unlink(missing_ok=True)

    # ---- pods/exec
    def prepare_exec(self, path: str, query: dict[str, list[str]]) -> tuple[str, str, str, list[str]]:
        """Check an exec request as the API server would; (ns, pod, container, argv)."""
        with self.lock:
            self.tick()
            parts = [p for p in path.split("/") if p]
            if len(parts) != 7 or parts[:3] != ["api", "v1", "namespaces"] or parts[4] != "pods" or parts[6] != "exec":
                raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
            ns, name = parts[3], parts[5]
            pod = self._must_get(self.types[("", "pods")], ns, name)
            command = query.get("command") or []
            if not command:
                raise ApiError(400, "BadRequest", "you must specify at least 1 command")
            names = [c["name"] for c in pod["spec"]["containers"]]
            container = (query.get("container") or [""])[-1]
            if not container:
                if len(names) != 1:
                    raise ApiError(400, "BadRequest", f"a container name must be specified for pod {name}, "
                                   f"choose one of: {names}")
                container = names[0]
            if container not in names:
                raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
            if (pod.get("status") or {}).get("phase") != "Running":
                raise ApiError(400, "BadRequest", f"cannot exec into a container in a completed pod; current phase "
                               f"is {(pod.get('status') or {}).get('phase', 'Pending')}")
            self.execs.append((ns, name, container, command))
            return ns, name, container, command

    def run_exec(self, ns: str, pod: str, container: str, command: list[str]) -> tuple[int, bytes, bytes]:
        if self.exec_handler is not None:
            return self.exec_handler(ns, pod, container, command)
        import subprocess

        try:
            proc = subprocess.run(command, capture_output=True, timeout=60, check=False)
        except FileNotFoundError:
            return 127, b"", f'exec: "{command[0]}": executable file not found in $PATH'.encode()
        return proc.returncode, proc.stdout, proc.stderr

    # ---- HTTP dispatch
    def route(self, path: str) -> tuple[ResourceType, str | None, str | None, str | None]:
        """(type, namespace, name, subresource) for an API path; ApiError 404 otherwise."""
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, rest = "", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, rest = parts[1], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        elif group == "" and len(rest) in (1, 2) and rest[0] == "namespaces":
            return self.types[("", "namespaces")], None, rest[1] if len(rest) == 2 else None, None
        if not rest or (group, rest[0]) not in self.types:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        rtype = self.types[(group, rest[0])]
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if ns is not None and not rtype.namespaced:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        return rtype, ns, name, sub

    def handle(self, method: str, url: str, content_type: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.tick()
            self.requests.append((method, url, content_type))
            parts = urlsplit(url)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            if parts.path.rstrip("/") == "/version" and method == "GET":
                return 200, dict(self.version)
            if method == "GET":
                doc = kube_kubectl.discovery(self, parts.path)
                if doc is not None:
                    return 200, doc
            rtype, ns, name, sub = self.route(parts.path)
            verb = {"GET": "list" if name is None else "get", "POST": "create", "PUT": "update", "PATCH": "patch",
                    "DELETE": "delete"}.get(method, method.lower())
            resource = rtype.plural + (f"/{sub}" if sub else "")
            if (method, rtype.plural) in self.forbidden or (
                    self.allowed is not None and (verb, rtype.group, resource) not in self.allowed):
                group = f"{rtype.group}" if rtype.group else ""
                raise ApiError(403, "Forbidden", f'{rtype.plural}{"." + group if group else ""} is forbidden: User '
                               f'"system:serviceaccount:drkit:drkit" cannot {verb} resource '
                               f'"{resource}" in API group "{group}"' + (f' in the namespace "{ns}"' if ns else ""),
                               name=name or "", kind=rtype.plural)
            if sub == "scale" and rtype.plural in kube_kubectl.WORKLOAD_PLURALS and name is not None:
                assert ns is not None
                if method == "GET":
                    return 200, kube_kubectl.scale_doc(self._must_get(rtype, ns, name))
                if method in ("PATCH", "PUT"):
                    body = json.loads(raw) if raw else None
                    if method == "PATCH":
                        current = kube_kubectl.scale_doc(self._must_get(rtype, ns, name))
                        body = merge_patch(current, body)
                        body["metadata"].pop("resourceVersion", None)
                    return 200, kube_kubectl.set_scale(self, rtype, ns, name, body)
            if sub is not None and sub != "status":
                raise ApiError(404, "NotFound", f"subresource {sub} is not served by the fake")
            if sub == "status" and not rtype.status_subresource:
                raise ApiError(404, "NotFound", f"{rtype.plural} has no status subresource")
            mode = query.get("fieldValidation", self.unknown_fields)
            if mode not in ("Strict", "Warn", "Ignore"):
                raise ApiError(400, "BadRequest", f"fieldValidation must be Strict, Warn or Ignore, not {mode!r}")
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise ApiError(400, "BadRequest", "the request body is not JSON") from None
            if method == "GET" and name is None:
                return 200, self._list(rtype, ns, query)
            if method == "GET":
                return 200, copy.deepcopy(self._must_get(rtype, ns, name))
            if method == "POST" and name is None:
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "the request body must be a JSON object")
                return 201, copy.deepcopy(self.create(rtype, ns, body, mode))
            if name is None:
                raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on a collection")
            if method == "PUT" and sub == "status":
                raise ApiError(405, "MethodNotAllowed", "the fake serves PATCH on status subresources only")
            if method == "PUT":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "the request body must be a JSON object")
                return 200, copy.deepcopy(self.replace(rtype, ns, name, body, mode))
            if method == "PATCH":
                ctype = content_type.split(";")[0].strip()
                if ctype == "application/strategic-merge-patch+json" and rtype.custom:
                    raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                                   "accepted media types include: application/json-patch+json, "
                                   "application/merge-patch+json, application/apply-patch+yaml")
                if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                    raise ApiError(415, "UnsupportedMediaType", f"the fake does not implement {ctype} patches")
                current = self._must_get(rtype, ns, name)
                if sub == "status":
                    return 200, copy.deepcopy(self._patch_status(rtype, ns, name, body, mode))
                patched = merge_patch(current, body)
                if (body.get("metadata") or {}).get("resourceVersion") is None:
                    patched["metadata"].pop("resourceVersion", None)
                return 200, copy.deepcopy(self.replace(rtype, ns, name, patched, mode, patch=True))
            if method == "DELETE":
                return 200, copy.deepcopy(self.delete(rtype, ns, name))
            raise ApiError(405, "MethodNotAllowed", f"method {method} is not allowed")

    def _patch_status(self, rtype: ResourceType, ns: str | None, name: str, body: Any, mode: str) -> dict[str, Any]:
        """A merge patch on the status subresource: only ``status`` changes."""
        current = self._must_get(rtype, ns, name)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the patch must be a JSON object")
        candidate = copy.deepcopy(current)
        candidate["status"] = merge_patch(current.get("status") or {}, body.get("status") or {})
        check = copy.deepcopy(candidate)
        for k in ("uid", "resourceVersion", "creationTimestamp", "generation"):
            check["metadata"].pop(k, None)
        self.validate(rtype, check, mode)
        current["status"] = candidate["status"]
        self._bump(current)
        if rtype.kind == "Volume" and self.pv_controller_races:
            self.resync_pv_controller()
        return current

    def _list(self, rtype: ResourceType, ns: str | None, query: dict[str, str]) -> dict[str, Any]:
        match = parse_label_selector(query.get("labelSelector", ""))
        fields = []
        for part in [p for p in query.get("fieldSelector", "").split(",") if p]:
            m = re.match(r"^(metadata\.name|metadata\.namespace|type)(==|=|!=)(.*)$", part)
            if not m:
                raise ApiError(400, "BadRequest", f'field label not supported: "{part}"')
            fields.append(m.groups())

        def field_ok(o: dict[str, Any]) -> bool:
            for path, op, value in fields:
                cur = o.get("type", "") if path == "type" else o["metadata"].get(path.split(".")[1], "")
                if (cur == value) == (op == "!="):
                    return False
            return True

        items = []
        for (g, p, ons, _), o in sorted(self.objects.items()):
            if (g, p) != (rtype.group, rtype.plural) or (ns is not None and ons != ns):
                continue
            if not match(o["metadata"].get("labels") or {}) or not field_ok(o):
                continue
            item = copy.deepcopy(o)
            if not rtype.custom:  # typed core lists carry no apiVersion/kind per item
                item.pop("apiVersion", None)
                item.pop("kind", None)
            items.append(item)
        return {
            "apiVersion": rtype.api_version,
            "kind": f"{rtype.kind}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKube
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _ws_frame(self, payload: bytes, opcode: int = 0x2) -> bytes:
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([n])
        elif n < 65536:
            head += bytes([126]) + n.to_bytes(2, "big")
        else:
            head += bytes([127]) + n.to_bytes(8, "big")
        return head + payload

    def _serve_exec(self) -> None:
        """``pods/exec`` over a websocket, channel protocol v4 (stdout 1, stderr 2,
        status 3), as the API server speaks it to ``kubernetes.stream``."""
        import base64
        import hashlib

        parts = urlsplit(self.path)
        try:
            ns, pod, container, command = self.fake.prepare_exec(parts.path, parse_qs(parts.query))
        except ApiError as exc:
            data = json.dumps(exc.status()).encode()
            self.send_response(exc.code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        self.end_headers()
        rc, out, err = self.fake.run_exec(ns, pod, container, command)
        if rc == 0:
            status: dict[str, Any] = {"metadata": {}, "status": "Success"}
        else:
            status = {"metadata": {}, "status": "Failure",
                      "message": f"command terminated with non-zero exit code: exit status {rc}",
                      "reason": "NonZeroExitCode",
                      "details": {"causes": [{"reason": "ExitCode", "message": str(rc)}]}}
        frames = b""
        if out:
            frames += self._ws_frame(b"\x01" + out)
        if err:
            frames += self._ws_frame(b"\x02" + err)
        frames += self._ws_frame(b"\x03" + json.dumps(status).encode())
        frames += self._ws_frame((1000).to_bytes(2, "big"), opcode=0x8)
        self.wfile.write(frames)
        self.wfile.flush()
        self.close_connection = True

    def _serve(self) -> None:
        if self.headers.get("Upgrade", "").lower() == "websocket":
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._serve_exec()
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        public = self.command == "GET" and urlsplit(self.path).path.rstrip("/") == "/version"  # like system:public-info-viewer
        if self.headers.get("Authorization") == f"Bearer {TOKEN}" and (self._serve_watch() or self._serve_openapi_v2()):
            return
        if self.headers.get("Authorization") != f"Bearer {TOKEN}" and not public:
            code, payload = 401, ApiError(401, "Unauthorized", "Unauthorized").status()
        else:
            try:
                warn_before = len(self.fake.warnings)
                code, payload = self.fake.handle(self.command, self.path, self.headers.get("Content-Type", ""), raw)
                new_warnings = self.fake.warnings[warn_before:]
            except ApiError as exc:
                code, payload, new_warnings = exc.code, exc.status(), []
            with self.fake.lock:
                self.fake.audit.append(AuditEntry(self.command, self.path, code,
                                                  str(payload.get("message", "")) if code >= 400 else "",
                                                  tuple(new_warnings)))
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for w in new_warnings if code < 400 else []:
            self.send_header("Warning", f'299 - "{w}"')
        self.end_headers()
        self.wfile.write(data)

    def _serve_openapi_v2(self) -> bool:
        """``/openapi/v2`` (what kubectl before 1.27 validates with): an empty OpenAPI
        document in protobuf (zero bytes encode an empty message). No schema for a kind
        means kubectl does not validate it on the client; the fake validates everything."""
        if self.command != "GET" or urlsplit(self.path).path.rstrip("/") != "/openapi/v2":
            return False
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def _serve_watch(self) -> bool:
        """A ``?watch=true`` list (kubectl wait): the current objects as ADDED events, then
        the stream ends (see tests.fakes.kube_kubectl). False when this is no watch."""
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if self.command != "GET" or query.get("watch") not in ("1", "true"):
            return False
        try:
            with self.fake.lock:
                self.fake.tick()
                rtype, ns, name, _ = self.fake.route(parts.path)
                data = kube_kubectl.watch_events(self.fake, rtype, ns, query)
        except ApiError as exc:
            data = json.dumps({"type": "ERROR", "object": exc.status()}).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


@dataclass
class FakeKubeServer:
    """A running fake: its URL, a kubeconfig pointing at it, and the state handle."""

    fake: FakeKube
    url: str
    kubeconfig: Path
    _server: ThreadingHTTPServer
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def write_kubeconfig(path: Path, url: str, *, token: str = TOKEN, context: str = "fake",
                     ca_pem: bytes | None = None) -> Path:
    cluster: dict[str, Any] = {"server": url}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = kube_kubectl.ca_data(ca_pem)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": cluster}],
        "users": [{"name": "fake-user", "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": "fake", "user": "fake-user"}}],
        "current-context": context,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def start_fake_kube(base: Path, *, tls: bool = False, **knobs: Any) -> FakeKubeServer:
    """Start a fake on 127.0.0.1:0 with its state under *base*. With *tls* it serves
    HTTPS (a throwaway CA in the kubeconfig): kubectl sends its token only over TLS."""
    fake = FakeKube(state_dir=base / "state", device_dir=base / "dev" / "longhorn", **knobs)
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    ca_pem = None
    if tls:
        import ssl

        cert, key, ca_pem = kube_kubectl.make_tls(base / "tls")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        ctx.set_alpn_protocols(["http/1.1"])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="fake-kube-api", daemon=True)
    thread.start()
    url = f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    kubeconfig = write_kubeconfig(base / "kubeconfig.yaml", url, ca_pem=ca_pem)
    return FakeKubeServer(fake=fake, url=url, kubeconfig=kubeconfig, _server=server, _thread=thread)


@pytest.fixture
def fake_kube(tmp_path: Path) -> Iterator[tuple[Path, FakeKube]]:
    """Yield ``(kubeconfig path, fake handle)`` for a fresh FAKE API server."""
    running = start_fake_kube(tmp_path / "fake-kube")
    try:
        yield running.kubeconfig, running.fake
    finally:
        running.stop()
