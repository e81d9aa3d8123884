"""``longhorn``: crash-consistent copies of Longhorn volumes, and their restore.

Backup, per selected PVC (PVC -> PV with ``csi.driver: driver.longhorn.io`` ->
``volumeHandle`` -> Longhorn ``Volume`` in ``longhorn-system``):

1. optional ``pre_hooks`` (commands on this host, or exec in a pod through the API:
   e.g. a database flush or ``fsfreeze``), a Longhorn ``Snapshot`` CR per volume (all
   taken together), ``post_hooks`` (always, even when a pre hook or a snapshot fails),
   then wait for every ``status.readyToUse`` (timeout);
2. ``mode: drkit`` (default): clone the snapshot into a temporary volume
   (``spec.dataSource: snap://VOLUME/SNAPSHOT``), attach it to this node with a
   VolumeAttachment ticket (Longhorn v1.5+), read its block device
   ``DEVICE_DIR/CLONE`` into drkit's encrypted, deduplicating repository as
   ``volumes/<namespace>/<pvc>.img``, then detach and delete the clone in a
   ``finally`` block (also when the read fails);
   ``mode: native``: a Longhorn ``Backup`` CR (label ``backup-volume``,
   ``spec.snapshotName``), wait for ``status.state: Completed`` and record
   ``status.url``. **Longhorn's own backups are not encrypted** by drkit. drkit never
   deletes a Backup CR (that deletes the remote backup);
3. ``volumes/<namespace>/<pvc>.yaml`` records the PVC, PV and Volume (stripped), size,
   filesystem, access modes, storage class, the mode and the backup URL;
4. retention: Snapshot CRs drkit created (label ``drkit.io/created-by: drkit``) beyond
   the newest ``keep_snapshots`` of each volume are deleted.

Restore (``drkit restore ... --in-place [--volume NS/PVC]... [--force] [--dry-run]``):
a new Longhorn ``Volume`` (``numberOfReplicas`` from the options, ``frontend:
blockdev``, the original size; ``spec.fromBackup`` in native mode, else the drkit image
written to its block device), then a static PV (``driver.longhorn.io``,
``volumeHandle``, reclaim policy ``Retain``, ``claimRef`` to the PVC without uid) and
the PVC under its original namespace and name bound to it (``spec.volumeName``): do it
before Argo CD syncs the app, or it provisions an empty PVC. An existing bound PVC is
refused unless ``--force``. Without ``--in-place``, ``--target DIR`` receives the
images and records as files.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

import yaml
from pydantic import Field, model_validator

from drkit import proc
from drkit.errors import EXIT_STORAGE, DrkitError, Refused, UsageError
from drkit.kube import (
    LH_BACKUP,
    LH_NODE,
    LH_SNAPSHOT,
    LH_VOLUME,
    LH_VOLUME_ATTACHMENT,
    PV,
    PVC,
    Kube,
    KubeAPIError,
    KubeConflict,
    KubeInvalid,
    KubeOptions,
    connect_options,
    refuse_if_claim_in_use,
    strip_object,
)
from drkit.repository.tree import FILE
from drkit.sources._kubeobjects import record_cluster, warn_version_mismatch
from drkit.sources.base import (
    BackupContext,
    CheckResult,
    RestoreContext,
    RestoreResult,
    Source,
    SourceOptions,
)

if TYPE_CHECKING:
    from drkit.repository.snapshot import Snapshot

log = logging.getLogger(__name__)

CSI_DRIVER = "driver.longhorn.io"
CREATED_BY = "drkit.io/created-by"
VOLUME_LABEL = "drkit.io/volume"
SOURCE_LABEL = "drkit.io/source"
CREATED_AT = "drkit.io/created-at-ns"
"""Annotation: creation time in ns (creationTimestamp has 1 s resolution: retention
must order two snapshots of the same second)."""
_COPY = 4 * 1024 * 1024
T = TypeVar("T")


class LonghornError(DrkitError):
    """{message}"""

    exit_code = EXIT_STORAGE


class LonghornTimeout(LonghornError):
    """{message}"""


class Hook(SourceOptions):
    """A command run around the snapshots.

    ``command``: argv (no shell). Without ``pod`` it runs on this host (through
    drkit.proc: timeout, one-line errors); with ``pod: NAMESPACE/NAME`` it runs in that
    pod's ``container`` (default: its only container) through the API (``pods/exec``),
    e.g. ``{command: [psql, -c, CHECKPOINT], pod: apps/db-0}``. A plain list is a local
    command. A non-zero exit fails the backup.
    """

    command: list[str] = Field(min_length=1)
    pod: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")
    container: str | None = Field(None, min_length=1)
    timeout: float = Field(300.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _argv_shorthand(cls, value: Any) -> Any:
        return {"command": value} if isinstance(value, list) else value

    def describe(self) -> str:
        where = f" in pod {self.pod}" + (f" ({self.container})" if self.container else "") if self.pod else ""
        return f"{self.command[0]!r}{where}"


class LonghornOptions(KubeOptions):
    """Longhorn volumes to back up, and how.

    Selection (PVCs whose PV is provisioned by ``driver.longhorn.io``): ``namespaces``
    (default: all), ``pvcs`` (``namespace/name`` or ``name``; default: all selected by
    the other keys), ``label_selector`` (on the PVCs). Non-Longhorn PVCs are skipped.

    ``mode``: ``drkit`` (default) stores a raw image of each volume, read from a
    snapshot clone, in drkit's **encrypted**, deduplicating repository (a second run
    stores only changed regions). ``native`` creates a Longhorn Backup to Longhorn's
    backup target and records its URL: **Longhorn's native backups are NOT encrypted
    by drkit** (only what the backup target itself offers), and they live outside the
    drkit repository. drkit never deletes Backup CRs.

    Other keys: ``longhorn_namespace`` (``longhorn-system``), ``device_dir``
    (``/dev/longhorn``, where attached volumes appear), ``node_id`` (the Longhorn node
    to attach clones and restored volumes to; default: the only node),
    ``number_of_replicas`` of restored volumes (1, a single node), ``keep_snapshots``
    (Snapshot CRs drkit keeps per volume, default 1), ``pre_hooks``/``post_hooks``
    (see :class:`Hook`; post hooks always run once pre hooks started), timeouts in
    seconds (``snapshot_timeout``, ``clone_timeout``, ``attach_timeout``,
    ``backup_timeout``) and ``poll_interval``.
    Connection keys: ``kubeconfig``, ``context``, ``in_cluster``.
    """

    mode: Literal["drkit", "native"] = "drkit"
    namespaces: list[str] = Field(default_factory=list)
    pvcs: list[str] = Field(default_factory=list)
    label_selector: str | None = Field(None, min_length=1)
    longhorn_namespace: str = "longhorn-system"
    device_dir: Path = Path("/dev/longhorn")
    node_id: str | None = Field(None, min_length=1)
    number_of_replicas: int = Field(1, ge=1, le=20)
    keep_snapshots: int = Field(1, ge=0)
    pre_hooks: list[Hook] = Field(default_factory=list)
    post_hooks: list[Hook] = Field(default_factory=list)
    snapshot_timeout: float = Field(300.0, gt=0)
    clone_timeout: float = Field(1800.0, gt=0)
    attach_timeout: float = Field(300.0, gt=0)
    backup_timeout: float = Field(6 * 3600.0, gt=0)
    poll_interval: float = Field(2.0, gt=0)


@dataclass
class SelectedVolume:
    """One PVC chosen for backup, with its PV and Longhorn Volume."""

    pvc: dict[str, Any]
    pv: dict[str, Any]
    volume: dict[str, Any]

    @property
    def namespace(self) -> str:
        return self.pvc["metadata"]["namespace"]

    @property
    def pvc_name(self) -> str:
        return self.pvc["metadata"]["name"]

    @property
    def volume_name(self) -> str:
        return self.volume["metadata"]["name"]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.pvc_name}"


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:63]
    return value.strip("-_.") or "x"


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def _record_path(namespace: str, pvc: str, ext: str) -> str:
    return f"volumes/{namespace}/{pvc}.{ext}"


class LonghornSource(Source):
    """Longhorn volumes behind PVCs (see :class:`LonghornOptions`)."""

    type_name = "longhorn"
    Options = LonghornOptions
    options: LonghornOptions

    def describe(self) -> str:
        enc = "encrypted in drkit" if self.options.mode == "drkit" else "Longhorn native, NOT encrypted by drkit"
        return f"{self.name} (longhorn, {enc})"

    # ------------------------------------------------------------------ helpers
    def _wait(self, what: str, probe: Callable[[], T | None], timeout: float, *, hint: str | None = None) -> T:
        """Poll *probe* until it returns a value; LonghornTimeout after *timeout*."""
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value is not None:
                return value
            if time.monotonic() >= deadline:
                raise LonghornTimeout(f"timed out after {timeout:g}s waiting for {what}", hint=hint)
            time.sleep(min(self.options.poll_interval, max(0.01, deadline - time.monotonic())))

    def _node_id(self, kube: Kube) -> str:
        if self.options.node_id:
            return self.options.node_id
        nodes = [n["metadata"]["name"] for n in kube.list(LH_NODE, self.options.longhorn_namespace)]
        if len(nodes) != 1:
            raise UsageError(
                f"cannot choose a Longhorn node to attach volumes to: found {len(nodes)} ({', '.join(nodes) or 'none'})",
                hint="set the source's 'node_id' to the name of this node (kubectl -n longhorn-system get nodes.longhorn.io)",
            )
        return nodes[0]

    def _lh_get(self, kube: Kube, res: Any, name: str) -> dict[str, Any] | None:
        return kube.get_or_none(res, name, self.options.longhorn_namespace)

    # ------------------------------------------------------------------ selection
    def select(self, kube: Kube) -> tuple[list[SelectedVolume], list[str]]:
        """The Longhorn-backed PVCs to back up, and notes about what was skipped.
        Raises UsageError when a PVC named in ``pvcs`` is missing, unbound or not
        Longhorn."""
        opts = self.options
        pvcs: list[dict[str, Any]] = []
        scopes: list[str | None] = list(opts.namespaces) or [None]
        for ns in scopes:
            pvcs += kube.list(PVC, ns, label_selector=opts.label_selector)
        wanted = set(opts.pvcs)
        if wanted:
            pvcs = [p for p in pvcs if p["metadata"]["name"] in wanted
                    or f"{p['metadata']['namespace']}/{p['metadata']['name']}" in wanted]
            found = {p["metadata"]["name"] for p in pvcs} | {
                f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in pvcs}
            missing = sorted(wanted - found)
            if missing:
                raise UsageError(f"PVC(s) not found: {', '.join(missing)}",
                                 hint="check 'pvcs', 'namespaces' and 'label_selector' of the source")
        selected: list[SelectedVolume] = []
        skipped: list[str] = []
        for pvc in pvcs:
            ref = f"{pvc['metadata']['namespace']}/{pvc['metadata']['name']}"
            explicit = pvc["metadata"]["name"] in wanted or ref in wanted
            pv_name = (pvc.get("spec") or {}).get("volumeName")
            pv = kube.get_or_none(PV, pv_name) if pv_name else None
            csi = ((pv or {}).get("spec") or {}).get("csi") or {}
            problem = None
            if pv is None:
                problem = f"PVC {ref} is not bound to a PV"
            elif csi.get("driver") != CSI_DRIVER:
                problem = f"PVC {ref} is not a Longhorn volume (driver {csi.get('driver') or 'none'})"
            if problem:
                if explicit:
                    raise UsageError(problem, hint="only PVCs provisioned by driver.longhorn.io can be backed up")
                skipped.append(problem)
                continue
            assert pv is not None
            volume = self._lh_get(kube, LH_VOLUME, csi["volumeHandle"])
            if volume is None:
                raise LonghornError(f"PVC {ref}: Longhorn volume {csi['volumeHandle']} (from PV {pv_name}) not found",
                                    hint="is 'longhorn_namespace' right?")
            selected.append(SelectedVolume(pvc, pv, volume))
        return selected, skipped

    # ------------------------------------------------------------------ backup
    def backup(self, ctx: BackupContext) -> None:
        """Snapshot, then copy (drkit) or back up (native) every selected volume.
        Raises Refused when nothing is selected; LonghornError/LonghornTimeout and
        KubeAPIError subclasses on failures; temporary clones never outlive a run."""
        opts = self.options
        with connect_options(opts) as kube:
            record_cluster(ctx, kube)
            selected, skipped = self.select(kube)
            if not selected:
                raise Refused(
                    f"source {self.name!r} selected no Longhorn volumes" + (f" ({'; '.join(skipped)})" if skipped else ""),
                    hint="check kubeconfig/context, 'namespaces', 'pvcs' and 'label_selector'",
                )
            node = self._node_id(kube) if opts.mode == "drkit" else None
            snapshots = self._take_snapshots(ctx, kube, selected)
            records = []
            for sel in selected:
                snap = snapshots[sel.volume_name]
                record = self._record(sel, snap)
                if opts.mode == "drkit":
                    assert node is not None
                    size = self._copy_volume(ctx, kube, sel, snap, node)
                    record["image"] = _record_path(sel.namespace, sel.pvc_name, "img")
                    record["image_size"] = size
                else:
                    record["backup"] = self._native_backup(ctx, kube, sel, snap)
                ctx.add_bytes(_record_path(sel.namespace, sel.pvc_name, "yaml"),
                              yaml.safe_dump(record, sort_keys=False).encode(), mode=0o600)
                records.append(record)
                self._apply_retention(kube, sel.volume_name)
        ctx.meta.update(
            {
                "mode": opts.mode,
                "encrypted_by_drkit": opts.mode == "drkit",
                "volumes": [
                    {
                        "namespace": r["namespace"],
                        "pvc": r["pvc_name"],
                        "volume": r["volume"]["name"],
                        "size": r["volume"]["size"],
                        "snapshot": r["snapshot"],
                        **({"backup_url": r["backup"]["url"], "backup": r["backup"]["name"]} if "backup" in r else {}),
                    }
                    for r in records
                ],
            }
        )
        if skipped:
            ctx.meta["skipped"] = skipped

    def _record(self, sel: SelectedVolume, snap: str) -> dict[str, Any]:
        vspec = sel.volume.get("spec") or {}
        pv_spec = sel.pv.get("spec") or {}
        pvc_spec = sel.pvc.get("spec") or {}
        return {
            "namespace": sel.namespace,
            "pvc_name": sel.pvc_name,
            "mode": self.options.mode,
            "snapshot": snap,
            "size": int(vspec.get("size") or 0),
            "fs_type": (pv_spec.get("csi") or {}).get("fsType", ""),
            "access_modes": pvc_spec.get("accessModes") or pv_spec.get("accessModes") or [],
            "storage_class": pvc_spec.get("storageClassName") or pv_spec.get("storageClassName") or "",
            "volume_mode": pvc_spec.get("volumeMode", "Filesystem"),
            "volume": {
                "name": sel.volume_name,
                "size": str(vspec.get("size") or "0"),
                "accessMode": vspec.get("accessMode", "rwo"),
                "dataEngine": vspec.get("dataEngine", "v1"),
                "numberOfReplicas": vspec.get("numberOfReplicas"),
            },
            "pvc": strip_object(sel.pvc),
            "pv": strip_object(sel.pv),
        }

    def _run_hooks(self, kube: Kube, hooks: list[Hook], what: str) -> None:
        """Run *hooks* in order; raise on the first failure (proc.CommandFailed, or a
        KubeAPIError subclass when the pod cannot be reached). Errors carry the last
        lines of the command's stderr, never its environment."""
        for hook in hooks:
            hint = f"fix or remove the source's {what}"
            if hook.pod is None:
                proc.run(hook.command, timeout=hook.timeout, hint=hint)
                continue
            ns, pod = hook.pod.split("/", 1)
            result = kube.exec(ns, pod, hook.command, container=hook.container, timeout=hook.timeout)
            if result.returncode != 0:
                tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
                raise proc.CommandFailed(f"{what} {hook.describe()} failed (exit {result.returncode})"
                                         + (f": {tail}" if tail else ""), cmd=proc.format_cmd(hook.command),
                                         returncode=result.returncode, stderr_tail=tail, hint=hint)

    def _take_snapshots(self, ctx: BackupContext, kube: Kube, selected: list[SelectedVolume]) -> dict[str, str]:
        """pre hooks, one Snapshot CR per volume, post hooks (always), then wait ready."""
        opts = self.options
        names: dict[str, str] = {}
        ctx.progress(f"{self.name}: snapshotting {len(selected)} volume(s)")
        try:
            self._run_hooks(kube, opts.pre_hooks, "pre hook")
            for sel in selected:
                name = f"drkit-{_stamp()}-{secrets.token_hex(3)}"
                kube.create(
                    LH_SNAPSHOT,
                    {
                        "apiVersion": LH_SNAPSHOT.api_version,
                        "kind": "Snapshot",
                        "metadata": {
                            "name": name,
                            "namespace": opts.longhorn_namespace,
                            "labels": {CREATED_BY: "drkit", VOLUME_LABEL: _label_value(sel.volume_name),
                                       SOURCE_LABEL: _label_value(self.name)},
                            "annotations": {CREATED_AT: str(time.time_ns())},
                        },
                        "spec": {"volume": sel.volume_name, "createSnapshot": True,
                                 "labels": {CREATED_BY: "drkit"}},
                    },
                )
                names[sel.volume_name] = name
        except BaseException:
            try:
                self._run_hooks(kube, opts.post_hooks, "post hook")
            except DrkitError as exc:  # the first error is the one to report
                log.error("%s: post hook failed too: %s", self.name, exc.message)
            raise
        self._run_hooks(kube, opts.post_hooks, "post hook")
        for sel in selected:
            name = names[sel.volume_name]

            def ready(name: str = name, sel: SelectedVolume = sel) -> bool | None:
                snap = self._lh_get(kube, LH_SNAPSHOT, name)
                status = (snap or {}).get("status") or {}
                if snap is None:
                    raise LonghornError(f"Longhorn snapshot {name} disappeared while waiting for it")
                if status.get("error"):
                    raise LonghornError(f"Longhorn snapshot {name} of volume {sel.volume_name} failed: {status['error']}")
                return True if status.get("readyToUse") else None

            self._wait(f"Longhorn snapshot {name} of {sel.ref} to be readyToUse", ready, opts.snapshot_timeout,
                       hint="check the volume's health in Longhorn; raise 'snapshot_timeout' for large volumes")
        return names

    def _attach(self, kube: Kube, volume: str, node: str) -> str:
        """Add a VolumeAttachment ticket for *volume* on *node*; wait for the device."""
        opts = self.options
        ticket = f"drkit-{secrets.token_hex(6)}"
        self._wait(f"the VolumeAttachment of {volume}", lambda: self._lh_get(kube, LH_VOLUME_ATTACHMENT, volume),
                   opts.attach_timeout)
        kube.merge_patch(LH_VOLUME_ATTACHMENT, volume, opts.longhorn_namespace, {
            "spec": {"attachmentTickets": {ticket: {
                "id": ticket, "type": "longhorn-api", "nodeID": node, "parameters": {"disableFrontend": "false"},
            }}},
        })
        device = opts.device_dir / volume

        def attached() -> bool | None:
            va = self._lh_get(kube, LH_VOLUME_ATTACHMENT, volume) or {}
            st = ((va.get("status") or {}).get("attachmentTicketStatuses") or {}).get(ticket) or {}
            vol = self._lh_get(kube, LH_VOLUME, volume) or {}
            ok = st.get("satisfied") and (vol.get("status") or {}).get("state") == "attached" and device.exists()
            return True if ok else None

        self._wait(f"Longhorn volume {volume} to attach on node {node} ({device})", attached, opts.attach_timeout,
                   hint="check the volume in the Longhorn UI; is 'device_dir' right and is this the node in 'node_id'?")
        return ticket

    def _detach(self, kube: Kube, volume: str, ticket: str, *, wait: bool = True) -> None:
        kube.merge_patch(LH_VOLUME_ATTACHMENT, volume, self.options.longhorn_namespace,
                         {"spec": {"attachmentTickets": {ticket: None}}})
        if wait:
            device = self.options.device_dir / volume

            def detached() -> bool | None:
                vol = self._lh_get(kube, LH_VOLUME, volume) or {}
                return True if (vol.get("status") or {}).get("state") != "attached" and not device.exists() else None

            self._wait(f"Longhorn volume {volume} to detach", detached, self.options.attach_timeout)

    def _copy_volume(self, ctx: BackupContext, kube: Kube, sel: SelectedVolume, snap: str, node: str) -> int:
        """Clone *snap*, attach the clone, stream its device into *ctx*; the clone is
        detached and deleted whatever happens. Returns the image size."""
        opts = self.options
        clone = f"drkit-clone-{secrets.token_hex(5)}"
        vspec = sel.volume.get("spec") or {}
        kube.create(LH_VOLUME, {
            "apiVersion": LH_VOLUME.api_version,
            "kind": "Volume",
            "metadata": {"name": clone, "namespace": opts.longhorn_namespace,
                         "labels": {CREATED_BY: "drkit", VOLUME_LABEL: _label_value(sel.volume_name)}},
            "spec": {
                "size": str(vspec.get("size")),
                "numberOfReplicas": 1,
                "frontend": "blockdev",
                "accessMode": "rwo",
                "dataEngine": vspec.get("dataEngine", "v1"),
                "dataSource": f"snap://{sel.volume_name}/{snap}",
            },
        })
        ticket: str | None = None
        try:
            def cloned() -> bool | None:
                vol = self._lh_get(kube, LH_VOLUME, clone) or {}
                state = ((vol.get("status") or {}).get("cloneStatus") or {}).get("state", "")
                if state == "failed":
                    raise LonghornError(f"Longhorn could not clone snapshot {snap} of {sel.volume_name} into {clone}")
                return True if state == "completed" else None

            ctx.progress(f"{self.name}: cloning {sel.ref}")
            self._wait(f"clone {clone} of {sel.ref}", cloned, opts.clone_timeout)
            ticket = self._attach(kube, clone, node)
            device = opts.device_dir / clone
            ctx.progress(f"{self.name}: reading {sel.ref}")
            try:
                with open(device, "rb", buffering=0) as f:
                    entry = ctx.add_stream(_record_path(sel.namespace, sel.pvc_name, "img"), f, mode=0o600)
            except OSError as exc:
                raise LonghornError(f"cannot read the block device {device} of {sel.ref}: {exc.strerror or exc}",
                                    hint="drkit must run as root on the node that holds the volume") from None
            return entry.size
        finally:
            self._remove_clone(kube, clone, ticket)

    def _remove_clone(self, kube: Kube, clone: str, ticket: str | None) -> None:
        """Detach and delete a temporary clone. Errors are logged, then the deletion is
        still attempted (a clone left behind is named in the error)."""
        try:
            if ticket is not None:
                self._detach(kube, clone, ticket)
        except (KubeAPIError, LonghornError) as exc:
            log.warning("detaching clone %s failed: %s", clone, exc)
        try:
            kube.delete(LH_VOLUME, clone, self.options.longhorn_namespace, missing_ok=True)
        except KubeAPIError as exc:
            raise LonghornError(f"could not delete temporary Longhorn volume {clone}: {exc.message}",
                                hint=f"delete it by hand: kubectl -n {self.options.longhorn_namespace} delete "
                                     f"volumes.longhorn.io {clone}") from None

    def _native_backup(self, ctx: BackupContext, kube: Kube, sel: SelectedVolume, snap: str) -> dict[str, Any]:
        """Create a Backup CR and wait for Completed. Never deletes it."""
        opts = self.options
        name = f"backup-{secrets.token_hex(8)}"
        kube.create(LH_BACKUP, {
            "apiVersion": LH_BACKUP.api_version,
            "kind": "Backup",
            "metadata": {"name": name, "namespace": opts.longhorn_namespace,
                         "labels": {"backup-volume": sel.volume_name, CREATED_BY: "drkit"}},
            "spec": {"snapshotName": snap, "labels": {SOURCE_LABEL: _label_value(self.name)}},
        })
        ctx.progress(f"{self.name}: Longhorn backup {name} of {sel.ref}")

        def completed() -> dict[str, Any] | None:
            backup = self._lh_get(kube, LH_BACKUP, name)
            status = (backup or {}).get("status") or {}
            if backup is None:
                raise LonghornError(f"Longhorn Backup {name} of {sel.ref} disappeared while in progress")
            if status.get("state") == "Error":
                raise LonghornError(f"Longhorn backup {name} of {sel.ref} failed: {status.get('error') or 'no reason given'}",
                                    hint="check the backup target (Longhorn UI, Settings > Backup Target)")
            return status if status.get("state") == "Completed" and status.get("url") else None

        status = self._wait(
            f"Longhorn backup {name} of {sel.ref} to complete", completed, opts.backup_timeout,
            hint=f"the Backup CR {name} was left in place (drkit never deletes Backups); raise 'backup_timeout'",
        )
        return {"name": name, "url": status["url"], "created": status.get("backupCreatedAt", ""),
                "encrypted_by_drkit": False}

    def _apply_retention(self, kube: Kube, volume: str) -> list[str]:
        """Delete drkit's Snapshot CRs of *volume* beyond the newest ``keep_snapshots``."""
        snaps = kube.list(LH_SNAPSHOT, self.options.longhorn_namespace,
                          label_selector=f"{CREATED_BY}=drkit,{VOLUME_LABEL}={_label_value(volume)}")
        snaps = [s for s in snaps if (s.get("spec") or {}).get("volume") == volume]

        def age_key(s: dict[str, Any]) -> tuple[str, int, str]:
            ns = (s["metadata"].get("annotations") or {}).get(CREATED_AT, "0")
            return (s["metadata"].get("creationTimestamp", ""), int(ns) if ns.isdigit() else 0, s["metadata"]["name"])

        snaps.sort(key=age_key)
        doomed = snaps[: max(0, len(snaps) - self.options.keep_snapshots)]
        for s in doomed:
            kube.delete(LH_SNAPSHOT, s["metadata"]["name"], self.options.longhorn_namespace, missing_ok=True)
        return [s["metadata"]["name"] for s in doomed]

    # ------------------------------------------------------------------ restore
    def _records(self, ctx: RestoreContext) -> list[tuple[dict[str, Any], Any]]:
        """(record, image entry or None) for each volume in the snapshot, filtered by
        ``ctx.options.volumes``; UsageError for a requested volume not present."""
        entries = {e.path: e for e in ctx.entries() if e.type == FILE}
        records = []
        for path, entry in sorted(entries.items()):
            if not (path.startswith("volumes/") and path.endswith(".yaml")):
                continue
            f = ctx.open_entry(entry)
            try:
                record = yaml.safe_load(f.read())
            finally:
                f.close()
            image = entries.get(record["image"]) if record.get("image") else None
            records.append((record, image))
        wanted = list(ctx.options.volumes or [])
        if wanted:
            def match(r: dict[str, Any]) -> bool:
                return r["pvc_name"] in wanted or f"{r['namespace']}/{r['pvc_name']}" in wanted

            known = {f"{r['namespace']}/{r['pvc_name']}" for r, _ in records}
            missing = [w for w in wanted if not any(w in (k, k.split("/", 1)[1]) for k in known)]
            if missing:
                raise UsageError(f"volume(s) not in this snapshot: {', '.join(missing)}",
                                 hint="in this snapshot: " + (", ".join(sorted(known)) or "none"))
            records = [(r, i) for r, i in records if match(r)]
        return records

    def restore(self, ctx: RestoreContext) -> RestoreResult:
        """See the module doc. Refuses (Refused) a bound PVC without ``force``; with
        ``dry_run`` only prints the objects it would create."""
        records = self._records(ctx)
        if not ctx.options.in_place:
            if ctx.target is None:
                raise UsageError(f"source {self.name!r}: give --target DIR, or --in-place to recreate the volumes")
            include: list[str] | None = None  # everything (or --include)
            if ctx.options.volumes:
                include = [p for r, _ in records for p in ([_record_path(r["namespace"], r["pvc_name"], "yaml")]
                                                           + ([r["image"]] if r.get("image") else []))]
            return ctx.write_entries(ctx.target, include=include)
        result = RestoreResult()
        if not records:
            raise UsageError(f"snapshot of source {self.name!r} holds no volumes")
        with connect_options(self.options) as kube:
            warn_version_mismatch(ctx, kube)
            node = self._node_id(kube) if any(r["mode"] == "drkit" for r, _ in records) else ""
            for record, image in records:
                self._restore_one(ctx, kube, record, image, node, result)
        return result

    def _free_name(self, kube: Kube, wanted: str) -> str:
        name = wanted
        while self._lh_get(kube, LH_VOLUME, name) is not None or kube.get_or_none(PV, name) is not None:
            name = f"{wanted[:50]}-r{secrets.token_hex(3)}"
        return name

    def build_objects(self, record: dict[str, Any], volume_name: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """The Volume, PV and PVC a restore creates for one record. Pure."""
        opts = self.options
        ns, pvc_name = record["namespace"], record["pvc_name"]
        vol = record["volume"]
        spec: dict[str, Any] = {
            "size": str(vol["size"]),
            "numberOfReplicas": opts.number_of_replicas,
            "frontend": "blockdev",
            "accessMode": vol.get("accessMode", "rwo"),
            "dataEngine": vol.get("dataEngine", "v1"),
        }
        if record["mode"] == "native":
            spec["fromBackup"] = record["backup"]["url"]
        volume = {
            "apiVersion": LH_VOLUME.api_version,
            "kind": "Volume",
            "metadata": {"name": volume_name, "namespace": opts.longhorn_namespace,
                         "labels": {"drkit.io/restored-from": _label_value(vol["name"])}},
            "spec": spec,
        }
        old_pv_spec = copy.deepcopy((record.get("pv") or {}).get("spec") or {})
        old_csi = old_pv_spec.get("csi") or {}
        access = record.get("access_modes") or ["ReadWriteOnce"]
        storage = (old_pv_spec.get("capacity") or {}).get("storage") or str(vol["size"])
        pv_spec: dict[str, Any] = {
            "capacity": {"storage": storage},
            "accessModes": access,
            "persistentVolumeReclaimPolicy": "Retain",
            "volumeMode": record.get("volume_mode") or "Filesystem",
            "csi": {
                "driver": CSI_DRIVER,
                "volumeHandle": volume_name,
                "fsType": record.get("fs_type") or old_csi.get("fsType") or "ext4",
                "volumeAttributes": dict(old_csi.get("volumeAttributes") or {}),
            },
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": pvc_name},
        }
        pv_spec["csi"]["volumeAttributes"]["numberOfReplicas"] = str(opts.number_of_replicas)
        if record.get("storage_class"):
            pv_spec["storageClassName"] = record["storage_class"]
        pv = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": volume_name, "annotations": {"pv.kubernetes.io/provisioned-by": CSI_DRIVER}},
              "spec": pv_spec}
        old_pvc = record.get("pvc") or {}
        pvc_meta = {k: v for k, v in (old_pvc.get("metadata") or {}).items() if k in ("labels", "annotations")}
        annotations = {k: v for k, v in (pvc_meta.get("annotations") or {}).items()
                       if not k.startswith(("volume.beta.kubernetes.io/", "volume.kubernetes.io/", "pv.kubernetes.io/"))}
        pvc_meta = {"name": pvc_name, "namespace": ns,
                    **({"labels": pvc_meta["labels"]} if pvc_meta.get("labels") else {}),
                    **({"annotations": annotations} if annotations else {})}
        pvc_spec: dict[str, Any] = {
            "accessModes": access,
            "resources": {"requests": {"storage": storage}},
            "volumeName": volume_name,
            "volumeMode": record.get("volume_mode") or "Filesystem",
            "storageClassName": record.get("storage_class") or "",
        }
        pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": pvc_meta, "spec": pvc_spec}
        return volume, pv, pvc

    def _say(self, ctx: RestoreContext, result: RestoreResult, line: str) -> None:
        """Report one action (ctx.say prints it as it happens; not repeated in result.lines)."""
        ctx.say(line)

    def _restore_one(self, ctx: RestoreContext, kube: Kube, record: dict[str, Any], image: Any, node: str,
                     result: RestoreResult) -> None:
        opts = self.options
        ns, pvc_name = record["namespace"], record["pvc_name"]
        ref = f"{ns}/{pvc_name}"
        if record["mode"] == "drkit" and image is None:
            raise LonghornError(f"the snapshot has no image for {ref}", hint="the backup was incomplete; use another snapshot")
        existing = kube.get_or_none(PVC, pvc_name, ns)
        if existing is not None:
            phase = (existing.get("status") or {}).get("phase")
            bound_to = (existing.get("spec") or {}).get("volumeName", "")
            if phase == "Bound" and not ctx.force:
                raise Refused(f"PVC {ref} exists and is bound to {bound_to}: not overwriting it",
                              hint="scale the workload down and pass --force to replace the PVC (its old PV and "
                                   "volume are left as they are), or restore with --target DIR")
        volume_name = self._free_name(kube, record["volume"]["name"])
        volume, pv, pvc = self.build_objects(record, volume_name)
        if ctx.dry_run:
            if existing is not None:
                self._say(ctx, result, f"would delete existing PVC {ref}")
            for obj in (volume, pv, pvc):
                self._say(ctx, result, f"would create {obj['kind']}:\n" + yaml.safe_dump(obj, sort_keys=False).rstrip())
            return
        if existing is not None:
            refuse_if_claim_in_use(kube, ns, pvc_name, action="replacing it")
            old_pv = (existing.get("spec") or {}).get("volumeName")
            if old_pv and kube.get_or_none(PV, old_pv) is not None:
                kube.merge_patch(PV, old_pv, None, {"spec": {"persistentVolumeReclaimPolicy": "Retain"}})
                self._say(ctx, result, f"set reclaim policy Retain on PersistentVolume {old_pv} (kept)")
            kube.delete(PVC, pvc_name, ns, missing_ok=True)
            self._wait(f"PVC {ref} to be deleted", lambda: True if kube.get_or_none(PVC, pvc_name, ns) is None else None,
                       opts.attach_timeout, hint="a pod still uses it (kubernetes.io/pvc-protection): scale it down")
            self._say(ctx, result, f"deleted existing PVC {ref} (--force)")
        try:
            kube.create(LH_VOLUME, volume)
        except KubeInvalid as exc:
            if record["mode"] != "native":
                raise
            raise KubeInvalid(
                f"Longhorn refused to restore {ref} from {record['backup']['url']}: {exc.message}",
                status=exc.status,
                hint="on a rebuilt cluster, configure the same backup target and wait until Longhorn has synced "
                     "it (kubectl -n longhorn-system get backupvolumes,backups), then run the restore again",
            ) from None
        try:
            self._wait(f"restored Longhorn volume {volume_name} to be ready", lambda: self._volume_ready(kube, volume_name),
                       opts.backup_timeout if record["mode"] == "native" else opts.attach_timeout)
            if record["mode"] == "drkit":
                written = self._write_image(ctx, kube, volume_name, image, node)
                result.bytes_written += written
                self._say(ctx, result, f"created Volume {volume_name} ({volume['spec']['size']} bytes, "
                                       f"{opts.number_of_replicas} replica(s)) and wrote {written} bytes of {ref}")
            else:
                self._say(ctx, result, f"created Volume {volume_name} from Longhorn backup {record['backup']['url']} "
                                       f"({opts.number_of_replicas} replica(s))")
        except BaseException:
            kube.delete(LH_VOLUME, volume_name, opts.longhorn_namespace, missing_ok=True)  # a half-restored volume
            raise
        kube.create(PV, pv)
        self._say(ctx, result, f"created PersistentVolume {volume_name} (Retain) for Longhorn volume {volume_name}")
        kube.ensure_namespace(ns)
        try:
            kube.create(PVC, pvc)
        except KubeConflict:
            raise Refused(f"PVC {ref} was created by someone else meanwhile (Argo CD?)",
                          hint=f"pause the app's sync; PV {volume_name} is ready to bind to {ref}") from None
        self._say(ctx, result, f"created PersistentVolumeClaim {ref} bound to PersistentVolume {volume_name}")
        result.files += 1
        result.details.setdefault("volumes", []).append({"pvc": ref, "volume": volume_name, "mode": record["mode"]})

    def _volume_ready(self, kube: Kube, name: str) -> bool | None:
        vol = self._lh_get(kube, LH_VOLUME, name) or {}
        status = vol.get("status") or {}
        if status.get("restoreRequired"):
            return None
        return True if status.get("state") in ("detached", "attached") else None

    def _write_image(self, ctx: RestoreContext, kube: Kube, volume: str, image: Any, node: str) -> int:
        """Attach *volume*, write the image to its block device (skipping all-zero
        blocks: a new Longhorn volume reads as zeros), fsync, detach."""
        ticket = self._attach(kube, volume, node)
        written = 0
        try:
            device = self.options.device_dir / volume
            try:
                fd = os.open(device, os.O_WRONLY)
            except OSError as exc:
                raise LonghornError(f"cannot open the block device {device} for writing: {exc.strerror or exc}",
                                    hint="drkit must run as root on the node that holds the volume") from None
            src: IO[bytes] = ctx.open_entry(image)
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
            self._detach(kube, volume, ticket)
        return written

    # ------------------------------------------------------------------ drills
    def check_restored(self, restored: Path, snapshot: Snapshot) -> CheckResult:
        """Each volume's record is present; a drkit image has the recorded size and, for
        ext2/3/4, carries a superblock (or is all zeros: never formatted) and passes a
        read-only ``e2fsck -fn``; a native record carries its URL (the data in
        Longhorn's backup target is not read)."""
        problems: list[str] = []
        details: dict[str, Any] = {}
        for vol in snapshot.meta.get("volumes") or []:
            ref = f"{vol['namespace']}/{vol['pvc']}"
            rec_path = restored / _record_path(vol["namespace"], vol["pvc"], "yaml")
            if not rec_path.is_file():
                problems.append(f"{ref}: record {rec_path.name} missing")
                continue
            record = yaml.safe_load(rec_path.read_text())
            if record.get("mode") == "native":
                if not (record.get("backup") or {}).get("url"):
                    problems.append(f"{ref}: native backup without URL")
                details[ref] = "native: URL recorded, data not checked"
                continue
            image = restored / record["image"]
            if not image.is_file() or image.stat().st_size != record.get("image_size"):
                problems.append(f"{ref}: image missing or not {record.get('image_size')} bytes")
                continue
            fs = record.get("fs_type") or ""
            if record.get("volume_mode") == "Block":
                details[ref] = "raw block volume: size checked only"
                continue
            if fs in ("ext2", "ext3", "ext4"):
                with open(image, "rb") as f:
                    head = f.read(1024 * 1024)
                if head[1080:1082] != b"\x53\xef":  # no ext superblock magic
                    if head.count(0) == len(head):
                        details[ref] = f"{fs}: no filesystem yet (never formatted), size checked"
                    else:
                        problems.append(f"{ref}: no ext2/3/4 superblock, although the PV says {fs}")
                    continue
                try:
                    res = proc.run([proc.which("e2fsck"), "-fn", str(image)], timeout=3600, check=False)
                except proc.ProgramNotFound:
                    details[ref] = f"{fs}: e2fsck not installed, filesystem not checked"
                    continue
                if res.returncode != 0:
                    lines = [ln.strip() for ln in (res.text + res.err_text).splitlines() if ln.strip()]
                    tail = " | ".join(lines[:3])
                    problems.append(f"{ref}: e2fsck -fn found problems (exit {res.returncode}): {tail}")
                else:
                    details[ref] = f"{fs}: e2fsck -fn clean"
            else:
                details[ref] = f"{fs or 'no filesystem recorded'}: size checked only"
        count = len(snapshot.meta.get("volumes") or [])
        summary = f"{count} volume(s) checked" if not problems else "; ".join(problems[:3])
        return CheckResult(ok=not problems, summary=summary, details=details, problems=problems)
