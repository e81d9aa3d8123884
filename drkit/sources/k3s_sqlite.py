"""``k3s-sqlite``: K3s's default datastore, copied online with SQLite's backup API.

Backup opens the live database read-only and copies it with
``Connection.backup(dest, pages=-1)``: the whole database in one step, under one read
transaction, so the copy is the state of a single moment even while K3s writes (in
WAL mode readers never block writers; a paged copy restarts whenever a writer
commits and never finishes under a steady writer). The copy must pass
``PRAGMA integrity_check`` before it is stored as ``state.db``. The page count and
the ``kine`` table's row count and highest id (kine's revision) are recorded.

Restore writes ``state.db`` under ``--target`` (never touching the node). With
``--in-place`` it refuses while K3s runs (or any process has the file open), checks the restored copy's integrity,
moves the current database and its ``-wal``/``-shm`` aside
(``state.db.drkit-replaced-<time>``: a stale WAL applied to the restored file would
corrupt it) and renames the new file into place atomically.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from drkit.atomicio import fsync_dir, write_atomic_from
from drkit.errors import DrkitError, IntegrityError, Refused, UsageError
from drkit.sources import k3s_common as k3s
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

ARTEFACT = "state.db"


class K3sSqliteOptions(SourceOptions):
    path: Path = Field(default_factory=lambda: k3s.sqlite_db_path(k3s.DEFAULT_DATA_DIR))
    """The live database (default ``/var/lib/rancher/k3s/server/db/state.db``)."""
    config_dir: Path = k3s.DEFAULT_CONFIG_DIR
    """Where K3s's config.yaml lives (node name, secrets-encryption for the run metadata)."""
    busy_timeout: float = Field(30.0, gt=0)
    """Seconds to wait for a lock while opening and copying."""


def db_stats(path: Path) -> dict[str, Any]:
    """Integrity and size facts of a database file nobody writes (a copy; opened read-only).

    Returns ``integrity`` ("ok" or the first problems), ``page_count``, ``page_size``
    and, if a ``kine`` table exists, ``kine_rows`` and ``kine_max_id``.
    Raises :class:`IntegrityError` when the file is not a SQLite database at all.
    """
    try:
        # immutable: a copy nobody writes; no -wal/-shm files are created next to it
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as exc:
        raise IntegrityError(name=str(path), detail=f"cannot open: {exc}") from None
    try:
        rows = conn.execute("PRAGMA integrity_check(20)").fetchall()
        integrity = "; ".join(str(r[0]) for r in rows)
        stats: dict[str, Any] = {
            "integrity": integrity,
            "page_count": conn.execute("PRAGMA page_count").fetchone()[0],
            "page_size": conn.execute("PRAGMA page_size").fetchone()[0],
        }
        has_kine = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='kine'").fetchone()
        if has_kine:
            count, max_id = conn.execute("SELECT count(*), coalesce(max(id), 0) FROM kine").fetchone()
            stats["kine_rows"] = count
            stats["kine_max_id"] = max_id
        return stats
    except sqlite3.DatabaseError as exc:
        raise IntegrityError(name=str(path), detail=f"not a usable SQLite database: {exc}") from None
    finally:
        conn.close()


def online_copy(src: Path, dest: Path, *, busy_timeout: float = 30.0) -> None:
    """Copy the live database *src* to *dest* in one backup step (consistent, online).

    Raises :class:`DrkitError` when *src* cannot be opened or the copy fails.
    """
    if dest.resolve() == src.resolve():
        raise UsageError(f"refusing to copy {src} onto itself")
    if not src.is_file():
        raise UsageError(
            f"SQLite datastore not found at {src}",
            hint="is this node using embedded etcd? 'drkit config detect' shows the datastore kind",
        )
    try:
        source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise DrkitError(f"cannot open {src}: {exc}", hint="drkit must run as root on the node") from None
    deadline = time.monotonic() + busy_timeout

    def give_up_when_busy_too_long(status: int, remaining: int, total: int) -> None:
        # sqlite3's loop retries SQLITE_BUSY/LOCKED forever; bound it.
        if status != 0 and time.monotonic() > deadline:
            raise DrkitError(
                f"online backup of {src} gave up: the database stayed locked for {busy_timeout:g}s",
                hint="another process holds an exclusive lock; run again, or raise busy_timeout",
            )

    os.close(k3s.private_file(dest))  # 0600 before the first page is copied
    try:
        target = sqlite3.connect(dest)
        try:
            source.backup(target, pages=-1, progress=give_up_when_busy_too_long)
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise DrkitError(f"online backup of {src} failed: {exc}",
                         hint="run again; if it keeps failing, check the disk and 'sqlite3 state.db .dbinfo'") from None
    finally:
        source.close()


class K3sSqliteSource(Source):
    """K3s's SQLite datastore (``state.db``)."""

    type_name = "k3s-sqlite"
    Options = K3sSqliteOptions
    options: K3sSqliteOptions

    running_check: k3s.RunningCheck = staticmethod(k3s.find_k3s_server)
    """How restore asks whether K3s runs (replace in tests)."""

    def describe(self) -> str:
        return f"{self.name} (k3s-sqlite: {self.options.path})"

    def check_run(self, run: list[Source]) -> None:
        k3s.require_token_source(self.name, run)

    def backup(self, ctx: BackupContext) -> None:
        """Online copy, integrity check, store ``state.db``; raises IntegrityError if the copy is damaged."""
        dest = ctx.scratch_dir / ARTEFACT
        ctx.progress(f"copying {self.options.path} (online backup API)")
        started = time.monotonic()
        online_copy(self.options.path, dest, busy_timeout=self.options.busy_timeout)
        stats = db_stats(dest)
        if stats["integrity"] != "ok":
            raise IntegrityError(
                name=str(self.options.path),
                detail=f"integrity_check of the copy failed: {stats['integrity']}",
                hint="the live database is damaged; restore the last good snapshot of this source",
            )
        ctx.add_file(ARTEFACT, dest)
        ctx.meta.update({
            "datastore": "sqlite",
            "path": str(self.options.path),
            "page_count": stats["page_count"],
            "page_size": stats["page_size"],
            "copy_seconds": round(time.monotonic() - started, 3),
        })
        for key in ("kine_rows", "kine_max_id"):
            if key in stats:
                ctx.meta[key] = stats[key]
        ctx.run_meta["datastore"] = "sqlite"
        ctx.run_meta["sqlite_page_count"] = stats["page_count"]
        self._facts().record(ctx.run_meta)

    def restore(self, ctx: RestoreContext) -> RestoreResult:
        """``--target DIR``: write DIR/state.db. ``--in-place``: replace the live database
        (refused while K3s runs; atomic; old files kept aside)."""
        if ctx.options.in_place:
            return self._restore_in_place(ctx)
        if ctx.target is None:
            raise UsageError(f"source {self.name!r} restores into a directory: give --target DIR (or --in-place)")
        result = ctx.write_entries(ctx.target, include=ctx.include, entries=k3s.private_entries(ctx.entries()))
        if ctx.dry_run:
            return result
        result.lines.append(f"wrote {ctx.target / ARTEFACT}")
        run_meta = getattr(ctx.snapshot, "run_meta", {}) or {}
        result.lines.append(k3s.describe_run(run_meta))
        result.lines += k3s.mismatch_warnings(run_meta, self._facts())
        result.lines.append(
            f"to use it: stop K3s, remove {self.options.path}-wal and -shm, put state.db at {self.options.path}, "
            "start K3s with the token of the same snapshot run (or: drkit restore --in-place)"
        )
        return result

    def _facts(self) -> k3s.NodeFacts:
        """This node's K3s settings (config.yaml, unit, env files; read-only)."""
        return k3s.node_facts(self.options.config_dir, data_dir=self.options.path.parents[2])

    def _entry(self, ctx: RestoreContext) -> Any:
        for entry in ctx.entries():
            if entry.path == ARTEFACT:
                return entry
        raise IntegrityError(name=ARTEFACT, detail="this snapshot has no such entry",
                             hint="was it made by a k3s-sqlite source? 'drkit snapshots' shows the type")

    def _restore_in_place(self, ctx: RestoreContext) -> RestoreResult:
        dest = self.options.path
        entry = self._entry(ctx)
        result = RestoreResult()
        if ctx.dry_run:
            result.lines.append(f"would replace {dest} ({entry.size} bytes) and move its -wal/-shm aside")
            return result
        k3s.refuse_if_running(self.running_check, f"replace {dest}")
        holders = k3s.processes_holding([dest, Path(f"{dest}-wal")])
        if holders:
            raise Refused(
                f"{dest} is open in pid {holders[0].pid} ({holders[0].cmdline}); refusing to replace it",
                hint="stop whatever has the database open (K3s, a sqlite3 shell), then run the restore again",
            )

        def verify(tmp: Path) -> None:
            stats = db_stats(tmp)
            if stats["integrity"] != "ok":
                raise IntegrityError(name=ARTEFACT, detail=f"restored copy fails integrity_check: {stats['integrity']}")

        # 1. the restored file, complete, fsynced and integrity-checked, next to the live one;
        #    any failure up to here leaves the live database untouched
        staging = dest.with_name(dest.name + ".drkit-new")
        with ctx.open_entry(entry) as stream:
            written = write_atomic_from(staging, stream, mode=0o600, uid=entry.uid, gid=entry.gid, parents=True,
                                            verify=verify)
        # 2. the old database and its WAL/SHM aside, 3. the new one into place
        aside = self._move_aside(dest)
        os.replace(staging, dest)
        fsync_dir(dest.parent)
        result.files = 1
        result.bytes_written = written
        result.lines.append(f"restored {dest} ({written} bytes)")
        for path in aside:
            result.lines.append(f"kept the previous {path.name.split('.drkit-replaced')[0]} as {path}")
        result.lines.append("start K3s with the server token from the same backup run")
        run_meta = getattr(ctx.snapshot, "run_meta", {}) or {}
        result.lines.append(k3s.describe_run(run_meta))
        result.lines += k3s.mismatch_warnings(run_meta, self._facts())
        result.details["path"] = str(dest)
        result.details["moved_aside"] = [str(p) for p in aside]
        return result

    @staticmethod
    def _move_aside(dest: Path) -> list[Path]:
        """Rename dest and its -wal/-shm to ``*.drkit-replaced-<time>``; return the new names."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        moved = []
        for suffix in ("", "-wal", "-shm", "-journal"):
            old = Path(str(dest) + suffix)
            if old.exists():
                new = Path(f"{dest}{suffix}.drkit-replaced-{stamp}")
                old.rename(new)
                moved.append(new)
        if moved:
            fsync_dir(dest.parent)
        return moved

    def check_restored(self, restored: Path, snapshot: Snapshot) -> CheckResult:
        """integrity_check of ``restored/state.db`` and row counts against the snapshot's."""
        path = restored / ARTEFACT
        if not path.is_file():
            return CheckResult(ok=False, summary=f"{ARTEFACT} missing", problems=[f"{path} does not exist"])
        try:
            stats = db_stats(path)
        except IntegrityError as exc:
            return CheckResult(ok=False, summary="not a SQLite database", problems=[exc.message])
        problems = []
        if stats["integrity"] != "ok":
            problems.append(f"integrity_check: {stats['integrity']}")
        meta = getattr(snapshot, "meta", {}) or {}
        for key in ("page_count", "kine_rows", "kine_max_id"):
            if key in meta and stats.get(key) != meta[key]:
                problems.append(f"{key}: restored {stats.get(key)}, snapshot recorded {meta[key]}")
        summary = f"integrity ok, {stats['page_count']} pages" if not problems else "; ".join(problems)
        if "kine_rows" in stats and not problems:
            summary += f", {stats['kine_rows']} kine rows (max id {stats['kine_max_id']})"
        return CheckResult(ok=not problems, summary=summary, details=stats, problems=problems)
