"""Longhorn's API as drkit uses it: ``longhorn.io/v1beta2`` custom resources in
``longhorn-system``, through :class:`drkit.kube.Kube` (the official client).

One :class:`LonghornAPI` per connection. It knows Longhorn and nothing of drkit's
repository: snapshots, clones, attachment tickets, backups, volume health. Facts of
Longhorn (v1.12, longhorn-manager) it relies on:

- attach/detach is a ticket in ``spec.attachmentTickets`` of the Volume's
  ``VolumeAttachment`` (v1.5+); the block device appears as ``DEVICE_DIR/VOLUME``;
- custom resources refuse strategic-merge patches: every patch is a merge patch;
- a Volume whose replicas all failed is ``faulted`` and never attached again; its
  data is gone unless a replica can be salvaged;
- **deleting a Volume makes Longhorn delete the PV named in its
  ``status.kubernetesStatus.pvName`` and, while ``lastPVCRefAt`` is empty, the claim
  in ``pvcName``** (controller/volume_controller.go). :meth:`LonghornAPI.unlink_claim`
  clears that link first, through the status subresource.

Promises: every wait is bounded (:class:`LonghornTimeout` names what it waited for);
nothing here deletes a Backup CR (that deletes the remote backup); errors are
:class:`LonghornError` or :class:`~drkit.kube.KubeAPIError` subclasses.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypeVar

from drkit.errors import EXIT_STORAGE, DrkitError, UsageError
from drkit.kube import (
    LH_BACKUP,
    LH_NODE,
    LH_SNAPSHOT,
    LH_VOLUME,
    LH_VOLUME_ATTACHMENT,
    Kube,
    Resource,
)

CSI_DRIVER = "driver.longhorn.io"
LH_REPLICA = Resource("Replica", "replicas", "longhorn.io", "v1beta2")
RESTORE_STATE = "drkit.io/restore-state"
"""Label on a volume drkit restores: ``writing`` until its data is complete, then
``done``. A volume left ``writing`` holds a partial restore (no usable data)."""
T = TypeVar("T")

DataState = Literal["usable", "lost", "partial"]


class LonghornError(DrkitError):
    """{message}"""

    exit_code = EXIT_STORAGE


class LonghornTimeout(LonghornError):
    """{message}"""


class LonghornAPI:
    """Longhorn objects of one cluster. Not thread-safe (one restore or backup at a time)."""

    def __init__(self, kube: Kube, namespace: str = "longhorn-system", *, device_dir: Path = Path("/dev/longhorn"),
                 poll_interval: float = 2.0, attach_timeout: float = 300.0) -> None:
        self.kube = kube
        self.namespace = namespace
        self.device_dir = device_dir
        self.poll_interval = poll_interval
        self.attach_timeout = attach_timeout

    # ------------------------------------------------------------------ basics
    def wait(self, what: str, probe: Callable[[], T | None], timeout: float, *, hint: str | None = None) -> T:
        """Poll *probe* until it returns a value; :class:`LonghornTimeout` after *timeout* s."""
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value is not None:
                return value
            if time.monotonic() >= deadline:
                raise LonghornTimeout(f"timed out after {timeout:g}s waiting for {what}", hint=hint)
            time.sleep(min(self.poll_interval, max(0.01, deadline - time.monotonic())))

    def get(self, res: Resource, name: str) -> dict[str, Any] | None:
        """One object of *res* in the Longhorn namespace, or None."""
        return self.kube.get_or_none(res, name, self.namespace)

    def volume(self, name: str) -> dict[str, Any] | None:
        return self.get(LH_VOLUME, name)

    def node_id(self, configured: str | None = None) -> str:
        """*configured*, else the only Longhorn node; UsageError when there are several."""
        if configured:
            return configured
        nodes = [n["metadata"]["name"] for n in self.kube.list(LH_NODE, self.namespace)]
        if len(nodes) != 1:
            raise UsageError(
                f"cannot choose a Longhorn node to attach volumes to: found {len(nodes)} ({', '.join(nodes) or 'none'})",
                hint="set the source's 'node_id' to the name of this node (kubectl -n longhorn-system get nodes.longhorn.io)",
            )
        return nodes[0]

    def device(self, volume: str) -> Path:
        """Where the block device of an attached *volume* appears."""
        return self.device_dir / volume

    # ------------------------------------------------------------------ snapshots
    def create_snapshot(self, volume: str, name: str, *, labels: dict[str, str],
                        annotations: dict[str, str] | None = None) -> None:
        """Request a Snapshot CR of *volume* (``spec.createSnapshot: true``)."""
        self.kube.create(LH_SNAPSHOT, {
            "apiVersion": LH_SNAPSHOT.api_version,
            "kind": "Snapshot",
            "metadata": {"name": name, "namespace": self.namespace, "labels": dict(labels),
                         **({"annotations": dict(annotations)} if annotations else {})},
            "spec": {"volume": volume, "createSnapshot": True, "labels": {k: v for k, v in labels.items()
                                                                          if k == "drkit.io/created-by"}},
        })

    def snapshot_ready(self, name: str, volume: str) -> bool | None:
        """True once Snapshot *name* is ``readyToUse``; None while not; LonghornError when
        it failed or vanished."""
        snap = self.get(LH_SNAPSHOT, name)
        if snap is None:
            raise LonghornError(f"Longhorn snapshot {name} disappeared while waiting for it")
        status = snap.get("status") or {}
        if status.get("error"):
            raise LonghornError(f"Longhorn snapshot {name} of volume {volume} failed: {status['error']}")
        return True if status.get("readyToUse") else None

    def list_snapshots(self, label_selector: str) -> list[dict[str, Any]]:
        return self.kube.list(LH_SNAPSHOT, self.namespace, label_selector=label_selector)

    def delete_snapshot(self, name: str) -> None:
        self.kube.delete(LH_SNAPSHOT, name, self.namespace, missing_ok=True)

    # ------------------------------------------------------------------ volumes
    def create_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.kube.create(LH_VOLUME, body)

    def volume_ready(self, name: str) -> bool | None:
        """True once a (new or restoring) volume is detached or attached and no longer
        restoring from a backup."""
        status = (self.volume(name) or {}).get("status") or {}
        if status.get("restoreRequired"):
            return None
        return True if status.get("state") in ("detached", "attached") else None

    def replicas(self, volume: str) -> list[dict[str, Any]]:
        """The Replica CRs of *volume* (label ``longhornvolume``)."""
        return [r for r in self.kube.list(LH_REPLICA, self.namespace, label_selector=f"longhornvolume={volume}")
                if (r.get("spec") or {}).get("volumeName") == volume]

    def data_state(self, volume: dict[str, Any]) -> tuple[DataState, str]:
        """Whether *volume* holds data worth keeping, and why.

        ``lost``: ``status.robustness`` is ``faulted`` and no replica is without
        ``spec.failedAt`` (all replicas failed or none left): Longhorn will not attach
        it; ``partial``: a drkit restore into it never finished (label
        :data:`RESTORE_STATE` ``writing``); ``usable`` otherwise (healthy, degraded, or
        detached with replicas that did not fail)."""
        name = volume["metadata"]["name"]
        if ((volume["metadata"].get("labels") or {}).get(RESTORE_STATE)) == "writing":
            return "partial", "a drkit restore into it did not finish"
        status = volume.get("status") or {}
        if status.get("robustness") != "faulted":
            return "usable", f"robustness {status.get('robustness') or 'unknown'}, state {status.get('state') or 'unknown'}"
        live = [r for r in self.replicas(name) if not (r.get("spec") or {}).get("failedAt")]
        if live:
            return "usable", f"faulted, but {len(live)} replica(s) did not fail (Longhorn may salvage them)"
        return "lost", "faulted, no replica left that did not fail"

    def unlink_claim(self, volume: str) -> None:
        """Clear ``status.kubernetesStatus``'s PV and claim of *volume* (status
        subresource), so that deleting the Volume does not make Longhorn delete them.
        Raises LonghornError when the link is back at once."""
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.kube.merge_patch_status(LH_VOLUME, volume, self.namespace, {"status": {"kubernetesStatus": {
            "pvName": "", "pvStatus": "", "lastPVCRefAt": stamp}}})
        ks = ((self.volume(volume) or {}).get("status") or {}).get("kubernetesStatus") or {}
        if ks.get("pvName") or not ks.get("lastPVCRefAt"):
            raise LonghornError(f"Longhorn linked volume {volume} to PV {ks.get('pvName')} again at once: "
                                "not deleting it (Longhorn would delete the PV and the claim with it)",
                                hint="run again; if it persists, restore with --force (a new PV and volume)")

    def delete_volume_and_wait(self, name: str, timeout: float) -> None:
        """Delete Volume *name* and wait until it is gone (Longhorn removes its
        finalizer once engines and replicas are cleaned up)."""
        self.kube.delete(LH_VOLUME, name, self.namespace, missing_ok=True)
        self.wait(f"Longhorn volume {name} to be deleted", lambda: True if self.volume(name) is None else None,
                  timeout, hint="check the volume in the Longhorn UI (its engine or replicas may be stuck)")

    def set_restore_state(self, volume: str, state: str) -> None:
        self.kube.merge_patch(LH_VOLUME, volume, self.namespace, {"metadata": {"labels": {RESTORE_STATE: state}}})

    # ------------------------------------------------------------------ attach
    def attach(self, volume: str, node: str) -> str:
        """Add a ``longhorn-api`` ticket for *volume* on *node*; wait until it is
        satisfied, the volume attached and its device present. Returns the ticket id."""
        ticket = f"drkit-{secrets.token_hex(6)}"
        self.wait(f"the VolumeAttachment of {volume}", lambda: self.get(LH_VOLUME_ATTACHMENT, volume),
                  self.attach_timeout)
        self.kube.merge_patch(LH_VOLUME_ATTACHMENT, volume, self.namespace, {
            "spec": {"attachmentTickets": {ticket: {
                "id": ticket, "type": "longhorn-api", "nodeID": node, "parameters": {"disableFrontend": "false"},
            }}},
        })
        device = self.device(volume)

        def attached() -> bool | None:
            va = self.get(LH_VOLUME_ATTACHMENT, volume) or {}
            st = ((va.get("status") or {}).get("attachmentTicketStatuses") or {}).get(ticket) or {}
            vol = self.volume(volume) or {}
            ok = st.get("satisfied") and (vol.get("status") or {}).get("state") == "attached" and device.exists()
            return True if ok else None

        self.wait(f"Longhorn volume {volume} to attach on node {node} ({device})", attached, self.attach_timeout,
                  hint="check the volume in the Longhorn UI; is 'device_dir' right and is this the node in 'node_id'?")
        return ticket

    def detach(self, volume: str, ticket: str, *, wait: bool = True) -> None:
        """Remove drkit's ticket; with *wait*, until the volume is detached and its
        device gone."""
        self.kube.merge_patch(LH_VOLUME_ATTACHMENT, volume, self.namespace,
                              {"spec": {"attachmentTickets": {ticket: None}}})
        if wait:
            device = self.device(volume)

            def detached() -> bool | None:
                vol = self.volume(volume) or {}
                return True if (vol.get("status") or {}).get("state") != "attached" and not device.exists() else None

            self.wait(f"Longhorn volume {volume} to detach", detached, self.attach_timeout)

    # ------------------------------------------------------------------ backups
    def create_backup(self, volume: str, snapshot: str, name: str, *, labels: dict[str, str],
                      backup_labels: dict[str, str]) -> None:
        """Request a Backup CR of *snapshot* of *volume*. drkit never deletes Backups."""
        self.kube.create(LH_BACKUP, {
            "apiVersion": LH_BACKUP.api_version,
            "kind": "Backup",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {"backup-volume": volume, **labels}},
            "spec": {"snapshotName": snapshot, "labels": dict(backup_labels)},
        })

    def backup_completed(self, name: str, what: str) -> dict[str, Any] | None:
        """The status of Backup *name* once Completed with a URL; None while in
        progress; LonghornError when it failed or vanished."""
        backup = self.get(LH_BACKUP, name)
        if backup is None:
            raise LonghornError(f"Longhorn Backup {name} of {what} disappeared while in progress")
        status = backup.get("status") or {}
        if status.get("state") == "Error":
            raise LonghornError(f"Longhorn backup {name} of {what} failed: {status.get('error') or 'no reason given'}",
                                hint="check the backup target (Longhorn UI, Settings > Backup Target)")
        return status if status.get("state") == "Completed" and status.get("url") else None
