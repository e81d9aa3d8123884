"""Restore of ``local-path`` snapshots onto a node: in place, or as new claims.

The promise: a claim's directory is written completely, next to where it goes, and
only then renamed into place; a damaged snapshot never leaves a half-written
directory under the real name. drkit never deletes a PV or a claim, and never writes
into a directory a running pod mounts.

``--in-place`` (per claim, with the API):

- the claim exists and is bound: its directory goes back at the path its *current*
  PV names; refused while a pod mounts the claim (the pods and their owners are named:
  scale them down first);
- the claim exists, its PV does not (or it is not bound yet): a PV is created from the
  recorded one (``Retain``, the recorded path, node affinity) with a ``claimRef`` to
  the claim, which then binds;
- the claim does not exist (GitOps model: before Argo CD syncs): a PV (recorded name
  when free, ``Retain``) and the claim under its original namespace and name, bound
  to it, pointing at the recorded path.

A directory that exists and is not empty is refused unless ``--force``; with
``--force`` it is moved aside to ``<path>.drkit-replaced-<time>`` (never deleted).
Every check (pods, directories, paths) is made for every claim before anything is
written.

``-o offline=true`` skips the API: every directory goes back at its recorded path,
no object is read or created. It is for the datastore model, before K3s starts (the
restored datastore brings the claims and PVs back, pointing at those paths): it is
refused while a K3s server runs on this host.

``--namespace NEW``: for each claim a new directory under the provisioner's storage
path for the node (``local-path-config``; else next to the recorded directory;
``-o storage_path=DIR`` overrides), a new PV (``Retain``, the original node affinity
and volume type) and a claim of the same name in ``NEW``, bound to it. An existing
claim in ``NEW`` is refused.

``-o host_root=DIR`` (or the source's ``host_root``) is where the node's filesystem is
mounted on this host.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from drkit.atomicio import fsync_dir
from drkit.errors import Refused, UsageError
from drkit.kube import CONFIGMAP, PV, PVC, Kube, KubeConflict, connect_options, refuse_if_claim_in_use
from drkit.sources._kubeobjects import warn_version_mismatch
from drkit.sources.base import RestoreContext, RestoreResult
from drkit.sources.local_path import (
    LocalPathError,
    check_dir_path,
    on_host,
    pv_node,
    volume_path,
)

if TYPE_CHECKING:
    from drkit.sources.local_path import LocalPathSource

CONFIG_MAP = "local-path-config"
DEFAULT_NODE_KEY = "DEFAULT_PATH_FOR_NON_LISTED_NODES"
RESTORED_FROM = "drkit.io/restored-from"


@dataclass
class Placement:
    """Where one claim's directory goes, and the objects created after it is there."""

    record: dict[str, Any]
    path: str
    """The directory on the node."""
    objects: list[dict[str, Any]] = field(default_factory=list)
    """PV and/or PVC to create, in order, once the directory is in place."""
    how: str = ""
    node: str | None = None
    """The node the directory belongs on (the PV's node affinity); None: any."""

    @property
    def ref(self) -> str:
        return f"{self.record['namespace']}/{self.record['claim']}"


# --- objects (pure) ----------------------------------------------------------------------

def build_pv(record: dict[str, Any], *, name: str, path: str, namespace: str, claim: str) -> dict[str, Any]:
    """A static PV for *path* shaped like the recorded one (capacity, access modes,
    class, volume mode, node affinity, hostPath type or local), with reclaim policy
    ``Retain`` (deleting the claim must not delete restored data) and a ``claimRef``
    to ``namespace/claim`` without uid. Pure."""
    old = copy.deepcopy(record.get("pv_manifest") or {})
    spec_old = old.get("spec") or {}
    spec: dict[str, Any] = {
        "capacity": dict(spec_old.get("capacity") or {"storage": record.get("capacity") or "1Gi"}),
        "accessModes": list(spec_old.get("accessModes") or ["ReadWriteOnce"]),
        "persistentVolumeReclaimPolicy": "Retain",
        "volumeMode": spec_old.get("volumeMode") or "Filesystem",
        "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": namespace, "name": claim},
    }
    if record.get("storage_class") or spec_old.get("storageClassName"):
        spec["storageClassName"] = record.get("storage_class") or spec_old["storageClassName"]
    for key in ("nodeAffinity", "mountOptions"):
        if spec_old.get(key):
            spec[key] = spec_old[key]
    if record.get("volume_type") == "local":
        spec["local"] = {"path": path, **({"fsType": spec_old["local"]["fsType"]}
                                          if (spec_old.get("local") or {}).get("fsType") else {})}
    else:
        spec["hostPath"] = {"path": path, "type": (spec_old.get("hostPath") or {}).get("type") or "DirectoryOrCreate"}
    annotations = {k: v for k, v in ((old.get("metadata") or {}).get("annotations") or {}).items()
                   if k != "pv.kubernetes.io/provisioned-by"}  # a static PV: the provisioner must not own it
    annotations[RESTORED_FROM] = str(record.get("pv") or "")
    labels = (old.get("metadata") or {}).get("labels") or {}
    meta: dict[str, Any] = {"name": name, "annotations": annotations, **({"labels": labels} if labels else {})}
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": meta, "spec": spec}


def build_pvc(record: dict[str, Any], *, namespace: str, volume_name: str) -> dict[str, Any]:
    """The claim *record* described, in *namespace*, bound to PV *volume_name*
    (``spec.volumeName``), without the provisioner's and binder's annotations. Pure."""
    old = record.get("pvc_manifest") or {}
    old_meta = old.get("metadata") or {}
    spec_old = old.get("spec") or {}
    annotations = {k: v for k, v in (old_meta.get("annotations") or {}).items()
                   if not k.startswith(("volume.beta.kubernetes.io/", "volume.kubernetes.io/", "pv.kubernetes.io/"))}
    meta: dict[str, Any] = {"name": record["claim"], "namespace": namespace}
    if old_meta.get("labels"):
        meta["labels"] = dict(old_meta["labels"])
    if annotations:
        meta["annotations"] = annotations
    storage = ((spec_old.get("resources") or {}).get("requests") or {}).get("storage") or record.get("capacity") or "1Gi"
    spec: dict[str, Any] = {
        "accessModes": list(spec_old.get("accessModes") or ["ReadWriteOnce"]),
        "resources": {"requests": {"storage": storage}},
        "volumeName": volume_name,
        "volumeMode": spec_old.get("volumeMode") or "Filesystem",
        "storageClassName": record.get("storage_class") or spec_old.get("storageClassName") or "",
    }
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}


def storage_path_for(config_json: str, node: str | None, storage_class: str = "") -> str | None:
    """The first storage path the provisioner's ``config.json`` gives *node* (its own
    entry, else ``DEFAULT_PATH_FOR_NON_LISTED_NODES``), honouring a per-class
    ``storageClassConfigs`` entry. None when the config names none."""
    try:
        config = json.loads(config_json)
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    per_class = (config.get("storageClassConfigs") or {}).get(storage_class) if storage_class else None
    node_map = (per_class or config).get("nodePathMap") or []
    by_node = {str(e.get("node")): e.get("paths") or [] for e in node_map if isinstance(e, dict)}
    for key in ([node] if node else []) + [DEFAULT_NODE_KEY]:
        paths = by_node.get(key)
        if paths:
            return str(paths[0])
    return None


# --- safety ---------------------------------------------------------------------------

def _dir_state(path: Path) -> str:
    """``missing``, ``empty``, ``full``, or ``other`` (not a real directory)."""
    try:
        if path.is_symlink() or not path.is_dir():
            return "other" if os.path.lexists(path) else "missing"
        with os.scandir(path) as it:
            return "full" if any(True for _ in it) else "empty"
    except FileNotFoundError:
        return "missing"


def _preflight(placements: list[Placement], host_root: Path, force: bool, this_node: str) -> None:
    """Refuse before writing anything: a claim of another node (its directory would
    land on this host, where no pod of it will look), a symlink or file where a
    directory goes, a directory with data in it (without force)."""
    for p in placements:
        if p.node and p.node != this_node:
            raise Refused(f"claim {p.ref} lives on node {p.node}, this host is {this_node}: its directory would be "
                          "written here",
                          hint=f"run the restore on {p.node} (a runbook: run it on the node), or set the source's "
                               "'node_name' (-o node=NAME) when this host is that node under another name")
    for p in placements:
        dest = on_host(host_root, p.path)
        state = _dir_state(dest)
        if state == "other":
            raise Refused(f"claim {p.ref}: {dest} exists and is not a directory (or is a symlink): not replacing it")
        if state == "full" and not force:
            raise Refused(f"claim {p.ref}: {dest} is not empty: not overwriting it",
                          hint="pass --force to move it aside (to <path>.drkit-replaced-<time>) and restore, "
                               "or restore with --target DIR")


def put_directory(ctx: RestoreContext, record: dict[str, Any], dest: Path, *, force: bool) -> tuple[RestoreResult, str | None]:
    """Write the claim's tree next to *dest* and rename it into place. Returns the
    counts and where an existing directory was moved (with *force*), else None.
    Raises IntegrityError (nothing put in place) when the snapshot's data is damaged."""
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".drkit-restore-", dir=parent))
    moved: str | None = None
    try:
        result = ctx.write_entries(stage, include=[record["logical_path"]])
        restored = stage.joinpath(*record["logical_path"].split("/"))
        if not restored.is_dir():
            raise LocalPathError(f"the snapshot holds no directory for claim {record['namespace']}/{record['claim']}",
                                 hint="the backup of this claim failed; use another snapshot")
        state = _dir_state(dest)
        if state == "empty":
            dest.rmdir()
        elif state == "full":
            if not force:
                raise Refused(f"{dest} was filled while restoring: not overwriting it")
            aside = dest.with_name(f"{dest.name}.drkit-replaced-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(2)}")
            os.rename(dest, aside)
            moved = str(aside)
        elif state == "other":
            raise Refused(f"{dest} exists and is not a directory: not replacing it")
        os.rename(restored, dest)
        fsync_dir(parent)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return result, moved


def _host_root(source: LocalPathSource, ctx: RestoreContext) -> Path:
    value = ctx.options.extra.get("host_root")
    if value is None:
        return source.options.host_root
    root = Path(str(value))
    if not root.is_absolute():
        raise UsageError(f"-o host_root={value}: must be an absolute path")
    return root


def _free_pv_name(kube: Kube, wanted: str) -> str:
    name = wanted
    while kube.get_or_none(PV, name) is not None:
        name = f"{wanted[:50]}-r{secrets.token_hex(3)}"
    return name


# --- in place --------------------------------------------------------------------------

def plan_in_place(kube: Kube, record: dict[str, Any]) -> Placement:
    """Where the claim's directory goes and what must be created (see module doc).
    Raises Refused while a pod mounts the claim, or when its PV is not hostPath/local."""
    ns, claim = record["namespace"], record["claim"]
    ref = f"{ns}/{claim}"
    recorded = check_dir_path(record["path"], f"the recorded directory of claim {ref}")
    pvc = kube.get_or_none(PVC, claim, ns)
    if pvc is None:
        new_pv = _free_pv_name(kube, record["pv"])
        return Placement(record, recorded, [build_pv(record, name=new_pv, path=recorded, namespace=ns, claim=claim),
                                            build_pvc(record, namespace=ns, volume_name=new_pv)],
                         f"claim {ref} and PV {new_pv} created", record.get("node"))
    refuse_if_claim_in_use(kube, ns, claim, action="restoring its directory under a running workload")
    bound_pv: str | None = (pvc.get("spec") or {}).get("volumeName")
    pv = kube.get_or_none(PV, bound_pv) if bound_pv else None
    if pv is not None:
        where = volume_path(pv)
        if where is None:
            raise Refused(f"claim {ref} is bound to PV {bound_pv}, which is neither a hostPath nor a local volume",
                          hint="restore with --target DIR, or --namespace NEW for a new local-path claim")
        current = check_dir_path(where[0], f"PV {bound_pv}")
        return Placement(record, current, [], f"at the path of PV {bound_pv}"
                         + (f" (recorded: {recorded})" if current != recorded else ""), pv_node(pv))
    name = bound_pv or _free_pv_name(kube, record["pv"])
    return Placement(record, recorded, [build_pv(record, name=name, path=recorded, namespace=ns, claim=claim)],
                     f"PV {name} created for the existing claim {ref}", record.get("node"))


def restore_in_place(source: LocalPathSource, ctx: RestoreContext, records: list[dict[str, Any]]) -> RestoreResult:
    """See the module doc. Raises Refused (pods, non-empty directories, K3s running
    for offline) before writing anything."""
    host_root = _host_root(source, ctx)
    records = _saved(ctx, records)
    if ctx.options.extra.get("offline"):
        from drkit.sources.k3s_common import find_k3s_server

        running = find_k3s_server()
        if running is not None:  # not even with --force: that one is about directories with data
            raise Refused(f"a K3s server runs on this host (pid {running.pid}): an offline restore cannot see which "
                          "pods mount the claims",
                          hint="stop K3s first (systemctl stop k3s), or restore without -o offline=true")
        placements = [Placement(r, check_dir_path(r["path"], f"the recorded directory of claim "
                                                               f"{r['namespace']}/{r['claim']}"), [], "at the recorded path (offline)",
                                r.get("node"))
                      for r in records]
        return _apply(source, ctx, None, placements, host_root)
    with connect_options(source.options) as kube:
        warn_version_mismatch(ctx, kube)
        placements = [plan_in_place(kube, r) for r in records]
        return _apply(source, ctx, kube, placements, host_root)


# --- new namespace -------------------------------------------------------------------------

def restore_to_namespace(source: LocalPathSource, ctx: RestoreContext, records: list[dict[str, Any]],
                         namespace: str) -> RestoreResult:
    """See the module doc. Raises Refused when a claim exists in *namespace*."""
    import re

    if not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", namespace) or len(namespace) > 63:
        raise UsageError(f"--namespace {namespace!r} is not a valid namespace name (lowercase letters, digits, '-')")
    host_root = _host_root(source, ctx)
    records = _saved(ctx, records)
    with connect_options(source.options) as kube:
        warn_version_mismatch(ctx, kube)
        configs = kube.list(CONFIGMAP, field_selector=f"metadata.name={CONFIG_MAP}")
        config_json = str(((configs[0].get("data") or {}) if configs else {}).get("config.json") or "")
        placements = []
        for r in records:
            ref = f"{namespace}/{r['claim']}"
            if kube.get_or_none(PVC, r["claim"], namespace) is not None:
                raise Refused(f"claim {ref} exists: not touching it",
                              hint="choose another --namespace, or restore the original claim with --in-place")
            base = ctx.options.extra.get("storage_path") or storage_path_for(config_json, r.get("node"), r.get("storage_class", "")) \
                or os.path.dirname(r["path"])
            base = check_dir_path(str(base), f"the storage path for claim {ref}")
            pv_name = _free_pv_name(kube, f"{namespace}-{r['claim']}"[:40].rstrip("-.") + f"-{secrets.token_hex(3)}")
            path = f"{base}/{pv_name}_{namespace}_{r['claim']}"
            placements.append(Placement(r, path, [build_pv(r, name=pv_name, path=path, namespace=namespace, claim=r["claim"]),
                                                  build_pvc(r, namespace=namespace, volume_name=pv_name)],
                                        f"new claim {ref} and PV {pv_name}", r.get("node")))
        return _apply(source, ctx, kube, placements, host_root)


# --- doing it ----------------------------------------------------------------------------

def _saved(ctx: RestoreContext, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not records:
        raise UsageError("this snapshot holds no local-path claims")
    for r in records:
        if not r.get("saved"):
            ctx.say(f"skipped {r['namespace']}/{r['claim']}: its backup failed ({r.get('error', 'no reason recorded')})")
    saved = [r for r in records if r.get("saved")]
    if not saved:
        raise UsageError("no claim of this snapshot was saved", hint="use another snapshot ('drkit snapshots')")
    return saved


def _apply(source: LocalPathSource, ctx: RestoreContext, kube: Kube | None, placements: list[Placement],
           host_root: Path) -> RestoreResult:
    result = RestoreResult()
    this_node = str(ctx.options.extra.get("node") or source.options.node_name or socket.gethostname())
    _preflight(placements, host_root, ctx.force, this_node)
    if ctx.dry_run:
        for p in placements:
            ctx.say(f"would restore claim {p.ref} into {on_host(host_root, p.path)} ({p.how})")
            for obj in p.objects:
                ctx.say(f"would create {obj['kind']}:\n" + yaml.safe_dump(obj, sort_keys=False).rstrip())
        return result
    claims = []
    for p in placements:
        dest = on_host(host_root, p.path)
        part, moved = put_directory(ctx, p.record, dest, force=ctx.force)
        result.files += part.files
        result.dirs += part.dirs
        result.symlinks += part.symlinks
        result.bytes_written += part.bytes_written
        if moved:
            ctx.say(f"moved the existing {dest} aside to {moved} (--force)")
        ctx.say(f"restored claim {p.ref}: {part.files} file(s), {part.bytes_written} bytes into {dest} ({p.how})")
        detail: dict[str, Any] = {"claim": p.ref, "path": p.path, "files": part.files, "bytes": part.bytes_written}
        if kube is not None and p.objects:
            detail.update(_create_objects(ctx, kube, p))
        claims.append(detail)
    if kube is not None:
        for detail in claims:
            if detail.get("bound_claim"):
                detail["phase"] = _wait_bound(source, kube, detail["bound_claim"])
                if detail["phase"] == "Bound":
                    ctx.say(f"claim {detail['bound_claim']} is Bound to PersistentVolume {detail['pv']}")
                else:
                    ctx.say(f"warning: claim {detail['bound_claim']} is {detail['phase'] or 'not bound'} after "
                            f"{source.options.bind_timeout:g}s: check 'kubectl describe pvc'")
    result.details["claims"] = claims
    return result


def _create_objects(ctx: RestoreContext, kube: Kube, p: Placement) -> dict[str, Any]:
    """Create the placement's PV, then its claim (namespace first). Returns the PV name
    and the claim that should bind to it (``bound_claim``)."""
    out: dict[str, Any] = {}
    for obj in p.objects:
        meta = obj["metadata"]
        if obj["kind"] == "PersistentVolume":
            kube.create(PV, obj)
            out["pv"] = meta["name"]
            ref = obj["spec"]["claimRef"]
            out["bound_claim"] = f"{ref['namespace']}/{ref['name']}"
            ctx.say(f"created PersistentVolume {meta['name']} (Retain) at {p.path}")
        else:
            if kube.ensure_namespace(meta["namespace"]):
                ctx.say(f"created Namespace {meta['namespace']}")
            ref = f"{meta['namespace']}/{meta['name']}"
            try:
                kube.create(PVC, obj)
            except KubeConflict:
                raise Refused(f"claim {ref} was created by someone else meanwhile (Argo CD?)",
                              hint=f"pause the app's sync; PV {out.get('pv')} holds the restored data for {ref}") from None
            out["created_claim"] = ref
            ctx.say(f"created PersistentVolumeClaim {ref} for PersistentVolume {obj['spec']['volumeName']}")
    return out


def _wait_bound(source: LocalPathSource, kube: Kube, ref: str) -> str:
    ns, name = ref.split("/", 1)
    deadline = time.monotonic() + source.options.bind_timeout
    while True:
        pvc = kube.get_or_none(PVC, name, ns) or {}
        phase = str((pvc.get("status") or {}).get("phase") or "")
        if phase == "Bound" or time.monotonic() >= deadline:
            return phase
        time.sleep(source.options.poll_interval)

