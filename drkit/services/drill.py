"""Restore drills: prove that the backups restore, and how long that takes.

A drill picks the snapshots of one backup run (default: the latest snapshot of every
configured source), restores each into a scratch directory exactly as ``drkit restore
--target`` would (every chunk verified against its keyed id), and then checks the
result *semantically*:

- ``files`` sources: every restored file is read back, re-chunked and re-hashed with
  the repository's keyed hash and compared with the snapshot's chunk ids (so a
  misplaced or truncated write fails, not only a damaged blob); sizes, modes,
  directories and symlink targets are compared too;
- sources that restore a files-style tree in groups (``local-path``: one directory
  per claim; :meth:`~drkit.sources.base.Source.drill_groups`): the same re-hash,
  reported per group, then the source's own check;
- other sources: their own :meth:`~drkit.sources.base.Source.check_restored`
  (SQLite ``integrity_check`` and row counts, etcd started on the restored data,
  ``git fsck`` and refs, volume image hash and read-only fsck ...).

Per source it measures the RTO (wall-clock time of the restore), the RPO (age of the
snapshot at drill time: the data a restore now would lose) and the bytes restored,
and compares the RTO with the budget (``drill.rto_budget_seconds``). The report goes
to the terminal (table or ``--json``), to a JSON result file that monitoring reads
(``drill.result_file``, replaced atomically) and to the Prometheus textfile
(``drkit_drill_success``, ``drkit_drill_rto_seconds``, ``drkit_drill_rpo_seconds``)
when ``metrics:`` is configured.

A drill only reads the repository (shared lock) and writes only under its scratch
directory, which it deletes afterwards unless asked to keep it.

Config section (all keys optional)::

    drill:
      result_file: /var/lib/drkit/drill.json   # JSON report for monitoring
      rto_budget_seconds: 3600                 # a slower restore fails the drill
      scratch_dir: /var/tmp                    # where restores go (needs room for the largest source)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drkit.atomicio import write_atomic
from drkit.errors import ConfigError, DamageFound, DrkitError, IntegrityError, PartialFailure, SnapshotNotFound, UsageError
from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot, latest_usable
from drkit.repository.tree import DIR, FILE, SYMLINK, iter_tree
from drkit.services.restore import BlobStream, RestoreOptions, SnapshotReader, safe_destination
from drkit.sources.base import CheckResult, Source

log = logging.getLogger("drkit.drill")

ExtraCheck = Callable[[Path, Snapshot], CheckResult]
"""A further check of restored data (the sandbox uses these): (restored dir, snapshot)."""

_MAX_PROBLEMS = 20


class DrillFailed(DamageFound):
    """restore drill failed: {message}"""

    default_hint = (
        "the named snapshots do not restore: run 'drkit verify --read-data' to see every damaged object, "
        "then take a fresh backup of the affected sources"
    )


# --- configuration -----------------------------------------------------------------


class DrillConfig(BaseModel):
    """The ``drill:`` section of the config file."""

    model_config = ConfigDict(extra="forbid")

    result_file: Path | None = None
    rto_budget_seconds: float | None = Field(default=None, gt=0)
    scratch_dir: Path | None = None


def parse_drill_config(data: Mapping[str, Any] | None) -> DrillConfig:
    """Validate the ``drill:`` section (absent: defaults). Raises ConfigError naming ``drill.KEY``."""
    if data is None:
        return DrillConfig()
    if not isinstance(data, Mapping):
        raise ConfigError("must be a mapping (result_file, rto_budget_seconds, scratch_dir)", key="drill")
    try:
        cfg = DrillConfig.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(err["msg"], key=f"drill.{loc}" if loc else "drill",
                          hint="e.g. drill: {result_file: /var/lib/drkit/drill.json, rto_budget_seconds: 3600}") from None
    for key in ("result_file", "scratch_dir"):
        value = getattr(cfg, key)
        if value is not None and not value.is_absolute():
            raise ConfigError(f"must be an absolute path, got {str(value)!r}", key=f"drill.{key}")
    return cfg


# --- results -----------------------------------------------------------------------


@dataclass
class SourceDrill:
    """The drill of one source."""

    source: str
    source_type: str
    snapshot: Snapshot | None = None
    ok: bool = False
    failed_step: str | None = None
    """``snapshot`` (none found), ``restore``, ``check`` or ``budget``; None when ok."""
    error: str | None = None
    damage: bool = False
    """True when the failure is damaged or wrong data (exit 6), not a missing snapshot or slowness (exit 7)."""
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    check_seconds: float | None = None
    bytes_restored: int = 0
    files: int = 0
    check: CheckResult | None = None
    restored_to: str | None = None

    def fail(self, step: str, message: str, *, damage: bool) -> None:
        if self.failed_step is None:
            self.failed_step = step
            self.error = message
        self.damage = self.damage or damage
        self.ok = False

    def to_json(self) -> dict[str, Any]:
        s = self.snapshot
        return {
            "source": self.source,
            "type": self.source_type,
            "ok": self.ok,
            "snapshot": s.id if s else None,
            "snapshot_time": s.time if s else None,
            "run": s.run if s else None,
            "rto_seconds": _round(self.rto_seconds),
            "rpo_seconds": _round(self.rpo_seconds),
            "check_seconds": _round(self.check_seconds),
            "bytes_restored": self.bytes_restored,
            "files": self.files,
            "check": (
                {"ok": self.check.ok, "summary": self.check.summary, "problems": self.check.problems,
                 "details": _jsonable(self.check.details)}
                if self.check else None
            ),
            "failed_step": self.failed_step,
            "error": self.error,
            "restored_to": self.restored_to,
        }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@dataclass
class DrillReport:
    """A whole drill."""

    repository: str
    started: datetime
    finished: datetime | None = None
    snapshot_ref: str = "latest"
    rto_budget_seconds: float | None = None
    host: str = field(default_factory=socket.gethostname)
    results: list[SourceDrill] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    """Index files or snapshot manifests that could not be read (``name: detail``):
    the snapshots behind them cannot be restored, so the drill fails."""

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results) and not self.damaged

    @property
    def failed(self) -> list[SourceDrill]:
        return [r for r in self.results if not r.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "repository": self.repository,
            "host": self.host,
            "started": _iso(self.started),
            "finished": _iso(self.finished) if self.finished else None,
            "snapshot_ref": self.snapshot_ref,
            "rto_budget_seconds": self.rto_budget_seconds,
            "rto_seconds_total": round(sum(r.rto_seconds or 0 for r in self.results), 3),
            "bytes_restored": sum(r.bytes_restored for r in self.results),
            "sources": [r.to_json() for r in self.results],
            "damaged": list(self.damaged),
            "notes": list(self.notes),
        }

    def error(self) -> DrkitError | None:
        """The error a failed drill ends with (None when it passed): DrillFailed (exit 6)
        when data is damaged or wrong, else PartialFailure (exit 7)."""
        bad = self.failed
        if not bad and self.results and not self.damaged:
            return None
        if not self.results and not self.damaged:
            return PartialFailure("restore drill failed: nothing to drill (no source selected)")
        parts = [f"{r.source} ({r.failed_step}: {r.error})" for r in bad]
        if self.damaged:
            parts.append(f"unreadable repository objects: {', '.join(self.damaged[:3])}"
                         + (" ..." if len(self.damaged) > 3 else ""))
        text = "; ".join(parts)
        if self.damaged or any(r.damage for r in bad):
            return DrillFailed(message=text)
        return PartialFailure(f"restore drill failed: {text}")


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- choosing what to drill --------------------------------------------------------


@dataclass
class DrillTarget:
    source: str
    source_type: str
    snapshot: Snapshot | None
    why_missing: str = ""


def resolve_targets(snaps: list[Snapshot], ref: str, configured: list[str], only: list[str]) -> list[DrillTarget]:
    """Which snapshot to drill per source.

    ``latest``: the latest snapshot of each source in *only* (else of each configured
    source); a source without any snapshot is a target with ``snapshot=None`` (the
    drill fails for it: a configured source that was never backed up is a gap).
    Otherwise *ref* is a run id or a snapshot id (or a unique prefix of one): the
    snapshots of that run (limited to *only*), or that one snapshot.
    Raises SnapshotNotFound or UsageError (ambiguous)."""
    if ref == "latest":
        names = only or configured
        out = []
        for name in names:
            mine = [s for s in snaps if s.source == name]
            usable, skipped = latest_usable(mine)
            for s in skipped:
                log.warning("skipping empty snapshot %s of %s (%s): it holds nothing", s.short_id, s.source, s.time)
            if usable is not None:
                out.append(DrillTarget(name, usable.source_type, usable))
            elif mine:
                out.append(DrillTarget(name, mine[-1].source_type, None, "only empty snapshots of this source in the repository"))
            else:
                out.append(DrillTarget(name, "?", None, "no snapshot of this source in the repository"))
        return out
    ref = ref.lower()
    runs = sorted({s.run for s in snaps if s.run.startswith(ref)})
    ids = [s for s in snaps if s.id.startswith(ref)]
    if len(runs) + len(ids) > 1:
        raise UsageError(f"{ref!r} is ambiguous: it starts {len(runs)} run id(s) and {len(ids)} snapshot id(s)",
                         hint="give more characters; 'drkit snapshots' shows both")
    if ids:
        s = ids[0]
        if only and s.source not in only:
            raise UsageError(f"snapshot {s.short_id} is of source {s.source!r}, not of {', '.join(only)}")
        return [DrillTarget(s.source, s.source_type, s)]
    if not runs:
        raise SnapshotNotFound(ref=ref, scope=" (as a run id or a snapshot id)")
    in_run = [s for s in snaps if s.run == runs[0]]
    out = []
    for name in only or sorted({s.source for s in in_run}, key=lambda n: [s.source for s in in_run].index(n)):
        mine = [s for s in in_run if s.source == name]
        if mine:
            out.append(DrillTarget(name, mine[-1].source_type, mine[-1]))
        else:
            out.append(DrillTarget(name, "?", None, f"run {runs[0][:8]} has no snapshot of this source"))
    return out


# --- checks ------------------------------------------------------------------------


def check_files_content(repo: Repository, snap: Snapshot, restored: Path,
                        groups: Mapping[str, str] | None = None) -> CheckResult:
    """Compare what is under *restored* with the snapshot, entry by entry.

    Regular files are read back, re-chunked with the repository's chunker and hashed
    with its keyed hash; the ids must equal the snapshot's (when chunking differs, the
    bytes are compared with the repository's content instead). Sizes, permission
    bits, directories and symlink targets are compared too. Never raises for a
    mismatch: problems are listed in the result.

    *groups* (``{logical path prefix: name}``) adds ``details["groups"]``: per name,
    the files and bytes checked and the number of problems of the entries at or below
    that prefix (a source's claims, say)."""
    problems: list[str] = []
    counts = {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0}
    chunker = repo.chunker()
    per_group = {name: {"files": 0, "bytes": 0, "problems": 0} for name in (groups or {}).values()}
    group: dict[str, int] | None = None

    def problem(text: str) -> None:
        if group is not None:
            group["problems"] += 1
        if len(problems) < _MAX_PROBLEMS:
            problems.append(text)
        elif len(problems) == _MAX_PROBLEMS:
            problems.append("... (more problems not listed)")

    def group_of(path: str) -> dict[str, int] | None:
        for prefix, name in (groups or {}).items():
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return per_group[name]
        return None

    for entry in iter_tree(repo, snap):
        group = group_of(entry.path)
        dest = safe_destination(restored, entry.path)
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            problem(f"{entry.path}: missing")
            continue
        if entry.type == DIR:
            counts["dirs"] += 1
            if not stat.S_ISDIR(st.st_mode):
                problem(f"{entry.path}: not a directory")
        elif entry.type == SYMLINK:
            counts["symlinks"] += 1
            if not stat.S_ISLNK(st.st_mode) or os.readlink(dest) != entry.target:
                problem(f"{entry.path}: symlink target differs")
        elif entry.type == FILE:
            counts["files"] += 1
            if not stat.S_ISREG(st.st_mode):
                problem(f"{entry.path}: not a regular file")
                continue
            if st.st_size != entry.size:
                problem(f"{entry.path}: {st.st_size} bytes, the snapshot has {entry.size}")
                continue
            if stat.S_IMODE(st.st_mode) != entry.mode:
                problem(f"{entry.path}: mode {stat.S_IMODE(st.st_mode):o}, the snapshot has {entry.mode:o}")
            with open(dest, "rb", buffering=0) as f:
                ids = [repo.hasher(bytes(c.data)).hex() for c in chunker.cut_stream(f)]
            counts["bytes"] += st.st_size
            if group is not None:
                group["files"] += 1
                group["bytes"] += st.st_size
            if ids != entry.chunks and not _same_bytes(repo, entry.chunks, dest):
                problem(f"{entry.path}: content differs from the snapshot")
    details: dict[str, Any] = dict(counts)
    if groups is not None:
        details["groups"] = per_group
    summary = (
        f"{counts['files']} file(s) ({counts['bytes']} bytes) re-hashed, {counts['dirs']} dir(s), "
        f"{counts['symlinks']} symlink(s) match the snapshot"
        if not problems
        else f"{len(problems)} mismatch(es): {problems[0]}"
    )
    return CheckResult(ok=not problems, summary=summary, details=details, problems=problems)


def _same_bytes(repo: Repository, chunks: list[str], path: Path) -> bool:
    stream = BlobStream(repo, chunks)
    try:
        with open(path, "rb") as f:
            while True:
                a = stream.read(1024 * 1024)
                b = f.read(len(a) if a else 1)
                if a != b:
                    return False
                if not a:
                    return True
    finally:
        stream.close()


def _combine(first: CheckResult, extra: CheckResult) -> CheckResult:
    return CheckResult(
        ok=first.ok and extra.ok,
        summary=f"{first.summary}; {extra.summary}",
        details={**first.details, **extra.details},
        problems=first.problems + extra.problems,
    )


# --- the drill ---------------------------------------------------------------------


@dataclass
class DrillOptions:
    snapshot_ref: str = "latest"
    sources: list[str] = field(default_factory=list)
    """Only these sources (default: every configured source, or every source of the run)."""
    scratch_root: Path | None = None
    keep: bool = False
    rto_budget_seconds: float | None = None
    extra_checks: dict[str, ExtraCheck] = field(default_factory=dict)


def run_drill(
    repo: Repository,
    configured: list[Source],
    options: DrillOptions,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    on_result: Callable[[SourceDrill], None] | None = None,
    on_start: Callable[[str], None] | None = None,
) -> DrillReport:
    """Restore and check each selected source; return the report (never raises for a
    failed drill: see :meth:`DrillReport.error`).

    Raises RepositoryLocked (exclusive lock held), SnapshotNotFound / UsageError for a
    bad ``snapshot_ref``, UsageError for an unknown ``--source``."""
    by_name = {s.name: s for s in configured}
    report = DrillReport(repository=str(repo.config.get("id", "")), started=clock(), snapshot_ref=options.snapshot_ref,
                         rto_budget_seconds=options.rto_budget_seconds)
    scratch = make_scratch(options.scratch_root, "drkit-drill-")
    try:
        with repo.lock(exclusive=False, command="drill"):
            damaged: list[str] = []
            repo.load_index(on_error=lambda name, detail: damaged.append(f"{name}: {detail}"))
            snaps = repo.list_snapshots(on_error=lambda name, detail: damaged.append(f"{name}: {detail}"))
            report.damaged.extend(damaged)
            if options.snapshot_ref == "latest":
                unknown = [n for n in options.sources if n not in by_name and not any(s.source == n for s in snaps)]
                if unknown:
                    raise UsageError(f"no source named {', '.join(map(repr, unknown))} in the config or the repository",
                                     hint="configured: " + (", ".join(by_name) or "none"))
            targets = resolve_targets(snaps, options.snapshot_ref, list(by_name), list(options.sources))
            for t in targets:
                if on_start:
                    on_start(t.source)
                result = _drill_one(repo, t, by_name.get(t.source), scratch, options, clock)
                report.results.append(result)
                if on_result:
                    on_result(result)
    finally:
        report.finished = clock()
        if options.keep:
            report.notes.append(f"restored data kept under {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
            for r in report.results:
                r.restored_to = None
    return report


def diagnose_restore(repo: Repository, snap: Snapshot, target: Path, *, max_packs: int = 20) -> tuple[list[str], list[str]]:
    """After a failed restore: (paths of file entries missing under *target*, damaged
    objects behind them, as ``"<object name>: <what is wrong>"``).

    Checks only the packs holding the missing files' chunks (at most *max_packs*):
    each is read whole and checked against its SHA-256 name, and when the pack itself
    is intact, each needed blob is decrypted and verified. Never raises for damage."""
    from drkit.errors import ObjectNotFound, StorageError
    from drkit.repository import layout

    missing: list[str] = []
    wanted: dict[str, list[bytes]] = {}
    unindexed: list[str] = []
    try:
        for entry in iter_tree(repo, snap):
            if entry.type != FILE or os.path.lexists(safe_destination(target, entry.path)):
                continue
            missing.append(entry.path)
            for hex_id in entry.chunks:
                loc = repo.index.get(bytes.fromhex(hex_id))
                if loc is None:
                    unindexed.append(f"blob {hex_id[:16]}: not in the index")
                else:
                    wanted.setdefault(loc.pack, []).append(bytes.fromhex(hex_id))
    except DrkitError as exc:
        return missing, [exc.message]
    damaged = sorted(set(unindexed))
    for pack_id in sorted(wanted)[:max_packs]:
        name = layout.pack_name(pack_id)
        try:
            repo.read_pack(pack_id)
        except IntegrityError as exc:
            damaged.append(f"{name}: {exc.fields.get('detail', exc.message)}")
            continue
        except ObjectNotFound:
            damaged.append(f"{name}: missing")
            continue
        except StorageError as exc:
            damaged.append(f"{name}: {exc.message}")
            continue
        for chunk_id in dict.fromkeys(wanted[pack_id]):
            try:
                repo.read_blob(chunk_id)
            except DrkitError as exc:
                damaged.append(f"{name}: {exc.fields.get('detail', exc.message)}")
                break
    return missing, damaged


def make_scratch(root: Path | None, prefix: str) -> Path:
    """A new private (0700) directory under *root* (default: the system temp dir).
    Raises UsageError when *root* is not an existing, writable directory."""
    if root is not None and not root.is_dir():
        raise UsageError(f"scratch directory {root} does not exist or is not a directory",
                         hint="create it (on a disk with room for the largest source), or leave --scratch out")
    try:
        scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    except OSError as exc:
        raise UsageError(f"cannot create a scratch directory under {root or tempfile.gettempdir()}: {exc.strerror}") from None
    os.chmod(scratch, 0o700)
    return scratch.resolve()


def _source_for(target: DrillTarget, configured: Source | None) -> Source | None:
    """The configured source; else one built with default options (None if impossible)."""
    if configured is not None:
        return configured
    from drkit.sources import build_source

    try:
        return build_source({"name": target.source, "type": target.source_type}, key=f"drill.{target.source}")
    except DrkitError:
        return None


def _files_style(snap: Snapshot, source: Source | None) -> bool:
    """True when the restore lays the entries out as they are (files-style) and the
    source has no check of its own: then the entry-by-entry re-hash is the check."""
    if snap.source_type == "files" or source is None:
        return True
    cls = type(source)
    return cls.restore is Source.restore and cls.check_restored is Source.check_restored


def _drill_one(repo: Repository, t: DrillTarget, configured: Source | None, scratch: Path,
               options: DrillOptions, clock: Callable[[], datetime]) -> SourceDrill:
    r = SourceDrill(t.source, t.source_type, t.snapshot)
    snap = t.snapshot
    if snap is None:
        r.fail("snapshot", t.why_missing, damage=False)
        return r
    r.rpo_seconds = max(0.0, (clock() - snap.datetime).total_seconds())
    if configured is not None and configured.type_name != snap.source_type:
        r.fail("snapshot", f"snapshot {snap.short_id} is of type {snap.source_type}, the configured source is {configured.type_name}",
               damage=False)
        return r
    source = _source_for(t, configured)
    if source is None and snap.source_type != "files":
        r.fail("snapshot", f"source {t.source!r} ({snap.source_type}) is not in the config: cannot restore it", damage=False)
        return r
    target = scratch / t.source
    r.restored_to = str(target)
    reader = SnapshotReader(repo, snap, options=RestoreOptions(target=target))
    started = time.monotonic()
    try:
        if source is not None:
            restored = source.restore(reader)
        else:  # a files snapshot of an unconfigured source: the files-style restore
            restored = reader.write_entries(target)
        r.rto_seconds = time.monotonic() - started
        r.bytes_restored = restored.bytes_written
        r.files = restored.files
        if restored.failed:
            r.fail("restore", f"{len(restored.failed)} file(s) not restored: {', '.join(restored.failed[:3])}", damage=True)
    except DrkitError as exc:
        r.rto_seconds = time.monotonic() - started
        damage = isinstance(exc, (IntegrityError, DamageFound))
        message = exc.message
        if damage:
            missing, objects = diagnose_restore(repo, snap, target)
            if missing:
                message = (f"{len(missing)} file(s) not restored (e.g. {missing[0]}); damaged: "
                           + (", ".join(objects) if objects else exc.message))
        r.fail("restore", message, damage=damage)
        log.error("drill %s: restore failed: %s", t.source, message)
        return r
    check_started = time.monotonic()
    try:
        groups = source.drill_groups(snap) if source is not None else None
        if _files_style(snap, source):
            check = check_files_content(repo, snap, target)
        elif groups is not None:  # a files-style layout with a check of its own: re-hash per group, then that check
            assert source is not None
            check = _combine(check_files_content(repo, snap, target, groups), source.check_restored(target, snap))
        else:
            assert source is not None
            check = source.check_restored(target, snap)
        extra = options.extra_checks.get(t.source)
        if extra is not None:
            check = _combine(check, extra(target, snap))
    except (DrkitError, OSError) as exc:
        message = exc.message if isinstance(exc, DrkitError) else f"{type(exc).__name__}: {exc}"
        check = CheckResult(ok=False, summary=f"check failed: {message}", problems=[message])
    r.check_seconds = time.monotonic() - check_started
    r.check = check
    if not check.ok:
        r.fail("check", check.summary, damage=True)
        return r
    budget = options.rto_budget_seconds
    if budget is not None and r.rto_seconds is not None and r.rto_seconds > budget:
        r.fail("budget", f"restore took {r.rto_seconds:.1f}s, over the RTO budget of {budget:g}s", damage=False)
        return r
    r.ok = True
    return r


# --- publishing --------------------------------------------------------------------


def write_result_file(path: Path, report: DrillReport) -> None:
    """Replace *path* with the report as JSON, atomically (temp file, fsync, rename).

    Raises ConfigError (key ``drill.result_file``) when it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(report.to_json(), indent=2) + "\n", mode=0o644)
    except OSError as exc:
        raise ConfigError(f"cannot write the drill result to {path}: {exc.strerror or exc}", key="drill.result_file",
                          hint="the directory must be writable by drkit") from None
