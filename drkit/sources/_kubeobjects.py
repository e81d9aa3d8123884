"""Shared backup/restore of Kubernetes manifests for the k8s-secrets and argocd sources.

Backup stores each object, stripped of cluster-specific metadata, as YAML under
``<plural>/<namespace>/<name>.yaml`` (see :func:`drkit.kube.manifest_path`).
Restore either writes those files under ``--target`` (never touching the cluster) or,
with ``in_place``, applies them in a fixed kind order (create, or replace what exists)
and reports every object it applied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from drkit.errors import PartialFailure, UsageError
from drkit.kube import (
    Kube,
    KubeAPIError,
    dump_manifest,
    load_manifest,
    manifest_path,
    object_ref,
)
from drkit.repository.tree import FILE
from drkit.sources.base import BackupContext, CheckResult, RestoreContext, RestoreResult

# Restore order (velero's habit: order as data, each with its reason).
APPLY_ORDER = [
    "Namespace",  # everything else lives in one
    "ConfigMap",  # Argo CD reads argocd-cm / argocd-rbac-cm at start
    "Secret",  # sealed-secrets keys before the controller starts; repo creds before apps sync
    "AppProject",  # Applications refer to their project
    "Application",
    "ApplicationSet",  # generates Applications: last, so the restored ones exist first
]


def record_cluster(ctx: BackupContext, kube: Kube) -> None:
    """Record which cluster a snapshot came from: ``meta.kubernetes_version`` and
    ``meta.kubernetes_server``, and ``run_meta.kubernetes_version`` (shared by every source
    of the run, so a restore can warn about a different Kubernetes/K3s version)."""
    version = kube.server_version()
    ctx.meta["kubernetes_version"] = version
    ctx.meta["kubernetes_server"] = kube.server
    ctx.run_meta.setdefault("kubernetes_version", version)


def warn_version_mismatch(ctx: RestoreContext, kube: Kube) -> str | None:
    """Say a warning when the cluster's Kubernetes minor version differs from the one
    the snapshot was taken on (objects may use API fields the other version lacks).
    Returns the warning, or None when both match or either is unknown."""
    import re

    then = str((getattr(ctx.snapshot, "meta", None) or {}).get("kubernetes_version") or "")
    now = kube.server_version()
    minor = re.compile(r"v?(\d+)\.(\d+)")
    a, b = minor.match(then), minor.match(now)
    if not a or not b or a.groups() == b.groups():
        return None
    line = (f"warning: the snapshot was taken on Kubernetes {then}, this cluster runs {now}: "
            "check the restored objects (API fields differ between minor versions)")
    ctx.say(line)
    return line


def store_objects(ctx: BackupContext, objs: Iterable[dict[str, Any]]) -> list[str]:
    """Hand each (already stripped) object to *ctx* as YAML; returns the paths used."""
    paths = []
    for obj in objs:
        path = manifest_path(obj)
        ctx.add_bytes(path, dump_manifest(obj), mode=0o600)
        paths.append(path)
    return paths


def read_objects(ctx: RestoreContext) -> list[tuple[str, dict[str, Any]]]:
    """(path, object) of every YAML manifest in the snapshot, honouring ``ctx.include``."""
    out = []
    for entry in ctx.entries():
        if entry.type != FILE or not entry.path.endswith(".yaml"):
            continue
        if ctx.include and not any(_included(entry.path, pat) for pat in ctx.include):
            continue
        f = ctx.open_entry(entry)
        try:
            data = f.read()
        finally:
            f.close()
        out.append((entry.path, load_manifest(data, name=entry.path)))
    return out


def _included(path: str, pattern: str) -> bool:
    import fnmatch

    pattern = pattern.strip("/")
    return fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/")


def restore_objects(
    ctx: RestoreContext,
    kube_factory: Callable[[], Kube],
    *,
    source_name: str,
    transform: Callable[[dict[str, Any]], tuple[dict[str, Any], str | None]] | None = None,
) -> RestoreResult:
    """The restore contract of manifest sources (see module doc).

    *transform* may change an object before it is applied and return a note for the
    report (e.g. "automated sync paused"). Without ``in_place`` and without
    ``--target`` it raises UsageError. A failure to apply one object does not stop the
    others; any failure ends in :class:`PartialFailure` after the report.
    """
    if not ctx.options.in_place:
        if ctx.target is None:
            raise UsageError(
                f"source {source_name!r} restores manifests into a directory: give --target DIR",
                hint="or --in-place to apply them to the cluster of the source's kubeconfig",
            )
        result = ctx.write_entries(ctx.target, include=ctx.include or None)
        result.lines.append(f"wrote {result.files} manifest(s) under {ctx.target} (cluster not touched)")
        return result

    objs = read_objects(ctx)
    order = {kind: i for i, kind in enumerate(APPLY_ORDER)}
    objs.sort(key=lambda po: (order.get(po[1].get("kind", ""), len(order)), po[0]))
    result = RestoreResult()
    if ctx.dry_run:
        for _path, obj in objs:
            if transform is not None:
                obj, _ = transform(obj)
            ctx.say(f"would apply {object_ref(obj)}")
        return result

    kube = kube_factory()
    try:
        warn_version_mismatch(ctx, kube)
        namespaces = sorted({o["metadata"]["namespace"] for _, o in objs if o["metadata"].get("namespace")})
        for ns in namespaces:
            if kube.ensure_namespace(ns):
                ctx.say(f"created Namespace {ns}")
        applied: list[str] = []
        for path, obj in objs:
            note = None
            if transform is not None:
                obj, note = transform(obj)
            try:
                how = kube.apply(obj)
            except KubeAPIError as exc:
                ctx.say(f"FAILED {object_ref(obj)}: {exc.message}")
                result.failed.append(path)
                continue
            ctx.say(f"{how} {object_ref(obj)}" + (f" ({note})" if note else ""))
            applied.append(object_ref(obj))
            result.files += 1
        result.details["applied"] = applied
    finally:
        kube.close()
    if result.failed:
        raise PartialFailure(
            f"{len(result.failed)} of {len(objs)} object(s) of source {source_name!r} were not applied: "
            + ", ".join(result.failed[:5]),
            hint="see the lines above for the API server's reasons; fix them and run the restore again (it is idempotent)",
        )
    return result


def check_manifests(restored: Path, *, expected: int | None, required: Sequence[str] = ()) -> CheckResult:
    """Semantic check of restored manifests (drills): every ``*.yaml`` under *restored*
    parses as a Kubernetes object, there are *expected* of them (when known), and each
    path in *required* is present."""
    problems: list[str] = []
    counts: dict[str, int] = {}
    files = sorted(p for p in restored.rglob("*.yaml") if p.is_file())
    for path in files:
        rel = str(path.relative_to(restored))
        try:
            obj = load_manifest(path.read_bytes(), name=rel)
        except KubeAPIError as exc:
            problems.append(exc.message)
            continue
        if rel != manifest_path(obj):
            problems.append(f"{rel} holds {object_ref(obj)}")
        counts[obj["kind"]] = counts.get(obj["kind"], 0) + 1
    if expected is not None and len(files) != expected:
        problems.append(f"{len(files)} manifest(s) restored, the snapshot recorded {expected}")
    for rel in required:
        if not (restored / rel).is_file():
            problems.append(f"{rel} is missing")
    summary = f"{len(files)} manifest(s) parse as Kubernetes objects" if not problems else "; ".join(problems[:3])
    return CheckResult(ok=not problems, summary=summary, details={"counts": counts}, problems=problems)
