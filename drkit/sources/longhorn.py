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
   ``finally`` block (also when the read fails). An encrypted Longhorn volume is read
   as its block device shows it: LUKS ciphertext (the CSI driver opens it at mount);
   ``mode: native``: a Longhorn ``Backup`` CR (label ``backup-volume``,
   ``spec.snapshotName``), wait for ``status.state: Completed`` and record
   ``status.url``. **Longhorn's own backups are not encrypted** by drkit. drkit never
   deletes a Backup CR (that deletes the remote backup);
3. ``volumes/<namespace>/<pvc>.yaml`` records the PVC, PV and Volume (stripped), size,
   filesystem, access modes, storage class, ``encrypted`` and the PV's CSI secret
   references, the mode and the backup URL;
4. retention: the Snapshot CRs this source created (labels ``drkit.io/created-by:
   drkit`` and ``drkit.io/source``, annotation ``drkit.io/source-name``) beyond the
   newest ``keep_snapshots`` of each volume are deleted; snapshots of other sources and
   the user's own are never touched.

Restore: with ``--target DIR`` the images and records as files; with ``--in-place``
see :mod:`drkit.sources.longhorn_restore` (plan first, never delete what may hold
data; ``--force``, ``--dry-run``, ``--namespace``, ``--claim``). The Longhorn API
client is :mod:`drkit.longhorn_api`.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field, model_validator

from drkit import proc
from drkit.errors import DrkitError, Refused, UsageError
from drkit.kube import (
    LH_VOLUME,
    PV,
    PVC,
    Kube,
    KubeAPIError,
    KubeOptions,
    connect_options,
    strip_object,
)
from drkit.longhorn_api import CSI_DRIVER, LonghornAPI, LonghornError, LonghornTimeout
from drkit.repository.tree import FILE
from drkit.sources import longhorn_restore as lr
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

__all__ = ["CSI_DRIVER", "LonghornError", "LonghornOptions", "LonghornSource", "LonghornTimeout"]

CREATED_BY = "drkit.io/created-by"
VOLUME_LABEL = "drkit.io/volume"
SOURCE_LABEL = "drkit.io/source"
SOURCE_NAME = "drkit.io/source-name"
"""Annotation: the exact source name (a label value may have lost characters)."""
CREATED_AT = "drkit.io/created-at-ns"
"""Annotation: creation time in ns (creationTimestamp has 1 s resolution: retention
must order two snapshots of the same second)."""
_label_value = lr.label_value


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

    def _api(self, kube: Kube) -> LonghornAPI:
        opts = self.options
        return LonghornAPI(kube, opts.longhorn_namespace, device_dir=opts.device_dir,
                           poll_interval=opts.poll_interval, attach_timeout=opts.attach_timeout)

    # ------------------------------------------------------------------ selection
    def select(self, kube: Kube) -> tuple[list[SelectedVolume], list[str]]:
        """The Longhorn-backed PVCs to back up, and notes about what was skipped.
        Raises UsageError when a PVC named in ``pvcs`` is missing, unbound or not
        Longhorn."""
        opts = self.options
        api = self._api(kube)
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
            volume = api.volume(csi["volumeHandle"])
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
            api = self._api(kube)
            record_cluster(ctx, kube)
            selected, skipped = self.select(kube)
            if not selected:
                raise Refused(
                    f"source {self.name!r} selected no Longhorn volumes" + (f" ({'; '.join(skipped)})" if skipped else ""),
                    hint="check kubeconfig/context, 'namespaces', 'pvcs' and 'label_selector'",
                )
            node = api.node_id(opts.node_id) if opts.mode == "drkit" else None
            snapshots = self._take_snapshots(ctx, kube, api, selected)
            records = []
            for sel in selected:
                snap = snapshots[sel.volume_name]
                record = self._record(sel, snap)
                if opts.mode == "drkit":
                    assert node is not None
                    size = self._copy_volume(ctx, api, sel, snap, node)
                    record["image"] = _record_path(sel.namespace, sel.pvc_name, "img")
                    record["image_size"] = size
                else:
                    record["backup"] = self._native_backup(ctx, api, sel, snap)
                ctx.add_bytes(_record_path(sel.namespace, sel.pvc_name, "yaml"),
                              yaml.safe_dump(record, sort_keys=False).encode(), mode=0o600)
                records.append(record)
                self._apply_retention(api, sel.volume_name)
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
                        **({"encrypted": True} if r["encrypted"] else {}),
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
            "encrypted": bool(vspec.get("encrypted")),
            "secret_refs": lr.secret_refs(sel.pv),
            "volume": {
                "name": sel.volume_name,
                "size": str(vspec.get("size") or "0"),
                "accessMode": vspec.get("accessMode", "rwo"),
                "dataEngine": vspec.get("dataEngine", "v1"),
                "numberOfReplicas": vspec.get("numberOfReplicas"),
                "encrypted": bool(vspec.get("encrypted")),
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

    def _take_snapshots(self, ctx: BackupContext, kube: Kube, api: LonghornAPI,
                        selected: list[SelectedVolume]) -> dict[str, str]:
        """pre hooks, one Snapshot CR per volume, post hooks (always), then wait ready."""
        opts = self.options
        names: dict[str, str] = {}
        ctx.progress(f"{self.name}: snapshotting {len(selected)} volume(s)")
        try:
            self._run_hooks(kube, opts.pre_hooks, "pre hook")
            for sel in selected:
                name = f"drkit-{_stamp()}-{secrets.token_hex(3)}"
                api.create_snapshot(
                    sel.volume_name, name,
                    labels={CREATED_BY: "drkit", VOLUME_LABEL: _label_value(sel.volume_name),
                            SOURCE_LABEL: _label_value(self.name)},
                    annotations={CREATED_AT: str(time.time_ns()), SOURCE_NAME: self.name},
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

            def ready(name: str = name, volume: str = sel.volume_name) -> bool | None:
                return api.snapshot_ready(name, volume)

            api.wait(f"Longhorn snapshot {name} of {sel.ref} to be readyToUse", ready, opts.snapshot_timeout,
                     hint="check the volume's health in Longhorn; raise 'snapshot_timeout' for large volumes")
        return names

    def _copy_volume(self, ctx: BackupContext, api: LonghornAPI, sel: SelectedVolume, snap: str, node: str) -> int:
        """Clone *snap*, attach the clone, stream its device into *ctx*; the clone is
        detached and deleted whatever happens. Returns the image size."""
        opts = self.options
        clone = f"drkit-clone-{secrets.token_hex(5)}"
        vspec = sel.volume.get("spec") or {}
        api.create_volume({
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
                **({"encrypted": True} if vspec.get("encrypted") else {}),
            },
        })
        ticket: str | None = None
        try:
            def cloned() -> bool | None:
                vol = api.volume(clone) or {}
                state = ((vol.get("status") or {}).get("cloneStatus") or {}).get("state", "")
                if state == "failed":
                    raise LonghornError(f"Longhorn could not clone snapshot {snap} of {sel.volume_name} into {clone}")
                return True if state == "completed" else None

            ctx.progress(f"{self.name}: cloning {sel.ref}")
            api.wait(f"clone {clone} of {sel.ref}", cloned, opts.clone_timeout)
            ticket = api.attach(clone, node)
            device = api.device(clone)
            ctx.progress(f"{self.name}: reading {sel.ref}")
            try:
                with open(device, "rb", buffering=0) as f:
                    entry = ctx.add_stream(_record_path(sel.namespace, sel.pvc_name, "img"), f, mode=0o600)
            except OSError as exc:
                raise LonghornError(f"cannot read the block device {device} of {sel.ref}: {exc.strerror or exc}",
                                    hint="drkit must run as root on the node that holds the volume") from None
            return entry.size
        finally:
            self._remove_clone(api, clone, ticket)

    def _remove_clone(self, api: LonghornAPI, clone: str, ticket: str | None) -> None:
        """Detach and delete a temporary clone. Errors are logged, then the deletion is
        still attempted (a clone left behind is named in the error)."""
        try:
            if ticket is not None:
                api.detach(clone, ticket)
        except (KubeAPIError, LonghornError) as exc:
            log.warning("detaching clone %s failed: %s", clone, exc)
        try:
            api.kube.delete(LH_VOLUME, clone, self.options.longhorn_namespace, missing_ok=True)
        except KubeAPIError as exc:
            raise LonghornError(f"could not delete temporary Longhorn volume {clone}: {exc.message}",
                                hint=f"delete it by hand: kubectl -n {self.options.longhorn_namespace} delete "
                                     f"volumes.longhorn.io {clone}") from None

    def _native_backup(self, ctx: BackupContext, api: LonghornAPI, sel: SelectedVolume, snap: str) -> dict[str, Any]:
        """Create a Backup CR and wait for Completed. Never deletes it."""
        opts = self.options
        name = f"backup-{secrets.token_hex(8)}"
        api.create_backup(sel.volume_name, snap, name, labels={CREATED_BY: "drkit"},
                          backup_labels={SOURCE_LABEL: _label_value(self.name)})
        ctx.progress(f"{self.name}: Longhorn backup {name} of {sel.ref}")
        status = api.wait(
            f"Longhorn backup {name} of {sel.ref} to complete", lambda: api.backup_completed(name, sel.ref),
            opts.backup_timeout,
            hint=f"the Backup CR {name} was left in place (drkit never deletes Backups); raise 'backup_timeout'",
        )
        return {"name": name, "url": status["url"], "created": status.get("backupCreatedAt", ""),
                "encrypted_by_drkit": False}

    def _apply_retention(self, api: LonghornAPI, volume: str) -> list[str]:
        """Delete the Snapshot CRs of *volume* that this source created, beyond the
        newest ``keep_snapshots``. Snapshots of other sources (another label or
        ``drkit.io/source-name``) and the user's own are never touched."""
        snaps = api.list_snapshots(f"{CREATED_BY}=drkit,{VOLUME_LABEL}={_label_value(volume)},"
                                   f"{SOURCE_LABEL}={_label_value(self.name)}")
        snaps = [s for s in snaps if (s.get("spec") or {}).get("volume") == volume
                 and (s["metadata"].get("annotations") or {}).get(SOURCE_NAME, self.name) == self.name]

        def age_key(s: dict[str, Any]) -> tuple[str, int, str]:
            ns = (s["metadata"].get("annotations") or {}).get(CREATED_AT, "0")
            return (s["metadata"].get("creationTimestamp", ""), int(ns) if ns.isdigit() else 0, s["metadata"]["name"])

        snaps.sort(key=age_key)
        doomed = snaps[: max(0, len(snaps) - self.options.keep_snapshots)]
        for s in doomed:
            api.delete_snapshot(s["metadata"]["name"])
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
        """``--target DIR``: the images and records as files. ``--in-place`` (implied by
        ``--namespace``/``--claim``): see
        :mod:`drkit.sources.longhorn_restore` (every volume planned with reads only,
        then ``--dry-run`` prints the plan, else it is carried out). Raises Refused
        (mounted claims, claims whose volume holds data without ``--force``, missing
        Secrets), UsageError (bad ``--namespace``/``--claim``)."""
        records = self._records(ctx)
        namespace = ctx.options.namespace or None
        claim = ctx.options.claim or None
        if not (ctx.options.in_place or namespace or claim):
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
        opts = self.options
        settings = lr.RestoreSettings(opts.longhorn_namespace, opts.number_of_replicas, opts.attach_timeout,
                                      opts.backup_timeout)
        targets = lr.targets([r for r, _ in records], namespace, claim)
        with connect_options(opts) as kube:
            warn_version_mismatch(ctx, kube)
            api = self._api(kube)
            plans = [lr.plan_volume(api, kube, settings, record, image, target, force=ctx.force)
                     for (record, image), target in zip(records, targets, strict=True)]
            if ctx.dry_run:
                for plan in plans:
                    ctx.say(f"{plan.target.ref}: {plan.how}")
                    for change in plan.changes:
                        ctx.say(f"would {change.describe()}")
                return result
            node = api.node_id(opts.node_id) if any(p.record["mode"] == "drkit" for p in plans) else ""
            for plan in plans:
                result.bytes_written += lr.execute(plan, api, kube, settings, node, ctx.open_entry, ctx.say)
                result.files += 1
                result.details.setdefault("volumes", []).append(
                    {"pvc": plan.target.ref, "volume": plan.volume_name, "mode": plan.record["mode"], "how": plan.how,
                     **({"from": f"{plan.record['namespace']}/{plan.record['pvc_name']}"}
                        if lr.mapped(plan.record, plan.target) else {}),
                     **({"kept_pv": plan.old_pv} if plan.old_pv else {}),
                     **({"kept_volume": plan.old_volume} if plan.old_volume else {})})
        return result

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
            if lr.record_encrypted(record):
                with open(image, "rb") as f:
                    magic = f.read(6)
                if magic == b"LUKS\xba\xbe":
                    details[ref] = "encrypted (LUKS header present): size checked, filesystem not readable here"
                elif magic.count(0) == len(magic):
                    details[ref] = "encrypted, never formatted (all zeros at the start): size checked"
                else:
                    problems.append(f"{ref}: no LUKS header, although the volume is encrypted")
                continue
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
