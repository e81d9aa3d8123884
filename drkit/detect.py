"""What is on this node, and the drkit config that backs it up (``drkit config detect``).

Read-only. What the node's filesystem shows:

- the K3s data dir, config dir, node name and whether ``secrets-encryption`` is on, from
  every place K3s takes flags from: ``config.yaml(.d)``, the systemd unit's ``ExecStart``
  and its env files (``K3S_*``), and ``server/cred/encryption-config.json``
  (:mod:`drkit.sources.k3s_flags`); the K3s version;
- the datastore kind: ``sqlite`` (``server/db/state.db``), ``etcd`` (``server/db/etcd``
  or ``cluster-init``), ``external`` (``datastore-endpoint``: drkit cannot snapshot it);
- components auto-deployed from ``server/manifests`` (HelmChart objects).

What only the Kubernetes API shows (asked only when a kubeconfig is reachable; K3s
writes one at ``/etc/rancher/k3s/k3s.yaml``): sealed-secrets keys, Argo CD
(``argocd-cm``) and its repositories, cert-manager, Longhorn, the claims of
local-path volumes (bound, hostPath or local PVs). When the API cannot be
asked, those sources are written commented out, with the reason.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from drkit.errors import DrkitError
from drkit.sources import k3s_common as k3s
from drkit.sources import k3s_flags

COMPONENTS = ("sealed-secrets", "argocd", "cert-manager", "longhorn")
_CHART_NAMES = {
    "sealed-secrets": ("sealed-secrets",),
    "argocd": ("argo-cd", "argocd"),
    "cert-manager": ("cert-manager",),
    "longhorn": ("longhorn",),
}


@dataclass
class Component:
    """Whether one platform component is installed (None: could not tell)."""

    name: str
    installed: bool | None = None
    namespace: str | None = None
    evidence: str = ""


@dataclass
class Detection:
    """Everything ``config detect`` found."""

    data_dir: Path
    config_dir: Path
    k3s_installed: bool
    datastore: str | None
    datastore_path: Path | None
    k3s_version: str | None
    node_name: str
    secrets_encryption: bool
    k3s_running: bool
    kubeconfig: Path | None
    kube_error: str | None
    components: dict[str, Component] = field(default_factory=dict)
    git_repos: list[str] = field(default_factory=list)
    local_path_claims: list[str] = field(default_factory=list)
    """``namespace/claim -> directory`` of every bound local-path claim."""
    notes: list[str] = field(default_factory=list)
    root: Path = Path("/")
    flags: k3s_flags.NodeFlags | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "k3s_installed": self.k3s_installed,
            "k3s_version": self.k3s_version,
            "k3s_running": self.k3s_running,
            "data_dir": str(self.data_dir),
            "config_dir": str(self.config_dir),
            "datastore": self.datastore,
            "datastore_path": str(self.datastore_path) if self.datastore_path else None,
            "node_name": self.node_name,
            "secrets_encryption": self.secrets_encryption,
            "settings_from": dict(self.flags.origin) if self.flags else {},
            "kubeconfig": str(self.kubeconfig) if self.kubeconfig else None,
            "kube_error": self.kube_error,
            "components": {n: {"installed": c.installed, "namespace": c.namespace, "evidence": c.evidence}
                           for n, c in self.components.items()},
            "git_repos": self.git_repos,
            "local_path_claims": self.local_path_claims,
            "notes": self.notes,
        }


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/") if path.is_absolute() else root / path


def detect(
    *,
    root: Path = Path("/"),
    data_dir: Path | None = None,
    config_dir: Path | None = None,
    kubeconfig: Path | None = None,
    use_kube: bool = True,
    proc_root: Path | None = None,
    k3s_binary: str = "k3s",
) -> Detection:
    """Inspect the node (files under *root*; tests pass a temp dir). Never writes.

    Raises :class:`DrkitError` only for an unreadable K3s config file."""
    flags = k3s_flags.read_node_flags(root, config_dir=config_dir, data_dir=data_dir)
    config, config_dir, data_dir = flags.settings, flags.config_dir, flags.data_dir
    notes: list[str] = []
    for key in ("data-dir", "secrets-encryption", "cluster-init", "node-name", "datastore-endpoint"):
        where = flags.where(key)
        if where.startswith(("unit ", "env ")):
            notes.append(f"{key} is set in {where.split(' ', 1)[1]} (not in config.yaml)")
    server = data_dir / "server"
    k3s_installed = (server / "token").is_file()
    if not k3s_installed:
        notes.append(f"no K3s server token at {server / 'token'}: not a K3s server node (or not initialised yet)")
    datastore: str | None = None
    datastore_path: Path | None = None
    if config.get("datastore-endpoint"):
        datastore = "external"
        notes.append("K3s uses an external datastore (datastore-endpoint): back it up with its own tools; "
                     "drkit saves the token and node files")
    elif (server / "db" / "etcd").is_dir() or k3s.config_flag(config, "cluster-init"):
        datastore, datastore_path = "etcd", server / "db" / "etcd"
    elif k3s.sqlite_db_path(data_dir).is_file():
        datastore, datastore_path = "sqlite", k3s.sqlite_db_path(data_dir)
    elif k3s_installed:
        notes.append("no datastore found under server/db")
    running = k3s.find_k3s_server(proc_root or _under(root, Path("/proc")))
    det = Detection(
        data_dir=data_dir,
        config_dir=config_dir,
        k3s_installed=k3s_installed,
        datastore=datastore,
        datastore_path=datastore_path,
        k3s_version=k3s.k3s_version(k3s_binary),
        node_name=flags.node_name,
        secrets_encryption=flags.secrets_encryption,
        k3s_running=running is not None,
        kubeconfig=None,
        kube_error=None,
        components={name: Component(name) for name in COMPONENTS},
        notes=notes,
        root=root,
        flags=flags,
    )
    _from_manifests(det, server / "manifests")
    if use_kube:
        path = kubeconfig or config_dir / "k3s.yaml"  # K3s writes its admin kubeconfig there
        if path.is_file():
            det.kubeconfig = path
            _from_kube(det, path)
        else:
            det.kube_error = f"no kubeconfig at {path}"
    else:
        det.kube_error = "not asked (--no-kube)"
    return det


def _from_manifests(det: Detection, manifests: Path) -> None:
    """HelmChart objects that K3s auto-deploys from server/manifests."""
    if not manifests.is_dir():
        return
    for path in sorted(manifests.glob("*.y*ml")):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except (OSError, yaml.YAMLError):
            continue
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != "HelmChart":
                continue
            spec = doc.get("spec") or {}
            chart = str(spec.get("chart") or (doc.get("metadata") or {}).get("name") or "")
            for comp, names in _CHART_NAMES.items():
                if chart.split("/")[-1] in names:
                    c = det.components[comp]
                    c.installed = True
                    c.namespace = spec.get("targetNamespace") or c.namespace
                    c.evidence = f"HelmChart in {path}"


def _from_kube(det: Detection, kubeconfig: Path) -> None:
    """Ask the API server; any failure leaves components as they are and notes why."""
    try:
        from drkit import kube
    except ImportError as exc:  # pragma: no cover - kubernetes is a dependency
        det.kube_error = f"kubernetes client not installed: {exc}"
        return
    try:
        with kube.connect(kubeconfig) as api:
            namespaces = {n["metadata"]["name"] for n in api.list(kube.NAMESPACE)}
            keys = api.list(kube.SECRET, label_selector="sealedsecrets.bitnami.com/sealed-secrets-key")
            _set(det, "sealed-secrets", bool(keys) or "sealed-secrets" in namespaces,
                 keys[0]["metadata"]["namespace"] if keys else None,
                 f"{len(keys)} sealed-secrets key(s)" if keys else "no sealed-secrets keys")
            cms = api.list(kube.CONFIGMAP, field_selector="metadata.name=argocd-cm")
            _set(det, "argocd", bool(cms), cms[0]["metadata"]["namespace"] if cms else None,
                 "argocd-cm found" if cms else "no argocd-cm ConfigMap")
            if cms:
                ns = cms[0]["metadata"]["namespace"]
                repos = api.list(kube.SECRET, ns, label_selector="argocd.argoproj.io/secret-type=repository")
                for secret in repos:
                    url = (secret.get("data") or {}).get("url")
                    if url:
                        det.git_repos.append(base64.b64decode(url).decode("utf-8", "replace"))
            cm = "cert-manager" in namespaces
            _set(det, "cert-manager", cm, "cert-manager" if cm else None,
                 "namespace cert-manager" if cm else "no cert-manager namespace")
            lh = "longhorn-system" in namespaces
            _set(det, "longhorn", lh, "longhorn-system" if lh else None,
                 "namespace longhorn-system" if lh else "no longhorn-system namespace")
            det.local_path_claims = _local_path_claims(api)
    except DrkitError as exc:
        det.kube_error = exc.message
    except Exception as exc:  # noqa: BLE001 - detection must never crash on a broken cluster
        det.kube_error = f"{type(exc).__name__}: {exc}"


def _local_path_claims(api: Any) -> list[str]:
    """``namespace/claim -> directory`` of the claims a default ``local-path`` source takes."""
    from drkit.sources.local_path import LocalPathOptions, LocalPathSource

    selected, _ = LocalPathSource("local-path", LocalPathOptions.model_validate({})).select(api)
    return [f"{c.ref} -> {c.path}" for c in selected]


def _set(det: Detection, name: str, found: bool, namespace: str | None, evidence: str) -> None:
    c = det.components[name]
    if c.installed and not found:
        return  # a HelmChart says it is there (maybe still installing): keep that
    c.installed, c.namespace, c.evidence = found, namespace or c.namespace, evidence


# --- rendering ---------------------------------------------------------------------------

def render_config(det: Detection, *, repository_url: str = "/var/backups/drkit",
                  password_file: Path = Path("/etc/drkit/passphrase")) -> str:
    """A commented drkit config (YAML text) for the detected node."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out: list[str] = [
        f"# Written by 'drkit config detect' on {det.node_name} at {now}.",
        f"# K3s {det.k3s_version or '(version unknown: k3s binary not found)'}, data dir {det.data_dir}, "
        f"datastore: {det.datastore or 'none found'}"
        + (", secrets-encryption ON" if det.secrets_encryption else ""),
    ]
    out += [f"# note: {n}" for n in det.notes]
    out += [
        "",
        "repository:",
        "  # A backup on the node it protects is not a backup: point this at an external disk,",
        "  # sftp://USER@HOST/PATH or s3://BUCKET/PREFIX (see config/drkit.example.yaml).",
        f"  url: {_q(repository_url)}",
        "  # First line is the passphrase. Keep a copy OFF this node: without it nothing restores.",
        f"  password_file: {_q(str(password_file))}",
        "",
        "sources:",
    ]
    default_data = det.data_dir == k3s.DEFAULT_DATA_DIR
    default_conf = det.config_dir == k3s.DEFAULT_CONFIG_DIR
    if det.k3s_installed:
        out += ["  # server token, /etc/rancher/k3s, server/tls, server/cred, server/manifests:",
                "  # a datastore snapshot is useless without the token of the same run",
                "  - name: k3s-node", "    type: k3s-node"]
        if not default_data:
            out.append(f"    data_dir: {_q(str(det.data_dir))}")
        if not default_conf:
            out.append(f"    config_dir: {_q(str(det.config_dir))}")
        out += _system_file_lines(det)
    if det.datastore == "sqlite" and det.datastore_path:
        out += ["  # K3s's SQLite datastore, copied online (backup API) and integrity-checked",
                "  - name: k3s-db", "    type: k3s-sqlite"]
        if det.datastore_path != k3s.sqlite_db_path(k3s.DEFAULT_DATA_DIR):
            out.append(f"    path: {_q(str(det.datastore_path))}")
        if not default_conf:
            out.append(f"    config_dir: {_q(str(det.config_dir))}")
    elif det.datastore == "etcd":
        out += ["  # embedded etcd, snapshot through the maintenance API with K3s's etcd client certificates",
                "  - name: k3s-etcd", "    type: k3s-etcd"]
        if not default_data:
            out.append(f"    data_dir: {_q(str(det.data_dir))}")
        if not default_conf:
            out.append(f"    config_dir: {_q(str(det.config_dir))}")
    kube_lines = [f"    kubeconfig: {_q(str(det.kubeconfig))}"] if det.kubeconfig else []
    secrets_presets = [p for p in ("sealed-secrets", "cert-manager") if det.components[p].installed]
    unknown = [p for p in ("sealed-secrets", "cert-manager") if det.components[p].installed is None]
    why = f"could not ask the Kubernetes API ({det.kube_error})" if det.kube_error else ""
    if secrets_presets and det.kube_error:
        out += [f"  # {why}: uncomment once a kubeconfig works",
                "  # - name: k8s-secrets", "  #   type: k8s-secrets", f"  #   presets: [{', '.join(secrets_presets)}]"]
    elif secrets_presets:
        out += ["  # sealed-secrets keys (renewed every 30 days: saved every run) / cert-manager keys and certs",
                "  - name: k8s-secrets", "    type: k8s-secrets", f"    presets: [{', '.join(secrets_presets)}]",
                *kube_lines]
    elif unknown:
        out += [f"  # {why}: uncomment if sealed-secrets or cert-manager is installed",
                "  # - name: k8s-secrets", "  #   type: k8s-secrets", "  #   presets: [sealed-secrets, cert-manager]"]
    out += _component_block(det, "argocd", ["  - name: argocd", "    type: argocd",
                                            f"    namespace: {det.components['argocd'].namespace or 'argocd'}",
                                            *kube_lines], why,
                            "Argo CD applications, projects, settings and repository credentials")
    out += _component_block(det, "longhorn", ["  - name: longhorn", "    type: longhorn",
                                              "    number_of_replicas: 1   # single node", *kube_lines], why,
                            "Longhorn volumes (crash-consistent snapshot, encrypted and deduplicated by drkit)")
    out += _local_path_block(det, kube_lines, why)
    repos = det.git_repos or ([] if det.components["argocd"].installed is False else ["<URL of your GitOps repo>"])
    for i, url in enumerate(repos):
        out += ["  # the GitOps repository (all refs); add credentials, then uncomment:",
                "  #   ssh_key_file: /etc/drkit/gitops-deploy-key   or   token_file: /etc/drkit/gitops-token",
                f"  # - name: gitops{'' if i == 0 else f'-{i}'}", "  #   type: git", f"  #   url: {_q(url)}"]
    if not any(line.startswith("  - name:") for line in out):
        out[out.index("sources:")] = "sources: []   # nothing detected: replace [] by the sources below"
    return "\n".join(out) + "\n"


def _local_path_block(det: Detection, kube_lines: list[str], why: str) -> list[str]:
    """The ``local-path`` source: written when the API shows bound local-path claims."""
    lines = ["  - name: local-path", "    type: local-path", *kube_lines]
    if det.kube_error:
        return [f"  # {why}: uncomment if pods use local-path volumes (K3s's default storage class)",
                *[("  # " + ln[2:]) for ln in lines]]
    if not det.local_path_claims:
        return ["  # local-path: no bound local-path claims (add a 'type: local-path' source once there are)"]
    head = [f"  # local-path volumes (K3s's default storage class), {len(det.local_path_claims)} claim(s); each "
            "directory is copied file by file:", "  # see docs/sources/local-path.md (consistency, per-claim hooks)"]
    return head + [f"  #   {c}" for c in det.local_path_claims] + lines


def _system_file_lines(det: Detection) -> list[str]:
    """k3s-node options for the unit, env files and node password when they are not
    at their usual place (``--root``): the source then reads what detect read."""
    from drkit.sources.k3s_node import K3sNodeOptions

    if det.root == Path("/"):
        return []
    defaults = K3sNodeOptions.model_fields
    lines = []
    for option in ("unit_file", "unit_env_file", "default_env_file", "sysconfig_env_file", "node_password_file"):
        usual = defaults[option].default
        lines.append(f"    {option}: {_q(str(k3s_flags.under(det.root, usual)))}")
    return lines


def _component_block(det: Detection, name: str, lines: list[str], why: str, title: str) -> list[str]:
    comp = det.components[name]
    if comp.installed and det.kube_error:
        # installed, but a backup through the API would fail right now: keep the first backup green
        return [f"  # {title} ({comp.evidence}); {why}: uncomment once a kubeconfig works",
                *[("  # " + ln[2:]) for ln in lines]]
    if comp.installed:
        return [f"  # {title} ({comp.evidence})", *lines]
    if comp.installed is None:
        return [f"  # {why}: uncomment if {name} is installed", *[("  # " + ln[2:]) for ln in lines]]
    return [f"  # {name}: not installed ({comp.evidence})"]


def _q(text: str) -> str:
    """YAML-safe scalar."""
    dumped = yaml.safe_dump(text, default_flow_style=True).strip()
    return dumped.removesuffix("\n...").removesuffix("...").strip()
