"""Putting Longhorn volumes back into a cluster without deleting what cannot be brought back.

Promises, for ``drkit restore RUN -s LONGHORN --in-place``:

- **Plan first, for every volume, with reads only**; a refusal for one volume changes
  nothing for any of them. ``--dry-run`` prints the plan (every object change) and stops.
- **No claim, PV or volume that may hold data is deleted.** The one deletion is a
  Longhorn Volume that holds no data (``faulted`` with every replica failed, as after a
  datastore restore onto a new disk, or left ``writing`` by an interrupted drkit
  restore), re-created under the same name so the PV's ``volumeHandle`` finds it.
  Before it is deleted, its ``status.kubernetesStatus`` link is cleared: Longhorn
  deletes the PV and the claim named there together with the Volume.
- **Nothing is changed under a running workload:** a claim mounted by a pod is refused,
  naming the pods and their owners (:func:`drkit.kube.refuse_if_claim_in_use`).
- ``--force`` on a claim whose volume holds data re-binds the claim to a new PV and
  volume: the old PV is set to ``Retain`` *before* the claim goes, the old PV and the
  old Longhorn volume stay under their names (Longhorn cannot rename a volume), and the
  output names them.
- Encrypted volumes come back encrypted with the PV's CSI secret references; a missing
  Secret is refused before anything changes.

What happens to each volume (its target claim: the recorded one, or ``--namespace``/
``--claim``):

==========  =============================================  ==============================
how         when                                           changes
==========  =============================================  ==============================
new         no claim of that name                          Volume (free name), data,
                                                           PV (Retain), claim bound to it
into-claim  the claim is bound to a Longhorn PV whose      [status unlink, delete the
            volume holds no data, or is missing            data-less Volume], Volume of
                                                           the same name, data; claim
                                                           and PV untouched
replace     ``--force``, the claim's volume holds data     Retain on the old PV, Volume
            (or the claim is not a bound Longhorn claim)   (free name), data, PV, claim
                                                           deleted and re-created
refused     the same without ``--force``                   none
==========  =============================================  ==============================
"""

from __future__ import annotations

import copy
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Literal

import yaml

from drkit.errors import Refused, UsageError
from drkit.kube import (
    LH_VOLUME,
    PV,
    PVC,
    SECRET,
    Kube,
    KubeConflict,
    KubeInvalid,
    refuse_if_claim_in_use,
)
from drkit.longhorn_api import CSI_DRIVER, RESTORE_STATE, LonghornAPI, LonghornError

_COPY = 4 * 1024 * 1024
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SECRET_REF_KEYS = ("nodeStageSecretRef", "nodePublishSecretRef", "controllerPublishSecretRef",
                   "controllerExpandSecretRef", "nodeExpandSecretRef")
"""The CSI secret references of a PV (an encrypted Longhorn volume's passphrase)."""
_RUNTIME_VOLUME_SPEC = ("nodeID", "migrationNodeID", "engineNodeID", "lastAttachedBy", "fromBackup", "dataSource",
                        "restoreVolumeRecurringJob", "Standby", "image")
"""Volume spec keys that describe one life of a volume, not the volume: not copied
into the re-created one."""
_BINDING_ANNOTATIONS = ("volume.beta.kubernetes.io/", "volume.kubernetes.io/", "pv.kubernetes.io/")
_TRACKING = "argocd.argoproj.io/"

How = Literal["new", "into-claim", "replace"]


def label_value(text: str) -> str:
    """*text* as a valid label value (at most 63 characters of ``[A-Za-z0-9_.-]``)."""
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:63]
    return value.strip("-_.") or "x"


@dataclass(frozen=True)
class Change:
    """One object change of a plan."""

    verb: Literal["create", "patch", "delete", "write"]
    kind: str
    name: str
    namespace: str | None = None
    why: str = ""
    body: dict[str, Any] | None = None

    def describe(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        line = f"{self.verb} {self.kind} {where}" + (f" ({self.why})" if self.why else "")
        if self.body is not None:
            line += ":\n" + yaml.safe_dump(self.body, sort_keys=False).rstrip()
        return line


@dataclass(frozen=True)
class Target:
    """Where a volume goes: a claim's namespace and name."""

    namespace: str
    claim: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.claim}"


@dataclass
class VolumePlan:
    """What restoring one volume record will do (see the module doc)."""

    record: dict[str, Any]
    image: Any
    target: Target
    how: How
    volume: dict[str, Any]
    pv: dict[str, Any] | None = None
    pvc: dict[str, Any] | None = None
    data_less: str | None = None
    """into-claim: the Volume deleted (it holds no data) before one of its name is created."""
    claim_uid: str = ""
    pv_uid: str = ""
    old_pv: str | None = None
    """replace: the claim's PV, set to Retain and kept."""
    old_volume: str | None = None
    """replace: the Longhorn volume behind the old PV, kept."""
    changes: list[Change] = field(default_factory=list)

    @property
    def volume_name(self) -> str:
        return str(self.volume["metadata"]["name"])


@dataclass(frozen=True)
class RestoreSettings:
    """The source options a restore needs."""

    longhorn_namespace: str
    number_of_replicas: int
    attach_timeout: float
    backup_timeout: float


# ---------------------------------------------------------------------- targets
def targets(records: list[dict[str, Any]], namespace: str | None, claim: str | None) -> list[Target]:
    """The target claim of each record: the recorded one, or mapped by ``--namespace``
    (all) and ``--claim`` (one volume only). UsageError on invalid or ambiguous names."""
    if namespace is not None and (len(namespace) > 63 or not _DNS_LABEL.match(namespace)):
        raise UsageError(f"--namespace {namespace!r} is not a valid namespace name",
                         hint="lower-case letters, digits and '-', at most 63 characters")
    if claim is not None:
        if len(claim) > 253 or not _DNS_SUBDOMAIN.match(claim):
            raise UsageError(f"--claim {claim!r} is not a valid claim name",
                             hint="lower-case letters, digits, '-' and '.', at most 253 characters")
        if len(records) != 1:
            refs = ", ".join(f"{r['namespace']}/{r['pvc_name']}" for r in records)
            raise UsageError(f"--claim names one claim, but {len(records)} volumes are selected ({refs})",
                             hint="choose one with --volume NAMESPACE/PVC")
    out = [Target(namespace or r["namespace"], claim or r["pvc_name"]) for r in records]
    seen: dict[Target, str] = {}
    for r, t in zip(records, out, strict=True):
        src = f"{r['namespace']}/{r['pvc_name']}"
        if t in seen:
            raise UsageError(f"{seen[t]} and {src} would both be restored as {t.ref}",
                             hint="restore them one at a time with --volume and --claim")
        seen[t] = src
    return out


def mapped(record: dict[str, Any], target: Target) -> bool:
    return (record["namespace"], record["pvc_name"]) != (target.namespace, target.claim)


# ---------------------------------------------------------------------- encryption
def secret_refs(pv: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """The CSI secret references of a PV (``nodeStageSecretRef`` ...), by key."""
    csi = ((pv or {}).get("spec") or {}).get("csi") or {}
    return {k: {"name": str(v.get("name", "")), "namespace": str(v.get("namespace", ""))}
            for k in SECRET_REF_KEYS if isinstance(v := csi.get(k), dict) and v.get("name")}


def check_secrets(kube: Kube, refs: dict[str, dict[str, str]], what: str) -> None:
    """Refused when a Secret the PV references does not exist: the CSI driver could
    not open the encrypted volume."""
    for key, ref in sorted(refs.items()):
        if kube.get_or_none(SECRET, ref["name"], ref["namespace"]) is None:
            raise Refused(
                f"{what} is encrypted and its PV's {key} names Secret {ref['namespace']}/{ref['name']}, which does "
                "not exist: the volume could not be opened",
                hint="restore that Secret first (e.g. the k8s-secrets source with --in-place) or create it with the "
                     "volume's passphrase, then run again",
            )


# ---------------------------------------------------------------------- objects
def _claim_metadata(source: dict[str, Any], target: Target, *, drop_tracking: bool) -> dict[str, Any]:
    meta = source.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if not k.startswith(_BINDING_ANNOTATIONS) and k != "kubectl.kubernetes.io/last-applied-configuration"}
    if drop_tracking:  # a copy under a new name must not look like the app's own claim to Argo CD
        annotations = {k: v for k, v in annotations.items() if not k.startswith(_TRACKING)}
        labels.pop("app.kubernetes.io/instance", None)
    return {"name": target.claim, "namespace": target.namespace,
            **({"labels": labels} if labels else {}), **({"annotations": annotations} if annotations else {})}


def volume_body(settings: RestoreSettings, record: dict[str, Any], name: str,
                base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Volume to create: *base* (a data-less volume of the same name) or the
    record's volume, with ``numberOfReplicas`` from the settings, ``frontend:
    blockdev`` unless set, ``encrypted`` as recorded, ``fromBackup`` in native mode,
    and the :data:`RESTORE_STATE` label ``writing``."""
    vol = record["volume"]
    if base is not None:
        spec = {k: v for k, v in copy.deepcopy(base.get("spec") or {}).items() if k not in _RUNTIME_VOLUME_SPEC}
        labels = {k: v for k, v in (base["metadata"].get("labels") or {}).items() if k != RESTORE_STATE}
    else:
        spec = {"size": str(vol["size"]), "accessMode": vol.get("accessMode", "rwo"),
                "dataEngine": vol.get("dataEngine", "v1")}
        labels = {}
    spec["numberOfReplicas"] = settings.number_of_replicas
    spec.setdefault("frontend", "blockdev")
    if not spec.get("frontend"):
        spec["frontend"] = "blockdev"
    if record_encrypted(record):
        spec["encrypted"] = True
    if record["mode"] == "native":
        spec["fromBackup"] = record["backup"]["url"]
    labels.update({"drkit.io/restored-from": label_value(vol["name"]), RESTORE_STATE: "writing"})
    return {"apiVersion": LH_VOLUME.api_version, "kind": "Volume",
            "metadata": {"name": name, "namespace": settings.longhorn_namespace, "labels": labels},
            "spec": spec}


def record_encrypted(record: dict[str, Any]) -> bool:
    """Whether the recorded volume was encrypted (``spec.encrypted``)."""
    if "encrypted" in record:
        return bool(record["encrypted"])
    return bool((record.get("volume") or {}).get("encrypted"))


def record_secret_refs(record: dict[str, Any]) -> dict[str, dict[str, str]]:
    if "secret_refs" in record:
        return dict(record["secret_refs"] or {})
    return secret_refs(record.get("pv"))


def pv_and_claim(settings: RestoreSettings, record: dict[str, Any], name: str, target: Target,
                 live_claim: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The static PV (``Retain``, ``claimRef`` without uid) for Volume *name* and the
    claim bound to it (``spec.volumeName``), named by *target*. Labels and annotations
    come from *live_claim* (the claim being replaced) or the record, without binding
    annotations, and without Argo CD tracking when the target is a new name. Pure."""
    vol = record["volume"]
    old_pv_spec = copy.deepcopy((record.get("pv") or {}).get("spec") or {})
    old_csi = old_pv_spec.get("csi") or {}
    access = record.get("access_modes") or ["ReadWriteOnce"]
    storage = (old_pv_spec.get("capacity") or {}).get("storage") or str(vol["size"])
    csi: dict[str, Any] = {
        "driver": CSI_DRIVER,
        "volumeHandle": name,
        "fsType": record.get("fs_type") or old_csi.get("fsType") or "ext4",
        "volumeAttributes": {**(old_csi.get("volumeAttributes") or {}),
                             "numberOfReplicas": str(settings.number_of_replicas)},
    }
    csi.update(copy.deepcopy(record_secret_refs(record)))
    pv_spec: dict[str, Any] = {
        "capacity": {"storage": storage},
        "accessModes": access,
        "persistentVolumeReclaimPolicy": "Retain",
        "volumeMode": record.get("volume_mode") or "Filesystem",
        "csi": csi,
        "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": target.namespace,
                     "name": target.claim},
    }
    if record.get("storage_class"):
        pv_spec["storageClassName"] = record["storage_class"]
    pv = {"apiVersion": "v1", "kind": "PersistentVolume",
          "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": CSI_DRIVER}},
          "spec": pv_spec}
    source = live_claim if live_claim is not None else (record.get("pvc") or {})
    pvc_spec: dict[str, Any] = {
        "accessModes": access,
        "resources": {"requests": {"storage": storage}},
        "volumeName": name,
        "volumeMode": record.get("volume_mode") or "Filesystem",
        "storageClassName": record.get("storage_class") or "",
    }
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": _claim_metadata(source, target, drop_tracking=mapped(record, target)), "spec": pvc_spec}
    return pv, pvc


def free_name(api: LonghornAPI, kube: Kube, wanted: str) -> str:
    """*wanted* when neither a Longhorn volume nor a PV has that name, else
    ``<wanted[:50]>-r<6 hex>`` (a DNS label of at most 58 characters)."""
    name = wanted
    while api.volume(name) is not None or kube.get_or_none(PV, name) is not None:
        name = f"{wanted[:50].rstrip('-.')}-r{secrets.token_hex(3)}"
    return name


# ---------------------------------------------------------------------- planning
def plan_volume(api: LonghornAPI, kube: Kube, settings: RestoreSettings, record: dict[str, Any], image: Any,
                target: Target, *, force: bool) -> VolumePlan:
    """Decide what restoring *record* into *target* does (reads only). Raises Refused
    (a mounted claim, a claim whose volume holds data without *force*, a missing
    Secret, a claim being deleted) or LonghornError (no image in the snapshot)."""
    ref = target.ref
    if record["mode"] == "drkit" and image is None:
        raise LonghornError(f"the snapshot has no image for {record['namespace']}/{record['pvc_name']}",
                            hint="the backup was incomplete; use another snapshot")
    lh_ns = settings.longhorn_namespace
    claim = kube.get_or_none(PVC, target.claim, target.namespace)
    if claim is None:
        name = free_name(api, kube, record["volume"]["name"])
        volume = volume_body(settings, record, name)
        fresh_pv, fresh_pvc = pv_and_claim(settings, record, name, target, None)
        if record_encrypted(record):
            check_secrets(kube, record_secret_refs(record), f"volume {ref}")
        plan = VolumePlan(record, image, target, "new", volume, fresh_pv, fresh_pvc)
        plan.changes = [Change("create", "Volume", name, lh_ns, body=volume), _data_change(record, name),
                        Change("create", "PersistentVolume", name, body=fresh_pv),
                        Change("create", "PersistentVolumeClaim", target.claim, target.namespace, body=fresh_pvc)]
        return plan
    if (claim.get("metadata") or {}).get("deletionTimestamp"):
        refuse_if_claim_in_use(kube, target.namespace, target.claim, action="restoring into it")
        raise Refused(f"PVC {ref} is being deleted (Terminating): not restoring into it",
                      hint="wait until it is gone, then run again (a new claim is created)")
    pv_name = str((claim.get("spec") or {}).get("volumeName") or "")
    pv = kube.get_or_none(PV, pv_name) if pv_name else None
    csi = ((pv or {}).get("spec") or {}).get("csi") or {}
    bound = (claim.get("status") or {}).get("phase") == "Bound" and pv is not None
    if bound and csi.get("driver") == CSI_DRIVER and csi.get("volumeHandle"):
        assert pv is not None
        handle = str(csi["volumeHandle"])
        current = api.volume(handle)
        if current is None:
            state, why = "lost", f"Longhorn volume {handle} does not exist"
        else:
            state, why = api.data_state(current)
        if state != "usable":
            return _plan_into_claim(api, kube, settings, record, image, target, claim, pv, current, handle, why)
        holds = f"is bound to PV {pv_name}, whose Longhorn volume {handle} holds data ({why})"
        old_volume: str | None = handle
    else:
        old_volume = None
        holds = (f"is bound to PV {pv_name}, which is not a Longhorn volume" if bound
                 else f"is {(claim.get('status') or {}).get('phase') or 'not bound'}"
                 + (f" (its PV {pv_name} does not exist)" if pv_name and pv is None else ""))
    if not force:
        raise Refused(f"PVC {ref} exists and {holds}: not overwriting it",
                      hint="pass --force to bind the claim to a new PV and volume (the old PV is set to Retain and "
                           "kept with its volume), or restore under another name (--namespace/--claim) or with "
                           "--target DIR")
    refuse_if_claim_in_use(kube, target.namespace, target.claim, action="replacing it")
    name = free_name(api, kube, record["volume"]["name"])
    volume = volume_body(settings, record, name)
    new_pv, new_pvc = pv_and_claim(settings, record, name, target, claim)
    if record_encrypted(record):
        check_secrets(kube, record_secret_refs(record), f"volume {ref}")
    plan = VolumePlan(record, image, target, "replace", volume, new_pv, new_pvc,
                      claim_uid=claim["metadata"]["uid"], old_pv=pv["metadata"]["name"] if pv else None,
                      old_volume=old_volume)
    if pv is not None and (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") != "Retain":
        plan.changes.append(Change("patch", "PersistentVolume", pv_name,
                                   why="persistentVolumeReclaimPolicy Retain: kept when the claim goes"))
    plan.changes += [Change("create", "Volume", name, lh_ns, body=volume), _data_change(record, name),
                     Change("create", "PersistentVolume", name, body=new_pv),
                     Change("delete", "PersistentVolumeClaim", target.claim, target.namespace,
                            why=f"uid {claim['metadata']['uid']}; re-created bound to PV {name}"),
                     Change("create", "PersistentVolumeClaim", target.claim, target.namespace, body=new_pvc)]
    return plan


def _data_change(record: dict[str, Any], name: str) -> Change:
    if record["mode"] == "native":
        return Change("write", "Volume", name, why=f"Longhorn restores {record['backup']['url']}")
    return Change("write", "Volume", name, why=f"{record.get('image_size', '?')} bytes of the drkit image")


def _plan_into_claim(api: LonghornAPI, kube: Kube, settings: RestoreSettings, record: dict[str, Any], image: Any,
                     target: Target, claim: dict[str, Any], pv: dict[str, Any], current: dict[str, Any] | None,
                     handle: str, why: str) -> VolumePlan:
    ref = target.ref
    refuse_if_claim_in_use(kube, target.namespace, target.claim, action="restoring into it")
    encrypted_now = bool(((current or {}).get("spec") or {}).get("encrypted")) or bool(secret_refs(pv))
    if current is not None and encrypted_now != record_encrypted(record):
        state = "encrypted" if record_encrypted(record) else "not encrypted"
        raise Refused(f"PVC {ref}: the backed-up volume was {state}, Longhorn volume {handle} is "
                      f"{'encrypted' if encrypted_now else 'not encrypted'}: its data would be unreadable",
                      hint="restore under another name (--namespace/--claim) instead")
    if encrypted_now or record_encrypted(record):
        check_secrets(kube, secret_refs(pv), f"volume {ref}")
    volume = volume_body(settings, record, handle, current)
    if record["mode"] == "drkit" and image is not None and image.size > int(volume["spec"].get("size") or 0):
        raise Refused(f"PVC {ref}: the backed-up image ({image.size} bytes) is larger than Longhorn volume "
                      f"{handle} ({volume['spec'].get('size')} bytes)",
                      hint="restore under another name (--namespace/--claim), or with --force (a new volume)")
    plan = VolumePlan(record, image, target, "into-claim", volume, claim_uid=claim["metadata"]["uid"],
                      pv_uid=pv["metadata"]["uid"], data_less=handle if current is not None else None)
    lh_ns = settings.longhorn_namespace
    if current is not None:
        plan.changes += [
            Change("patch", "Volume", handle, lh_ns, why="status.kubernetesStatus: unlink PV and claim, so that "
                   "Longhorn does not delete them with the volume"),
            Change("delete", "Volume", handle, lh_ns, why=f"it holds no data: {why}"),
        ]
    plan.changes += [Change("create", "Volume", handle, lh_ns, why=f"same name: PV {pv['metadata']['name']} finds it",
                            body=volume), _data_change(record, handle)]
    return plan


# ---------------------------------------------------------------------- execution
Say = Callable[[str], None]


def execute(plan: VolumePlan, api: LonghornAPI, kube: Kube, settings: RestoreSettings, node: str,
            open_entry: Callable[[Any], IO[bytes]], say: Say) -> int:
    """Carry out *plan*; returns the bytes written. Every step is reported through *say*
    as it happens; on a failure the error says what is left and where."""
    ref = plan.target.ref
    name = plan.volume_name
    if plan.how == "replace" and plan.old_pv and any(c.verb == "patch" for c in plan.changes):
        kube.merge_patch(PV, plan.old_pv, None, {"spec": {"persistentVolumeReclaimPolicy": "Retain"}})
        say(f"set persistentVolumeReclaimPolicy Retain on PersistentVolume {plan.old_pv} (it is kept)")
    if plan.data_less:
        api.unlink_claim(plan.data_less)
        api.delete_volume_and_wait(plan.data_less, settings.attach_timeout)
        _check_untouched(kube, plan)
        say(f"deleted Longhorn volume {plan.data_less} (it held no data); PVC {ref} and its PV are untouched")
    written = _create_and_fill(plan, api, settings, node, open_entry, say)
    if plan.how == "into-claim":
        _check_untouched(kube, plan)
        say(f"restored PVC {ref} in place: Longhorn volume {name} holds the data, PVC and PV unchanged "
            f"(uids {plan.claim_uid}, {plan.pv_uid})")
        return written
    assert plan.pv is not None and plan.pvc is not None
    kube.create(PV, plan.pv)
    say(f"created PersistentVolume {name} (Retain) for Longhorn volume {name}")
    if plan.how == "replace":
        kube.delete(PVC, plan.target.claim, plan.target.namespace, missing_ok=True)

        def gone() -> bool | None:
            cur = kube.get_or_none(PVC, plan.target.claim, plan.target.namespace)
            return True if cur is None or cur["metadata"]["uid"] != plan.claim_uid else None

        api.wait(f"PVC {ref} to be deleted", gone, settings.attach_timeout,
                 hint=f"a pod mounts it again (it stays Terminating until the pod goes); PV {plan.old_pv} keeps "
                      f"its data (Retain); PV {name} with the restored data is ready to bind to {ref}")
        say(f"deleted PVC {ref} (--force); re-creating it bound to PersistentVolume {name}")
    kube.ensure_namespace(plan.target.namespace)
    try:
        kube.create(PVC, plan.pvc)
    except KubeConflict:
        raise Refused(f"PVC {ref} was created by someone else meanwhile (Argo CD?)",
                      hint=f"pause the app's sync; PV {name} is ready to bind to {ref}") from None
    say(f"created PersistentVolumeClaim {ref} bound to PersistentVolume {name}")
    if plan.how == "replace":
        kept = [f"PersistentVolume {plan.old_pv} (Retain, Released)"] if plan.old_pv else []
        kept += [f"Longhorn volume {plan.old_volume}"] if plan.old_volume else []
        if kept:
            say(f"kept the old {' and '.join(kept)} under their names: delete them when no longer needed")
    return written


def _check_untouched(kube: Kube, plan: VolumePlan) -> None:
    """The claim and PV of an into-claim restore still stand with their uids."""
    claim = kube.get_or_none(PVC, plan.target.claim, plan.target.namespace) or {}
    meta = claim.get("metadata") or {}
    pv_name = str((claim.get("spec") or {}).get("volumeName") or "")
    pv_meta = ((kube.get_or_none(PV, pv_name) if pv_name else None) or {}).get("metadata") or {}
    if meta.get("uid") != plan.claim_uid or meta.get("deletionTimestamp") or pv_meta.get("uid") != plan.pv_uid \
            or pv_meta.get("deletionTimestamp"):
        raise LonghornError(f"PVC {plan.target.ref} or its PV was deleted or replaced while drkit restored into it",
                            hint="Longhorn deletes the PV and claim linked in a deleted Volume's status; restore with "
                                 "--force (a new PV and volume) once the claim is gone")


def _create_and_fill(plan: VolumePlan, api: LonghornAPI, settings: RestoreSettings, node: str,
                     open_entry: Callable[[Any], IO[bytes]], say: Say) -> int:
    record, name = plan.record, plan.volume_name
    ref = plan.target.ref
    try:
        api.create_volume(plan.volume)
    except KubeInvalid as exc:
        if record["mode"] != "native":
            raise
        raise KubeInvalid(
            f"Longhorn refused to restore {ref} from {record['backup']['url']}: {exc.message}",
            status=exc.status,
            hint="on a rebuilt cluster, configure the same backup target and wait until Longhorn has synced "
                 "it (kubectl -n longhorn-system get backupvolumes,backups), then run the restore again",
        ) from None
    written = 0
    try:
        api.wait(f"restored Longhorn volume {name} to be ready", lambda: api.volume_ready(name),
                 settings.backup_timeout if record["mode"] == "native" else settings.attach_timeout)
        if record["mode"] == "drkit":
            written = write_image(api, name, plan.image, node, open_entry)
            say(f"created Volume {name} ({plan.volume['spec']['size']} bytes, {settings.number_of_replicas} "
                f"replica(s)) and wrote {written} bytes of {ref}")
        else:
            say(f"created Volume {name} from Longhorn backup {record['backup']['url']} "
                f"({settings.number_of_replicas} replica(s))")
        api.set_restore_state(name, "done")
    except BaseException:
        if plan.how != "into-claim":  # a volume of our own, not yet bound to anything: remove the half
            api.kube.delete(LH_VOLUME, name, settings.longhorn_namespace, missing_ok=True)
        raise
    return written


def write_image(api: LonghornAPI, volume: str, image: Any, node: str, open_entry: Callable[[Any], IO[bytes]]) -> int:
    """Attach *volume*, write the image to its block device (skipping all-zero blocks:
    a new Longhorn volume reads as zeros), fsync, detach. Returns the bytes written."""
    ticket = api.attach(volume, node)
    written = 0
    try:
        device = api.device(volume)
        try:
            fd = os.open(device, os.O_WRONLY)
        except OSError as exc:
            raise LonghornError(f"cannot open the block device {device} for writing: {exc.strerror or exc}",
                                hint="drkit must run as root on the node that holds the volume") from None
        src = open_entry(image)
        try:
            offset = 0
            while True:
                block = src.read(_COPY)
                if not block:
                    break
                if block.count(0) != len(block):
                    os.pwrite(fd, block, offset)
                offset += len(block)
            os.fsync(fd)
            written = offset
        finally:
            os.close(fd)
            src.close()
        if written != image.size:
            raise LonghornError(f"wrote {written} bytes to {device}, expected {image.size}")
    finally:
        api.detach(volume, ticket)
    return written
