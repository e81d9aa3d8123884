"""One backup run as a whole: its snapshots and the facts it recorded.

A rebuild restores every source from ONE run: the datastore snapshot of a run can only
be opened with the server token saved by the same run, and the K3s version, node name,
secrets-encryption setting and datastore kind that belong to it are recorded in the
run's metadata (``snapshot.run_meta``, the same on every snapshot of the run).

Read-only: nothing here writes to the repository.

References:

- ``latest``: the newest run that holds a snapshot of every required source type (a
  run with a snapshot dated in the future is never ``latest``);
- a run id prefix (``drkit snapshots`` shows the run column);
- ``run:ID`` in a snapshot argument (``drkit restore run:ID --source S``): the snapshot
  of source S taken by that run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from drkit.errors import SnapshotNotFound, UsageError
from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot

RUN_PREFIX = "run:"


@dataclass(frozen=True)
class BackupRunInfo:
    """What one ``drkit backup`` run stored."""

    run_id: str
    time: str
    host: str
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    """source name -> its snapshot in this run."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        return self.run_id[:8]

    def types(self) -> set[str]:
        return {s.source_type for s in self.snapshots.values()}

    def describe(self) -> str:
        return f"run {self.short_id} of {self.time[:19].replace('T', ' ')} on {self.host} " \
               f"({', '.join(sorted(self.snapshots))})"


def list_runs(repo: Repository) -> list[BackupRunInfo]:
    """Every run with at least one readable snapshot, oldest first."""
    grouped: dict[str, list[Snapshot]] = {}
    for snap in repo.list_snapshots(on_error=lambda *_: None):
        grouped.setdefault(snap.run, []).append(snap)
    runs = []
    for run_id, snaps in grouped.items():
        snaps.sort(key=lambda s: s.time)
        meta: dict[str, Any] = {}
        for s in snaps:
            for key, value in (s.run_meta or {}).items():
                meta.setdefault(key, value)
        runs.append(BackupRunInfo(run_id, snaps[0].time, snaps[0].host, {s.source: s for s in snaps}, meta))
    runs.sort(key=lambda r: r.time)
    return runs


def resolve_run(repo: Repository, ref: str, *, require_types: Sequence[str] = ()) -> BackupRunInfo:
    """The run *ref* names (``latest`` or an id prefix) that holds every type in
    *require_types*. Raises SnapshotNotFound (no such run) or UsageError (ambiguous
    prefix, or the run lacks a required source type)."""
    ref = ref.removeprefix(RUN_PREFIX)
    runs = list_runs(repo)
    need = set(require_types)
    if ref == "latest":
        # as for snapshots: a run dated in the future (a hostile or skewed writer) is never "latest"
        from datetime import datetime, timezone

        from drkit.repository.repo import FUTURE_SKEW

        horizon = datetime.now(timezone.utc) + FUTURE_SKEW
        complete = [r for r in runs if need <= r.types() and all(s.datetime <= horizon for s in r.snapshots.values())]
        if not complete:
            scope = f" holding {', '.join(sorted(need))}" if need else ""
            raise SnapshotNotFound(ref="latest run", scope=scope)
        return complete[-1]
    matches = [r for r in runs if r.run_id.startswith(ref)]
    if len(matches) > 1:
        raise UsageError(f"run id {ref!r} is ambiguous", hint="give more characters of the run id")
    if not matches:
        raise SnapshotNotFound(ref=f"run {ref}", scope="")
    run = matches[0]
    missing = need - run.types()
    if missing:
        raise UsageError(f"{run.describe()} has no snapshot of type {', '.join(sorted(missing))}",
                         hint="'drkit snapshots' lists the runs; pick one that backed up every source needed")
    return run


def find_snapshot(repo: Repository, ref: str, source: str) -> Snapshot:
    """``latest``, a snapshot id prefix, or ``run:ID`` (the snapshot of *source* in that
    run). Raises SnapshotNotFound / UsageError."""
    if not ref.startswith(RUN_PREFIX):
        return repo.find_snapshot(ref, source=source)
    run = resolve_run(repo, ref)
    snap = run.snapshots.get(source)
    if snap is None:
        raise SnapshotNotFound(ref=f"{ref}", scope=f" for source {source!r}")
    return snap
