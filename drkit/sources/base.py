"""The source seam: what is saved, and how it is put back.

A source knows how to take a consistent copy of one thing (a directory tree, a SQLite
database, an etcd snapshot, a Git repository, a Longhorn volume ...) and how to put it
back. It knows nothing of storage or crypto: during backup it hands entries and byte
streams to a :class:`BackupContext`; during restore it reads them from a
:class:`RestoreContext`.

Adding a source type:

1. subclass :class:`Source`, set ``type_name`` and an ``Options`` pydantic model
   (``extra="forbid"``) for its config keys (they sit next to ``name`` and ``type``
   in the ``sources:`` list of the config file);
2. register the class path in :data:`drkit.sources.SOURCE_TYPES`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Iterator, Mapping, Protocol, Sequence

from pydantic import BaseModel, ConfigDict

from drkit.repository.tree import Entry

if TYPE_CHECKING:
    from drkit.repository.snapshot import Snapshot
    from drkit.services.restore import RestoreOptions


class SourceOptions(BaseModel):
    """Base of every source's options model: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")


class BackupContext(Protocol):
    """What a source may do while it is backed up (implemented by services.backup).

    Entries are recorded in the order they are added; add a directory before its
    contents. Paths are logical (see :class:`~drkit.repository.tree.Entry`).
    """

    source_name: str
    scratch_dir: Path
    """A private, empty directory on the backup host, deleted after the run."""
    meta: dict[str, Any]
    """Source metadata stored in this snapshot's manifest (``snapshot.meta``)."""
    run_meta: dict[str, Any]
    """Metadata shared by every source of one ``drkit backup`` run (``snapshot.run_meta``)."""
    paths: list[str]
    """What the snapshot covers, for listings (e.g. the backed-up directories)."""
    env: Mapping[str, str]
    """The environment captured by the CLI (sources never read os.environ)."""

    def add_dir(self, path: str, st: os.stat_result | None = None, *, mode: int = 0o755) -> Entry: ...

    def add_symlink(self, path: str, target: str, st: os.stat_result | None = None) -> Entry: ...

    def add_file(self, path: str, real_path: str | os.PathLike[str], st: os.stat_result | None = None, *,
                 read_later: bool = False) -> Entry:
        """Store a regular file; reuses the parent snapshot's chunks when unchanged.
        With *read_later*, a small file may be read after this returns (by a worker
        process), so the caller must not compare the file with the entry right away."""
        ...

    def add_unchanged(self, files: Sequence[tuple[str, str, os.stat_result]], start: int = 0) -> tuple[int, int] | None:
        """Record ``files[start:]`` -- (real path, logical path, ``lstat``) of regular
        files, in walk order -- for as long as each is unchanged since the parent
        snapshot, as :meth:`add_file` would record it, and stop at the first that is
        not (it is not recorded: add it with :meth:`add_file`). Returns (files
        recorded, their total size), or None (nothing recorded) when no file of this
        run can be found unchanged any more: there is no parent, or the walk is past
        the end of its tree (no need to ask again). Reads no file and never raises for
        one."""
        ...

    def add_new_files(self, files: Sequence[tuple[str, str, os.stat_result]], start: int = 0) -> tuple[int, int]:
        """Record ``files[start:]`` -- as for :meth:`add_unchanged` -- for as long as
        each is a small new regular file (more than 0 bytes, small enough to be read
        whole) that :meth:`add_file` with ``read_later`` would have read later, and stop
        at the first that is not (add it with :meth:`add_file`). Returns (files taken,
        the sizes ``lstat`` gave them): (0, 0) when none, or when files are not read
        later (yet) or a parent entry may still be found. A file unreadable by the time it is read is skipped with a warning, as
        :meth:`add_file` skips it. Never raises for one."""
        ...

    def add_stream(self, path: str, stream: IO[bytes], *, mode: int = 0o600, mtime_ns: int | None = None) -> Entry:
        """Store everything *stream* yields until EOF as one file entry."""
        ...

    def add_bytes(self, path: str, data: bytes, *, mode: int = 0o600, mtime_ns: int | None = None) -> Entry: ...

    def parent_entry(self, path: str) -> Entry | None:
        """The entry of the same path in this source's previous snapshot, if any."""
        ...

    def progress(self, text: str) -> None:
        """Show what the source is doing (no-op when not on a terminal)."""
        ...

    def warn(self, text: str) -> None:
        """Record a problem that skips one item (the run ends as a partial failure)."""
        ...

    def note(self, text: str) -> None:
        """Tell the operator something that is not a failure (shown after the run,
        stored in ``snapshot.meta['notes']``)."""
        ...


class RestoreContext(Protocol):
    """What a source may do while it is restored (implemented by services.restore)."""

    snapshot: "Snapshot"
    target: Path | None
    """``--target DIR`` (None for in-place or push restores)."""
    include: list[str]
    force: bool
    dry_run: bool
    env: Mapping[str, str]
    """The environment captured by the CLI (sources never read os.environ)."""
    options: "RestoreOptions"
    """Restore options from the CLI: ``in_place``, ``volumes`` (PVC names),
    ``namespace`` (new claims there), ``push_to`` (URL), and ``extra`` (``-o KEY=VALUE``,
    what a source documents)."""

    def entries(self) -> Iterator[Entry]: ...

    def open_entry(self, entry: Entry) -> IO[bytes]:
        """A verified, sequential reader of one file entry's content."""
        ...

    def write_entries(self, target: Path, *, include: list[str] | None = None,
                      entries: Iterator[Entry] | None = None) -> "RestoreResult":
        """Restore entries (all, or the selection *entries*) under *target* (the
        files-style restore: never outside *target*, atomic per file)."""
        ...

    def say(self, line: str) -> None:
        """Tell the operator something (printed; collected for --json)."""
        ...


@dataclass
class RestoreResult:
    """What a restore did: counts, bytes and human lines for the report."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes_written: int = 0
    lines: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckResult:
    """Outcome of a semantic check of restored data (used by drills)."""

    ok: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class Source(ABC):
    """One configured thing to back up."""

    type_name: ClassVar[str]
    Options: ClassVar[type[SourceOptions]] = SourceOptions
    restore_options: ClassVar[frozenset[str]] = frozenset()
    """The ``-o KEY=VALUE`` restore options this source reads (``ctx.options.extra``);
    any other key is a usage error, not silently ignored."""

    def __init__(self, name: str, options: SourceOptions) -> None:
        self.name = name
        self.options = options

    def describe(self) -> str:
        """One line for listings (``drkit sources``, plans)."""
        return f"{self.name} ({self.type_name})"

    def estimate_size(self) -> int | None:
        """The bytes a backup of this source will read, for progress bars; None when
        it cannot be known cheaply. Runs in a low-priority thread beside the backup
        (restic's scanner): it must only read metadata and never raise."""
        return None

    def warm_up(self) -> None:  # noqa: B027 - an optional hook
        """Start reading ahead what :meth:`backup` needs first (metadata only, in a
        background thread), while the caller opens the repository; ``backup`` takes what
        is ready and stops it. Never raises; what is read ahead is recorded as of that
        moment, as if the backup had got there earlier. Default: nothing."""

    def check_run(self, run: list["Source"]) -> None:  # noqa: B027 - an optional hook
        """Refuse (raise :class:`~drkit.errors.Refused`) if *run* lacks what this source
        needs alongside it (e.g. a datastore without the K3s token). Default: nothing."""

    @abstractmethod
    def backup(self, ctx: BackupContext) -> None:
        """Take a consistent copy and hand it to *ctx*. Raises DrkitError subclasses."""

    def restore(self, ctx: RestoreContext) -> RestoreResult:
        """Put the snapshot back. Default: files-style restore under ``ctx.target``."""
        if ctx.target is None:
            from drkit.errors import UsageError

            raise UsageError(f"source {self.name!r} restores into a directory: give --target DIR")
        return ctx.write_entries(ctx.target, include=ctx.include)

    def drill_groups(self, snapshot: "Snapshot") -> dict[str, str] | None:
        """For a source whose ``--target`` restore lays the snapshot's entries out as
        they are: ``{logical path prefix: name}`` (e.g. one per volume). A drill then
        re-hashes every restored file against the snapshot, reports per group, and runs
        :meth:`check_restored` as well. Default None: :meth:`check_restored` alone."""
        return None

    def check_restored(self, restored: Path, snapshot: "Snapshot") -> CheckResult:
        """Semantic check of data restored under *restored* (drills).

        Default: content was already verified chunk by chunk while restoring."""
        return CheckResult(ok=True, summary="content hashes verified")
