"""``k8s-secrets``: Secrets that cannot be rebuilt from Git, by label and namespace.

Without the sealed-secrets private keys every SealedSecret in the GitOps repository is
lost; without cert-manager's ACME account keys and issued certificates a rebuild hits
Let's Encrypt rate limits. This source saves them (and any Secrets you select) as
YAML manifests with cluster-specific metadata stripped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from drkit.errors import Refused
from drkit.kube import (
    CM_CLUSTER_ISSUER,
    CM_ISSUER,
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

SEALED_SECRETS_LABEL = "sealedsecrets.bitnami.com/sealed-secrets-key"
CERT_NAME_ANNOTATION = "cert-manager.io/certificate-name"
CERT_MANAGER_NAMESPACE = "cert-manager"
Preset = Literal["sealed-secrets", "cert-manager"]
DEFAULT_PRESETS: tuple[Preset, ...] = ("sealed-secrets", "cert-manager")


class K8sSecretsOptions(KubeOptions):
    """Which Secrets to save. The selection is the union of:

    - ``presets`` (default: both):

      - ``sealed-secrets``: every Secret labelled
        ``sealedsecrets.bitnami.com/sealed-secrets-key`` in any namespace (the active
        key and the old ones: all are needed to decrypt older SealedSecrets);
      - ``cert-manager``: issued certificate Secrets (type ``kubernetes.io/tls`` with
        annotation ``cert-manager.io/certificate-name``, any namespace) and the ACME
        account keys named by every Issuer/ClusterIssuer's
        ``spec.acme.privateKeySecretRef`` (ClusterIssuers' keys live in
        ``cluster_resource_namespace``);

    - your own selection when ``namespaces`` or ``label_selector`` is set: Secrets
      matching ``label_selector`` (a Kubernetes label selector, e.g.
      ``app=db,tier!=cache``; omitted = all) in ``namespaces`` (omitted = all).

    ``presets: []`` saves only your own selection. A run that selects nothing is
    refused (wrong kubeconfig or selector?) unless ``allow_empty: true``.
    Connection keys: ``kubeconfig``, ``context``, ``in_cluster``.
    """

    presets: list[Preset] = Field(default_factory=lambda: list(DEFAULT_PRESETS))
    namespaces: list[str] = Field(default_factory=list)
    label_selector: str | None = Field(None, min_length=1)
    cluster_resource_namespace: str = CERT_MANAGER_NAMESPACE
    allow_empty: bool = False


class K8sSecretsSource(Source):
    """Secrets selected by presets, label and namespace (see :class:`K8sSecretsOptions`)."""

    type_name = "k8s-secrets"
    Options = K8sSecretsOptions
    options: K8sSecretsOptions

    def describe(self) -> str:
        parts: list[str] = list(self.options.presets)
        if self.options.namespaces or self.options.label_selector:
            parts.append(f"{','.join(self.options.namespaces) or 'all namespaces'}"
                         f"{' ' + self.options.label_selector if self.options.label_selector else ''}")
        return f"{self.name} (k8s-secrets: {'; '.join(parts) or 'nothing'})"

    def select(self, kube: Kube) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The selected Secrets (raw, as the API returns them) and a count per selector."""
        found: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        opts = self.options
        if "sealed-secrets" in opts.presets:
            keys = kube.list(SECRET, None, label_selector=SEALED_SECRETS_LABEL)
            counts["sealed-secrets"] = len(keys)
            found += keys
        if "cert-manager" in opts.presets:
            certs = [
                s for s in kube.list(SECRET, None, field_selector="type=kubernetes.io/tls")
                if CERT_NAME_ANNOTATION in (s["metadata"].get("annotations") or {})
            ]
            acme = self._acme_account_keys(kube)
            counts["cert-manager-certificates"] = len(certs)
            counts["cert-manager-acme-keys"] = len(acme)
            found += certs + acme
        if opts.namespaces or opts.label_selector:
            own: list[dict[str, Any]] = []
            scopes: list[str | None] = list(opts.namespaces) or [None]
            for ns in scopes:
                own += kube.list(SECRET, ns, label_selector=opts.label_selector)
            counts["selected"] = len(own)
            found += own
        return unique(found), counts

    def _acme_account_keys(self, kube: Kube) -> list[dict[str, Any]]:
        refs: list[tuple[str, str]] = []
        for res in (CM_ISSUER, CM_CLUSTER_ISSUER):
            try:
                issuers = kube.list(res)
            except KubeNotFound:  # cert-manager not installed
                continue
            for issuer in issuers:
                name = (((issuer.get("spec") or {}).get("acme") or {}).get("privateKeySecretRef") or {}).get("name")
                if not name:
                    continue
                ns = issuer["metadata"].get("namespace") or self.options.cluster_resource_namespace
                refs.append((ns, name))
        keys = []
        for ns, name in sorted(set(refs)):
            secret = kube.get_or_none(SECRET, name, ns)
            if secret is not None:  # an issuer not registered yet has no key: nothing to save
                keys.append(secret)
        return keys

    def backup(self, ctx: BackupContext) -> None:
        """Save the selected Secrets. Raises Refused when nothing is selected (unless
        ``allow_empty``), KubeAPIError subclasses when the API fails."""
        ctx.progress(f"{self.name}: listing Secrets")
        with connect_options(self.options) as kube:
            record_cluster(ctx, kube)
            secrets, counts = self.select(kube)
        if not secrets and not self.options.allow_empty:
            raise Refused(
                f"source {self.name!r} selected no Secrets ({', '.join(f'{k}: {v}' for k, v in counts.items())})",
                hint="check kubeconfig/context, 'namespaces' and 'label_selector'; set allow_empty: true if that is expected",
            )
        stripped = [strip_object(s) for s in secrets]
        stripped.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        for obj in stripped:
            obj.setdefault("apiVersion", "v1")
            obj.setdefault("kind", "Secret")
        store_objects(ctx, stripped)
        ctx.meta.update(
            {
                "kind": "kubernetes-manifests",
                "count": len(stripped),
                "counts": counts,
                "objects": [f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in stripped],
            }
        )
        if "sealed-secrets" in self.options.presets and not counts.get("sealed-secrets"):
            ctx.meta["warnings"] = ["no sealed-secrets keys found: is sealed-secrets installed?"]

    def restore(self, ctx: RestoreContext) -> RestoreResult:
        """Write manifests under ``--target``, or with ``in_place`` apply them (create or
        replace; missing namespaces are created) and report each object."""
        return restore_objects(ctx, lambda: connect_options(self.options), source_name=self.name)

    def check_restored(self, restored: Path, snapshot: Snapshot) -> CheckResult:
        """Every restored manifest parses, the count and the names match the snapshot."""
        objects = snapshot.meta.get("objects") or []
        return check_manifests(restored, expected=snapshot.meta.get("count"),
                               required=[f"secrets/{ref}.yaml" for ref in objects])
