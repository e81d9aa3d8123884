"""Notice rollback and deletion on storage: compare a repository with what this machine
last saw of it (issue #15, case 6).

Storage run by someone else can delete the newest snapshot, or put back an older set of
index files, and every object left is still authentic: nothing in the repository can
tell. The client can: it remembers per repository (in the state directory, see
:mod:`drkit.localstate`) the newest snapshot of each source it has seen or written, and
the index files in use. :func:`check_and_remember` then reports

- a remembered newest snapshot that is gone (unless this machine forgot it itself);
- a remembered index file that is gone while no stored index file names it in its
  ``supersedes`` list (prune and rebuild-index always do);
- a format version lower than one seen before (a downgrade);

and records what it sees now. Snapshot ids are enough for the check, so it works on a
recipient-mode backup host too (it remembers the snapshots it wrote).
"""

from __future__ import annotations

from pathlib import Path

from drkit.localstate import RepoMemory
from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot, parse_time
from drkit.services.forget import future_snapshots


def check_and_remember(
    repo: Repository,
    state_dir: Path | None,
    *,
    snapshots: list[Snapshot] | None = None,
    written: list[Snapshot] | None = None,
    forgotten: list[str] | None = None,
    record: bool = True,
) -> list[str]:
    """Return one warning line per sign of rollback or deletion, then (with *record*)
    remember what is seen now: *snapshots* (a full listing, when the caller has one),
    *written* (this run's own snapshots), *forgotten* (ids this machine removed). A
    no-op without a state directory."""
    if state_dir is None:
        return []
    repo_id = str(repo.config.get("id", ""))
    memory = RepoMemory.load(state_dir, repo_id)
    ids = set(repo.snapshot_ids())
    gone_ok = set(memory.forgotten) | set(forgotten or [])
    warnings: list[str] = []
    for source, seen in sorted(memory.newest.items()):
        if seen["id"] not in ids and seen["id"] not in gone_ok:
            warnings.append(
                f"snapshot {seen['id'][:8]}, the newest of source {source} this host saw ({seen['time'][:19]}), is gone from "
                "the repository: deleted on storage, or storage rolled back"
            )
    if repo.index_loaded:
        known = repo.index.files | repo.superseded_index_files | repo.replaced_index_files
        gone = sorted(i for i in memory.index_files if i not in known)
        if gone:
            warnings.append(
                f"{len(gone)} index file(s) this host saw (index/{gone[0][:8]}...) are gone and no index file replaces them: "
                "storage rolled back, or index files deleted"
            )
    version = int(repo.config.get("version", 0))
    if version < memory.version:
        warnings.append(f"repository format version {version} is lower than version {memory.version} seen before: a downgrade")

    if not record:
        return warnings
    # Remember what is seen now.
    memory.forgotten = (memory.forgotten + list(forgotten or []))[-1000:]
    for source, seen in list(memory.newest.items()):
        if seen["id"] not in ids:
            del memory.newest[source]
    candidates = list(snapshots or []) + list(written or [])
    skip = {s.id for s in future_snapshots(candidates)}
    for snap in candidates:
        if snap.id in skip or snap.id not in ids:
            continue
        newest = memory.newest.get(snap.source)
        if newest is None or parse_time(newest["time"]) < snap.datetime:
            memory.newest[snap.source] = {"id": snap.id, "time": snap.time}
    if repo.index_loaded:
        memory.index_files = sorted(repo.index.files)
    memory.version = max(memory.version, version)
    memory.save(state_dir, repo_id)
    return warnings
