"""``argocd``: Argo CD's own state, what ``argocd admin export`` saves.

argocd-cm, argocd-rbac-cm (and the known-hosts, TLS-certs and GPG-keys ConfigMaps when
present), argocd-secret, repository and cluster credential Secrets (label
``argocd.argoproj.io/secret-type``), AppProjects, Applications and ApplicationSets of
one namespace, with cluster-specific metadata, ``status`` and Applications'
``operation`` stripped. The export holds plaintext credentials: it is stored only in
drkit's encrypted repository.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from drkit.errors import Refused
from drkit.kube import (
    ARGO_APPLICATION,
    ARGO_APPLICATIONSET,
    ARGO_APPPROJECT,
    CONFIGMAP,
    SECRET,
    Kube,
    KubeNotFound,
    KubeOptions,
    connect_options,
    strip_object,
    unique,
)
from drkit.sources._kubeobjects import (
    check_manifests,
    record_cluster,
    restore_objects,
    store_objects,
)
from drkit.sources.base import (
    BackupContext,
    CheckResult,
    RestoreContext,
    RestoreResult,
    Source,
)

if TYPE_CHECKING:
    from drkit.repository.snapshot import Snapshot

SECRET_TYPE_LABEL = "argocd.argoproj.io/secret-type"
REQUIRED_CONFIGMAP = "argocd-cm"
OPTIONAL_CONFIGMAPS = ("argocd-rbac-cm", "argocd-ssh-known-hosts-cm", "argocd-tls-certs-cm", "argocd-gpg-keys-cm")
PAUSED_ANNOTATION = "drkit.io/paused-automated-sync"
"""Holds the JSON of ``syncPolicy.automated`` that a restore with ``pause_sync`` removed."""


class ArgoCDOptions(KubeOptions):
    """``namespace``: where Argo CD runs (default ``argocd``). A namespace without
    ``argocd-cm`` is refused: that is the wrong namespace, not an empty Argo CD.
    Connection keys: ``kubeconfig``, ``context``, ``in_cluster``.

    Restore options: ``--in-place`` applies the objects; ``pause_sync`` (default true
    when in place) removes ``spec.syncPolicy.automated`` from Applications and from
    ApplicationSets' templates, keeping it in the annotation
    ``drkit.io/paused-automated-sync``, so nothing syncs or prunes before the data is
    back. Re-enable with a merge patch that restores ``syncPolicy.automated`` from it.
    """

    namespace: str = Field("argocd", min_length=1)


def pause_automated_sync(obj: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Remove automated sync from an Application (or an ApplicationSet's template),
    recording it in :data:`PAUSED_ANNOTATION`. Pure; other kinds pass unchanged."""
    kind = obj.get("kind")
    if kind not in ("Application", "ApplicationSet"):
        return obj, None
    out = copy.deepcopy(obj)
    spec = out.get("spec") or {}
    if kind == "ApplicationSet":
        spec = ((spec.get("template") or {}).get("spec")) or {}
    policy = spec.get("syncPolicy") or {}
    automated = policy.get("automated")
    if automated is None:
        return out, None
    del policy["automated"]
    out["metadata"].setdefault("annotations", {})[PAUSED_ANNOTATION] = json.dumps(automated, sort_keys=True)
    return out, "automated sync paused"


class ArgoCDSource(Source):
    """Argo CD configuration, credentials, projects and applications of one namespace."""

    type_name = "argocd"
    restore_options = frozenset({"pause_sync"})
    Options = ArgoCDOptions
    options: ArgoCDOptions

    def describe(self) -> str:
        return f"{self.name} (argocd in namespace {self.options.namespace})"

    def export(self, kube: Kube) -> list[dict[str, Any]]:
        """Everything this source saves, stripped. Raises Refused without argocd-cm."""
        ns = self.options.namespace
        cm = kube.get_or_none(CONFIGMAP, REQUIRED_CONFIGMAP, ns)
        if cm is None:
            raise Refused(
                f"no ConfigMap {REQUIRED_CONFIGMAP} in namespace {ns!r}: refusing an empty Argo CD export",
                hint="set the source's 'namespace' to where Argo CD is installed "
                "(kubectl get cm -A | grep argocd-cm)",
            )
        objs: list[dict[str, Any]] = [cm]
        for name in OPTIONAL_CONFIGMAPS:
            found = kube.get_or_none(CONFIGMAP, name, ns)
            if found is not None:
                objs.append(found)
        secret = kube.get_or_none(SECRET, "argocd-secret", ns)
        if secret is not None:
            objs.append(secret)
        objs += kube.list(SECRET, ns, label_selector=SECRET_TYPE_LABEL)
        for res in (ARGO_APPPROJECT, ARGO_APPLICATION, ARGO_APPLICATIONSET):
            try:
                objs += kube.list(res, ns)
            except KubeNotFound:  # an Argo CD without ApplicationSets (CRD not installed)
                continue
        out = []
        for obj in unique(objs):
            clean = strip_object(obj)
            if clean.get("kind") == "Application":
                clean.pop("operation", None)  # an in-flight sync of the old cluster
            out.append(clean)
        return out

    def backup(self, ctx: BackupContext) -> None:
        ctx.progress(f"{self.name}: exporting Argo CD from namespace {self.options.namespace}")
        with connect_options(self.options) as kube:
            record_cluster(ctx, kube)
            objs = self.export(kube)
        store_objects(ctx, objs)
        counts: dict[str, int] = {}
        for o in objs:
            counts[o["kind"]] = counts.get(o["kind"], 0) + 1
        ctx.meta.update({"kind": "kubernetes-manifests", "namespace": self.options.namespace, "count": len(objs),
                         "counts": counts})

    def restore(self, ctx: RestoreContext) -> RestoreResult:
        """Write manifests under ``--target``; with ``in_place`` apply them in order
        (ConfigMaps, Secrets, AppProjects, Applications, ApplicationSets), pausing
        automated sync unless ``pause_sync`` is false."""
        pause = bool(ctx.options.extra.get("pause_sync", True))
        return restore_objects(
            ctx,
            lambda: connect_options(self.options),
            source_name=self.name,
            transform=pause_automated_sync if pause else None,
        )

    def check_restored(self, restored: Path, snapshot: Snapshot) -> CheckResult:
        """Every restored manifest parses, the count matches, argocd-cm is there."""
        ns = snapshot.meta.get("namespace", self.options.namespace)
        return check_manifests(restored, expected=snapshot.meta.get("count"),
                               required=[f"configmaps/{ns}/{REQUIRED_CONFIGMAP}.yaml"])
