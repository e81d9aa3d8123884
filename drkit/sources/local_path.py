"""``local-path``: the directories behind K3s local-path volumes, and their restore.

K3s's local-path provisioner (``rancher.io/local-path``, configured by the
``local-path-config`` ConfigMap) gives each claim a directory on the node, by default
``/var/lib/rancher/k3s/storage/pvc-<uid>_<namespace>_<claim>``, named by the claim's
PV (``spec.hostPath.path`` or ``spec.local.path``, with a node affinity). The PV's
reclaim policy is ``Delete``: the directory goes with the claim.

Backup, per selected claim (PVC -> PV -> directory, read from the API):

1. the claim's optional ``pre`` hooks (local commands through :mod:`drkit.proc`),
   the directory tree saved the way the ``files`` source saves one (modes, owners,
   mtimes, symlinks; unchanged files are not read again) under the logical path
   ``<namespace>/<claim>``, then the ``post`` hooks (always, once a pre hook started);
2. ``snapshot.meta['claims']`` records per claim: namespace, name and uid of the claim,
   the PV, the directory and its volume type (``hostPath``/``local``), the node, what
   was saved (files, bytes), the files that changed while they were read, and the PVC
   and PV manifests stripped of cluster metadata (as the Longhorn source strips them).

A directory copy is **crash-consistent per file, not across files**: see
``docs/sources/local-path.md`` (section *consistency*); hooks give application
consistency. Restore (``--target``, ``--in-place``, ``--namespace``) lives in
:mod:`drkit.sources.local_path_restore`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator, model_validator

from drkit import proc
from drkit.errors import EXIT_STORAGE, DrkitError, Refused, UsageError
from drkit.kube import (
    PV,
    PVC,
    STORAGE_CLASS,
    Kube,
    KubeAuthError,
    KubeNotFound,
    KubeOptions,
    connect_options,
    strip_object,
)
from drkit.repository.tree import Entry
from drkit.sources._kubeobjects import record_cluster
from drkit.sources.base import (
    BackupContext,
    CheckResult,
    RestoreContext,
    RestoreResult,
    Source,
    SourceOptions,
)
from drkit.sources.files import TreeWalker

if TYPE_CHECKING:
    from drkit.repository.snapshot import Snapshot

PROVISIONER = "rancher.io/local-path"
DEFAULT_CLASS = "local-path"
SELECTED_NODE = "local.path.provisioner/selected-node"
_MAX_LISTED = 20
_REF = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")


class LocalPathError(DrkitError):
    """{message}"""

    exit_code = EXIT_STORAGE


class LocalHook(SourceOptions):
    """A command run on this host (argv, no shell) through drkit.proc: a timeout, a
    one-line error with the stderr tail. It sees the environment drkit was started
    with plus ``DRKIT_CLAIM_NAMESPACE``, ``DRKIT_CLAIM_NAME`` and ``DRKIT_CLAIM_PATH``
    (the directory on this host). A plain list is the argv."""

    command: list[str] = Field(min_length=1)
    timeout: float = Field(300.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _argv_shorthand(cls, value: Any) -> Any:
        return {"command": value} if isinstance(value, list) else value


class ClaimHooks(SourceOptions):
    """``pre`` hooks run before the claim's directory is read (a failure skips the claim:
    the run ends as a partial failure); ``post`` hooks always run once a pre hook started."""

    pre: list[LocalHook] = Field(default_factory=list)
    post: list[LocalHook] = Field(default_factory=list)


class LocalPathOptions(KubeOptions):
    """Which claims, and how.

    Selection: ``namespaces`` (default: all), ``claims`` (``namespace/name`` or
    ``name``; default: every claim selected by the other keys), ``label_selector`` (on
    the claims), ``storage_classes`` (default: ``local-path`` and every StorageClass
    whose provisioner is ``rancher.io/local-path``). A claim listed in ``claims`` is
    taken whatever its class, and must be bound to a hostPath or local PV.

    ``host_root``: where the node's filesystem is mounted on the host drkit runs on
    (``/`` on the node; e.g. ``/host`` in a pod). ``node_name``: this node's Kubernetes
    name (default: the host name); a restore writes only directories of claims whose PV
    is on this node. ``exclude``: fnmatch patterns on the
    logical path ``<namespace>/<claim>/...`` (with a ``/``) or the file name.
    ``hooks``: ``{namespace/claim: {pre: [...], post: [...]}}`` (see :class:`ClaimHooks`).
    ``bind_timeout``/``poll_interval``: seconds a restore waits for created claims to bind.
    """

    namespaces: list[str] = Field(default_factory=list)
    claims: list[str] = Field(default_factory=list)
    label_selector: str | None = Field(None, min_length=1)
    storage_classes: list[str] = Field(default_factory=list)
    host_root: Path = Path("/")
    node_name: str | None = Field(None, min_length=1)
    exclude: list[str] = Field(default_factory=list)
    hooks: dict[str, ClaimHooks] = Field(default_factory=dict)
    bind_timeout: float = Field(60.0, gt=0)
    poll_interval: float = Field(1.0, gt=0)

    @field_validator("hooks")
    @classmethod
    def _hook_keys(cls, hooks: dict[str, ClaimHooks]) -> dict[str, ClaimHooks]:
        for key in hooks:
            if not _REF.match(key):
                raise ValueError(f"hooks are keyed by namespace/claim, got {key!r}")
        return hooks

    @field_validator("host_root")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"host_root must be an absolute path, got {str(value)!r}")
        return value


def volume_path(pv: dict[str, Any]) -> tuple[str, str] | None:
    """``(path, volume type)`` of a hostPath or local PV, else None."""
    spec = pv.get("spec") or {}
    for kind in ("hostPath", "local"):
        path = (spec.get(kind) or {}).get("path")
        if path:
            return str(path), kind
    return None


def pv_node(pv: dict[str, Any]) -> str | None:
    """The node a local-path PV lives on: its ``kubernetes.io/hostname`` node affinity,
    else the provisioner's ``selected-node`` annotation."""
    terms = ((((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required") or {})
             .get("nodeSelectorTerms") or [])
    for term in terms:
        for expr in term.get("matchExpressions") or []:
            if expr.get("key") == "kubernetes.io/hostname" and expr.get("operator") == "In" and expr.get("values"):
                return str(expr["values"][0])
    return ((pv.get("metadata") or {}).get("annotations") or {}).get(SELECTED_NODE)


def check_dir_path(path: str, what: str) -> str:
    """*path* if it is an absolute, normalised directory path other than ``/``;
    Refused otherwise (a damaged or hostile record must not aim a restore anywhere)."""
    p = PurePosixPath(path)
    if not p.is_absolute() or str(p) != os.path.normpath(path) or ".." in p.parts or len(p.parts) < 2 or "\0" in path:
        raise Refused(f"{what}: {path!r} is not an absolute, normalised directory path",
                      hint="the PV or the snapshot record is damaged; restore with --target DIR instead")
    return str(p)


def on_host(host_root: Path, path: str) -> Path:
    """Where node path *path* is on this host (under *host_root*)."""
    return host_root / path.lstrip("/")


@dataclass
class ClaimVolume:
    """One claim chosen for backup, with its PV and directory."""

    pvc: dict[str, Any]
    pv: dict[str, Any]
    path: str
    volume_type: str

    @property
    def namespace(self) -> str:
        return str(self.pvc["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.pvc["metadata"]["name"])

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def logical(self) -> str:
        return f"{self.namespace}/{self.name}"

    def record(self) -> dict[str, Any]:
        pv_spec = self.pv.get("spec") or {}
        pvc_spec = self.pvc.get("spec") or {}
        return {
            "namespace": self.namespace,
            "claim": self.name,
            "uid": self.pvc["metadata"].get("uid", ""),
            "pv": self.pv["metadata"]["name"],
            "path": self.path,
            "volume_type": self.volume_type,
            "node": pv_node(self.pv),
            "storage_class": pvc_spec.get("storageClassName") or pv_spec.get("storageClassName") or "",
            "capacity": (pv_spec.get("capacity") or {}).get("storage", ""),
            "logical_path": self.logical,
            "pvc_manifest": strip_object(self.pvc),
            "pv_manifest": strip_object(self.pv),
        }


class LocalPathSource(Source):
    """Directories of local-path volumes (see :class:`LocalPathOptions`)."""

    type_name = "local-path"
    restore_options = frozenset({"host_root", "node", "offline", "storage_path"})
    Options = LocalPathOptions
    options: LocalPathOptions

    def describe(self) -> str:
        return f"{self.name} (local-path volumes)"

    # ------------------------------------------------------------------ selection
    def storage_classes(self, kube: Kube) -> tuple[set[str], str | None]:
        """The classes whose claims are taken by default, and a note when the
        StorageClasses could not be listed (then: ``local-path`` only)."""
        if self.options.storage_classes:
            return set(self.options.storage_classes), None
        try:
            found = {sc["metadata"]["name"] for sc in kube.list(STORAGE_CLASS) if sc.get("provisioner") == PROVISIONER}
        except (KubeAuthError, KubeNotFound) as exc:
            return {DEFAULT_CLASS}, f"StorageClasses not listed ({exc.message}): taking class {DEFAULT_CLASS!r} only"
        return found | {DEFAULT_CLASS}, None

    def select(self, kube: Kube) -> tuple[list[ClaimVolume], list[str]]:
        """The claims to back up, and notes on those skipped (not bound yet). Raises
        UsageError when a claim named in ``claims`` is missing, unbound or not a
        hostPath/local volume."""
        opts = self.options
        classes, note = self.storage_classes(kube)
        skipped = [note] if note else []
        pvcs: list[dict[str, Any]] = []
        namespaces: list[str | None] = list(opts.namespaces) or [None]
        for ns in namespaces:
            pvcs += kube.list(PVC, ns, label_selector=opts.label_selector)
        wanted = set(opts.claims)

        def ref(p: dict[str, Any]) -> str:
            return f"{p['metadata']['namespace']}/{p['metadata']['name']}"

        if wanted:
            pvcs = [p for p in pvcs if p["metadata"]["name"] in wanted or ref(p) in wanted]
            found = {p["metadata"]["name"] for p in pvcs} | {ref(p) for p in pvcs}
            missing = sorted(wanted - found)
            if missing:
                raise UsageError(f"claim(s) not found: {', '.join(missing)}",
                                 hint="check 'claims', 'namespaces' and 'label_selector' of the source")
        selected: list[ClaimVolume] = []
        for pvc in pvcs:
            explicit = bool(wanted)
            pv_name = (pvc.get("spec") or {}).get("volumeName")
            pv = kube.get_or_none(PV, pv_name) if pv_name else None
            cls = (pvc.get("spec") or {}).get("storageClassName") or ((pv or {}).get("spec") or {}).get("storageClassName")
            if not explicit and cls not in classes:
                continue
            where = volume_path(pv) if pv else None
            problem = None
            if pv is None:
                problem = (f"claim {ref(pvc)} is not bound to a PV yet (the provisioner makes its directory when a "
                           "pod first uses it)")
            elif where is None:
                problem = f"claim {ref(pvc)} (PV {pv_name}) is neither a hostPath nor a local volume"
            if problem:
                if explicit:
                    raise UsageError(problem, hint="only claims bound to hostPath or local PVs can be backed up")
                skipped.append(problem)
                continue
            assert pv is not None and where is not None
            selected.append(ClaimVolume(pvc, pv, check_dir_path(where[0], f"PV {pv_name}"), where[1]))
        return selected, skipped

    # ------------------------------------------------------------------ backup
    def backup(self, ctx: BackupContext) -> None:
        """Save every selected claim's directory. Raises Refused when nothing is
        selected; a claim whose directory is missing or whose pre hook fails is
        skipped with ``ctx.warn`` (the run ends as a partial failure)."""
        with connect_options(self.options) as kube:
            record_cluster(ctx, kube)
            selected, skipped = self.select(kube)
        if not selected:
            raise Refused(
                f"source {self.name!r} selected no local-path claims" + (f" ({'; '.join(skipped)})" if skipped else ""),
                hint="check kubeconfig/context, 'namespaces', 'claims', 'label_selector' and 'storage_classes'",
            )
        ctx.run_meta.setdefault("local_path_source", self.name)  # the rebuild runbooks restore this one
        made: set[str] = set()  # logical directories recorded in this run
        records = [self._backup_claim(ctx, cv, made) for cv in selected]
        ctx.meta["claims"] = records
        if skipped:
            ctx.meta["skipped"] = skipped
            for line in skipped:
                ctx.note(line)

    def _backup_claim(self, ctx: BackupContext, cv: ClaimVolume, made: set[str]) -> dict[str, Any]:
        record = cv.record()
        record["saved"] = False
        real = on_host(self.options.host_root, cv.path)
        ctx.paths.append(str(real))
        hooks = self.options.hooks.get(cv.ref) or ClaimHooks()
        env = {**ctx.env, "DRKIT_CLAIM_NAMESPACE": cv.namespace, "DRKIT_CLAIM_NAME": cv.name,
               "DRKIT_CLAIM_PATH": str(real)}
        try:
            for hook in hooks.pre:
                _run_hook(hook, env, f"pre hook of claim {cv.ref}")
            self._save_tree(ctx, cv, real, record, made)
        except DrkitError as exc:
            ctx.warn(f"claim {cv.ref} not saved: {exc.message}")
            record["error"] = exc.message
        finally:
            for hook in hooks.post:  # always: a pre hook may have stopped or frozen something
                try:
                    _run_hook(hook, env, f"post hook of claim {cv.ref}")
                except DrkitError as exc:
                    ctx.warn(exc.message)
        return record

    def _save_tree(self, ctx: BackupContext, cv: ClaimVolume, real: Path, record: dict[str, Any],
                   made: set[str]) -> None:
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            raise LocalPathError(f"its directory {real} does not exist",
                                 hint="is 'host_root' right, and does drkit run on the node that holds the volume?") from None
        except PermissionError:
            raise LocalPathError(f"its directory {real} cannot be read (permission denied)",
                                 hint="run drkit as root on the node") from None
        if not os.path.isdir(real) or os.path.islink(real):
            raise LocalPathError(f"{real} is not a directory")
        if cv.namespace not in made:
            ctx.add_dir(cv.namespace, mode=0o755)
            made.add(cv.namespace)
        changed: list[str] = []

        def after_file(path: str, logical: str, before: os.stat_result, entry: Entry) -> None:
            try:
                now = os.lstat(path)
            except OSError:
                changed.append(logical)
                return
            if now.st_size != entry.size or now.st_mtime_ns != before.st_mtime_ns or now.st_ino != before.st_ino:
                changed.append(logical)

        ctx.progress(f"{self.name}: {cv.ref}")
        walker = TreeWalker(ctx, exclude=self.options.exclude, seen=made, after_file=after_file)
        walker.walk(str(real), cv.logical, st)
        record.update({"saved": True, "files": walker.counts["files"], "dirs": walker.counts["dirs"],
                       "symlinks": walker.counts["symlinks"], "bytes": walker.counts["bytes"],
                       "changed_while_read": changed[:_MAX_LISTED], "changed_while_read_count": len(changed)})
        if changed:
            ctx.note(f"claim {cv.ref}: {len(changed)} file(s) changed while they were read (each is saved as it was "
                     f"when read, e.g. {changed[0]}): use hooks for application consistency")

    # ------------------------------------------------------------------ restore
    def records(self, ctx: RestoreContext) -> list[dict[str, Any]]:
        """The claims of the snapshot (``meta['claims']``), filtered by
        ``ctx.options.volumes`` (``namespace/claim`` or ``claim``). UsageError for a
        requested claim not in the snapshot; claims whose backup failed are left out."""
        records = [r for r in (ctx.snapshot.meta.get("claims") or []) if isinstance(r, dict)]
        wanted = list(ctx.options.volumes or [])
        if wanted:
            known = {f"{r['namespace']}/{r['claim']}" for r in records}
            missing = [w for w in wanted if not any(w in (k, k.split("/", 1)[1]) for k in known)]
            if missing:
                raise UsageError(f"claim(s) not in this snapshot: {', '.join(missing)}",
                                 hint="in this snapshot: " + (", ".join(sorted(known)) or "none"))
            records = [r for r in records if r["claim"] in wanted or f"{r['namespace']}/{r['claim']}" in wanted]
        return records

    def restore(self, ctx: RestoreContext) -> RestoreResult:
        """``--target DIR``: each claim's files under ``DIR/<namespace>/<claim>/``, the
        cluster untouched. ``--in-place`` and ``--namespace NEW``: see
        :mod:`drkit.sources.local_path_restore`."""
        from drkit.sources import local_path_restore as lpr

        records = self.records(ctx)
        namespace = ctx.options.namespace
        if namespace and ctx.options.in_place:
            raise UsageError("give either --in-place (the original claims) or --namespace NEW (new claims), not both")
        if namespace:
            return lpr.restore_to_namespace(self, ctx, records, str(namespace))
        if ctx.options.in_place:
            return lpr.restore_in_place(self, ctx, records)
        if ctx.target is None:
            raise UsageError(f"source {self.name!r}: give --target DIR, --in-place, or --namespace NEW")
        include = [r["logical_path"] for r in records] if ctx.options.volumes else None
        result = ctx.write_entries(ctx.target, include=include)
        for r in records:
            if r.get("saved"):
                result.lines.append(f"{r['namespace']}/{r['claim']}: restored under {ctx.target / r['logical_path']}")
        return result

    # ------------------------------------------------------------------ drills
    def drill_groups(self, snapshot: Snapshot) -> dict[str, str] | None:
        """One group per saved claim: the drill re-hashes its restored files."""
        return {r["logical_path"]: f"{r['namespace']}/{r['claim']}"
                for r in snapshot.meta.get("claims") or [] if r.get("saved")}

    def check_restored(self, restored: Path, snapshot: Snapshot) -> CheckResult:
        """Per saved claim: its directory is there and holds the files, directories and
        bytes the backup recorded (the content itself is re-hashed by the drill)."""
        problems: list[str] = []
        details: dict[str, Any] = {}
        for r in snapshot.meta.get("claims") or []:
            ref = f"{r['namespace']}/{r['claim']}"
            if not r.get("saved"):
                problems.append(f"{ref}: not saved in this snapshot ({r.get('error', 'no reason recorded')})")
                continue
            root = restored / r["logical_path"]
            if not root.is_dir():
                problems.append(f"{ref}: directory missing")
                continue
            files = size = 0
            for dirpath, _dirnames, filenames in os.walk(root):
                for name in filenames:
                    p = os.path.join(dirpath, name)
                    if not os.path.islink(p):
                        files += 1
                        size += os.lstat(p).st_size
            details[ref] = {"files": files, "bytes": size}
            if (files, size) != (r.get("files"), r.get("bytes")):
                problems.append(f"{ref}: {files} file(s), {size} bytes restored; the backup saved "
                                f"{r.get('files')} file(s), {r.get('bytes')} bytes")
        count = len(snapshot.meta.get("claims") or [])
        summary = f"{count} claim(s) restored as saved" if not problems else "; ".join(problems[:3])
        return CheckResult(ok=not problems, summary=summary, details=details, problems=problems)


def _run_hook(hook: LocalHook, env: dict[str, str], what: str) -> None:
    try:
        proc.run(hook.command, timeout=hook.timeout, env=env, replace_env=True, hint=f"fix or remove the {what}")
    except proc.CommandFailed as exc:
        raise proc.CommandFailed(f"{what} failed: {exc.message}", cmd=exc.cmd, returncode=exc.returncode,
                                 stderr_tail=exc.stderr_tail, hint=exc.hint) from None
