"""Which sources and snapshots a command works on: ``-s NAME`` checked, 'latest' resolved.

A name given with ``-s`` must be a configured source or one the repository holds
snapshots of (a source removed from the config can still be listed and forgotten);
anything else is a usage error naming the known sources, never a silent no-op.
"""

from __future__ import annotations

import logging

from drkit.cli.app import CliState
from drkit.errors import UsageError
from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot

log = logging.getLogger("drkit.cli")


def checked_source_names(state: CliState, names: tuple[str, ...] | list[str], snaps: list[Snapshot]) -> tuple[str, ...]:
    """*names* without duplicates; UsageError if one is neither configured nor in *snaps*."""
    configured = [s.name for s in state.config.sources]
    stored = sorted({s.source for s in snaps})
    for name in dict.fromkeys(names):
        if name not in configured and name not in stored:
            raise UsageError(f"no source named {name!r}", hint=state.config.known_sources_hint(stored))
    return tuple(dict.fromkeys(names))


def resolve_snapshot(state: CliState, repo: Repository, ref: str, source: str | None) -> Snapshot:
    """``latest`` (per -s, or of the only source there is) or an id prefix.
    Raises SnapshotNotFound / UsageError."""
    if source is not None:
        snaps = repo.list_snapshots(on_error=lambda *_: None)
        checked_source_names(state, [source], snaps)
    elif ref == "latest":
        stored = {s.source for s in repo.list_snapshots(on_error=lambda *_: None)}
        names = stored or {s.name for s in state.config.sources}
        if len(names) > 1:
            raise UsageError("'latest' needs --source NAME: the repository holds several sources",
                             hint=state.config.known_sources_hint(sorted(stored)))
        source = next(iter(names), None)
    return repo.find_snapshot(ref, source=source)
