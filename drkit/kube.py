"""The one home for talking to Kubernetes (official ``kubernetes`` client only).

- :func:`connect` builds an API client from a kubeconfig file and context, the
  in-cluster service account, or the client's defaults (``$KUBECONFIG``, then
  ``~/.kube/config``), and on a K3s node falls back to ``/etc/rancher/k3s/k3s.yaml``.
  ``kubernetes`` is imported lazily: it is slow to import and a node that backs up only
  files never needs it.
- :class:`Kube` offers list/get/create/replace/merge-patch/delete over plain dicts (the
  JSON the API server speaks, camelCase, as ``kubectl get -o yaml`` shows it) for core
  v1 kinds and custom resources alike, and :meth:`Kube.apply` (create, or replace what
  exists).
- every ``ApiException`` and connection failure becomes a :class:`KubeAPIError`
  subclass with a one-line message and a hint (401/403, 404, 409, 422/400/415, server
  errors, unreachable).
- :func:`strip_object` removes what ties a saved object to one cluster (uid,
  resourceVersion, creationTimestamp, managedFields, ..., status, a PV's
  ``claimRef.uid``/``resourceVersion``) so it can be re-created elsewhere.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from drkit.errors import EXIT_INTERNAL, EXIT_REFUSED, EXIT_USAGE, DrkitError, Refused
from drkit.sources.base import SourceOptions
from drkit.yamlerrors import not_valid_yaml

log = logging.getLogger(__name__)

K3S_KUBECONFIG = Path("/etc/rancher/k3s/k3s.yaml")
REQUEST_TIMEOUT = (10.0, 120.0)
"""(connect, read) seconds for every API call."""
MERGE_PATCH = "application/merge-patch+json"


# --- errors ------------------------------------------------------------------------
class KubeAPIError(DrkitError):
    """{message}"""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, *, status: int | None = None, reason: str = "", hint: str | None = None) -> None:
        self.status = status
        self.reason = reason
        super().__init__(hint=hint, message=message)


class KubeUnreachable(KubeAPIError):
    """{message}"""

    exit_code = EXIT_USAGE


class KubeAuthError(KubeAPIError):
    """{message}"""

    exit_code = EXIT_USAGE


class KubeNotFound(KubeAPIError):
    """{message}"""

    exit_code = EXIT_USAGE


class KubeConflict(KubeAPIError):
    """{message}"""

    exit_code = EXIT_REFUSED


class KubeInvalid(KubeAPIError):
    """{message}"""

    exit_code = EXIT_REFUSED


# --- options shared by every Kubernetes-facing source ------------------------------
class KubeOptions(SourceOptions):
    """Connection keys of every Kubernetes-facing source.

    - ``kubeconfig``: path of a kubeconfig file (default: ``$KUBECONFIG``, then
      ``~/.kube/config``, then K3s's ``/etc/rancher/k3s/k3s.yaml``);
    - ``context``: a context of that file (default: its current context);
    - ``in_cluster``: use the pod's service account instead (drkit running as a Job).
    """

    kubeconfig: Path | None = None
    context: str | None = Field(None, min_length=1)
    in_cluster: bool = False


# --- resources ---------------------------------------------------------------------
@dataclass(frozen=True)
class Resource:
    """One API resource: where it lives and how the client names its calls."""

    kind: str
    plural: str
    group: str = ""  # "" for core v1
    version: str = "v1"
    namespaced: bool = True
    singular_snake: str = ""  # core only: "secret", "config_map", ...

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def describe(self, name: str = "", namespace: str | None = None) -> str:
        where = f"{namespace}/{name}" if namespace and name else (name or namespace or "")
        return f"{self.kind} {where}".strip()


NAMESPACE = Resource("Namespace", "namespaces", namespaced=False, singular_snake="namespace")
SECRET = Resource("Secret", "secrets", singular_snake="secret")
CONFIGMAP = Resource("ConfigMap", "configmaps", singular_snake="config_map")
PV = Resource("PersistentVolume", "persistentvolumes", namespaced=False, singular_snake="persistent_volume")
PVC = Resource("PersistentVolumeClaim", "persistentvolumeclaims", singular_snake="persistent_volume_claim")
POD = Resource("Pod", "pods", singular_snake="pod")
STORAGE_CLASS = Resource("StorageClass", "storageclasses", "storage.k8s.io", "v1", namespaced=False)
"""Served through the generic (custom objects) calls: the path is the same for built-in groups."""

ARGO_APPLICATION = Resource("Application", "applications", "argoproj.io", "v1alpha1")
ARGO_APPPROJECT = Resource("AppProject", "appprojects", "argoproj.io", "v1alpha1")
ARGO_APPLICATIONSET = Resource("ApplicationSet", "applicationsets", "argoproj.io", "v1alpha1")
CM_ISSUER = Resource("Issuer", "issuers", "cert-manager.io", "v1")
CM_CLUSTER_ISSUER = Resource("ClusterIssuer", "clusterissuers", "cert-manager.io", "v1", namespaced=False)

LH_VOLUME = Resource("Volume", "volumes", "longhorn.io", "v1beta2")
LH_SNAPSHOT = Resource("Snapshot", "snapshots", "longhorn.io", "v1beta2")
LH_BACKUP = Resource("Backup", "backups", "longhorn.io", "v1beta2")
LH_BACKUP_VOLUME = Resource("BackupVolume", "backupvolumes", "longhorn.io", "v1beta2")
LH_VOLUME_ATTACHMENT = Resource("VolumeAttachment", "volumeattachments", "longhorn.io", "v1beta2")
LH_NODE = Resource("Node", "nodes", "longhorn.io", "v1beta2")

RESOURCES_BY_KIND = {
    (r.api_version, r.kind): r
    for r in (NAMESPACE, SECRET, CONFIGMAP, PV, PVC, POD, ARGO_APPLICATION, ARGO_APPPROJECT, ARGO_APPLICATIONSET,
              CM_ISSUER, CM_CLUSTER_ISSUER, LH_VOLUME, LH_SNAPSHOT, LH_BACKUP, LH_BACKUP_VOLUME,
              LH_VOLUME_ATTACHMENT, LH_NODE)
}


def resource_of(obj: dict[str, Any]) -> Resource:
    """The :class:`Resource` of a manifest (by apiVersion and kind); KubeInvalid if unknown."""
    key = (str(obj.get("apiVersion")), str(obj.get("kind")))
    found = RESOURCES_BY_KIND.get(key)
    if found is None:
        raise KubeInvalid(f"drkit does not handle objects of kind {key[1]} ({key[0]})")
    return found


# --- connection --------------------------------------------------------------------
def _client() -> Any:
    from drkit.extras import require

    require("kubernetes", "Kubernetes access")
    import kubernetes.client

    return kubernetes.client


def connect(kubeconfig: Path | str | None = None, context: str | None = None, in_cluster: bool = False) -> Kube:
    """Build a :class:`Kube` (no request is made yet).

    Raises :class:`KubeUnreachable` when no usable configuration is found (missing
    file, unknown context, not in a pod).
    """
    client = _client()  # first: says which extra is missing
    from kubernetes import config as kconfig
    from kubernetes.config.config_exception import ConfigException

    cfg = client.Configuration()
    try:
        if in_cluster:
            kconfig.load_incluster_config(client_configuration=cfg)
            where = "in-cluster service account"
        else:
            path = Path(kubeconfig).expanduser() if kubeconfig else None
            if path is None:
                default = Path(os.path.expanduser(kconfig.kube_config.KUBE_CONFIG_DEFAULT_LOCATION.split(os.pathsep)[0]))
                if not default.exists() and K3S_KUBECONFIG.exists():
                    path = K3S_KUBECONFIG
            if path is not None and not path.exists():
                raise KubeUnreachable(
                    f"kubeconfig {path} does not exist",
                    hint="set the source's 'kubeconfig' key to an existing file (K3s: /etc/rancher/k3s/k3s.yaml)",
                )
            kconfig.load_kube_config(
                config_file=str(path) if path else None, context=context, client_configuration=cfg,
                persist_config=False,
            )
            where = str(path) if path else "the default kubeconfig"
    except ConfigException as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KubeUnreachable(
            f"cannot load Kubernetes configuration: {first}",
            hint="set 'kubeconfig' (and 'context') on the source, or 'in_cluster: true' when drkit runs in a pod",
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise KubeUnreachable(
            f"cannot read kubeconfig: {exc}", hint="check the source's 'kubeconfig' key"
        ) from None
    log.debug("kubernetes: %s via %s", cfg.host, where)
    return Kube(client.ApiClient(cfg), server=cfg.host)


def connect_options(options: KubeOptions) -> Kube:
    """:func:`connect` with a source's connection keys."""
    return connect(options.kubeconfig, options.context, options.in_cluster)


def _status_message(body: str | bytes | None) -> tuple[str, str]:
    if not body:
        return "", ""
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        return text.strip().splitlines()[0][:300] if text.strip() else "", ""
    if isinstance(data, dict):
        return str(data.get("message", "")), str(data.get("reason", ""))
    return "", ""


@dataclass(frozen=True)
class ExecResult:
    """What a command run in a pod produced."""

    returncode: int
    stdout: str
    stderr: str


class Kube:
    """A connection to one API server, speaking plain dicts. Thread-safe like ApiClient."""

    def __init__(self, api_client: Any, *, server: str = "") -> None:
        client = _client()
        self.api_client = api_client
        self.server = server
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def close(self) -> None:
        try:
            self.api_client.close()
        except Exception as exc:  # noqa: BLE001 - closing is best effort
            log.debug("closing the Kubernetes client: %s", exc)

    def __enter__(self) -> Kube:  # noqa: PYI034 - Kube is not meant to be subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- error translation
    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call one client method with ``_preload_content=False`` and return the decoded
        JSON; translate failures (see module doc). *what* names the action in errors."""
        import pydantic
        import urllib3

        client = _client()
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except client.ApiException as exc:
            raise self._translate(what, exc.status, exc.body) from None
        except pydantic.ValidationError as exc:  # the client checks core v1 bodies itself
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"][1:]) or "body"
            raise KubeInvalid(f"cannot {what}: {where}: {err['msg']}",
                              hint="the object does not follow the Kubernetes schema (a damaged manifest?)") from None
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise KubeUnreachable(
                f"cannot reach the Kubernetes API at {self.server} while trying to {what}: {reason}",
                hint="check the kubeconfig server address and that K3s is running ('systemctl status k3s')",
            ) from None
        data = resp.data
        if not data:
            return {}
        try:
            return json.loads(data)
        except ValueError:
            raise KubeAPIError(f"the Kubernetes API answered {what} with something that is not JSON") from None

    def _translate(self, what: str, status: int | None, body: Any) -> KubeAPIError:
        message, reason = _status_message(body)
        detail = f": {message}" if message else ""
        text = f"cannot {what} (HTTP {status}{', ' + reason if reason else ''}){detail}"
        if status == 401:
            return KubeAuthError(text, status=status, reason=reason,
                                 hint="the kubeconfig's credentials were refused: check the user/token of the context")
        if status == 403:
            return KubeAuthError(text, status=status, reason=reason,
                                 hint="grant drkit's user RBAC rights for this action (see docs/sources/*.md)")
        if status == 404:
            return KubeNotFound(text, status=status, reason=reason,
                                hint="check the namespace and name; is the component (CRD) installed?")
        if status == 409:
            return KubeConflict(text, status=status, reason=reason,
                                hint="the object exists or changed meanwhile: run again")
        if status in (400, 415, 422):
            return KubeInvalid(text, status=status, reason=reason,
                               hint="the API server refused the object as drkit sent it (see the message)")
        return KubeAPIError(text, status=status, reason=reason,
                            hint="the API server failed; check its health and run again")

    # -- generic operations
    def _core(self, verb: str, res: Resource, namespaced_call: bool) -> Callable[..., Any]:
        if namespaced_call:
            return getattr(self.core, f"{verb}_namespaced_{res.singular_snake}")
        return getattr(self.core, f"{verb}_{res.singular_snake}")

    def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        """Objects of *res* in *namespace* (None: all namespaces), each with apiVersion
        and kind set. Sorted by namespace and name."""
        kw: dict[str, Any] = {}
        if label_selector:
            kw["label_selector"] = label_selector
        if field_selector:
            kw["field_selector"] = field_selector
        where = f"in namespace {namespace}" if namespace else "in all namespaces"
        what = f"list {res.plural} {where}"
        if res.group:
            if namespace and res.namespaced:
                data = self.call(what, self.custom.list_namespaced_custom_object, res.group, res.version, namespace,
                                 res.plural, **kw)
            else:
                data = self.call(what, self.custom.list_cluster_custom_object, res.group, res.version, res.plural, **kw)
        elif not res.namespaced:
            data = self.call(what, self._core("list", res, False), **kw)
        elif namespace:
            data = self.call(what, self._core("list", res, True), namespace, **kw)
        else:
            data = self.call(what, getattr(self.core, f"list_{res.singular_snake}_for_all_namespaces"), **kw)
        items = data.get("items") or []
        for item in items:
            item.setdefault("apiVersion", res.api_version)
            item.setdefault("kind", res.kind)
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items

    def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        """One object; :class:`KubeNotFound` when missing."""
        what = f"read {res.describe(name, namespace)}"
        if res.group:
            if res.namespaced:
                obj = self.call(what, self.custom.get_namespaced_custom_object, res.group, res.version, namespace,
                                res.plural, name)
            else:
                obj = self.call(what, self.custom.get_cluster_custom_object, res.group, res.version, res.plural, name)
        elif res.namespaced:
            obj = self.call(what, self._core("read", res, True), name, namespace)
        else:
            obj = self.call(what, self._core("read", res, False), name)
        obj.setdefault("apiVersion", res.api_version)
        obj.setdefault("kind", res.kind)
        return obj

    def get_or_none(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return self.get(res, name, namespace)
        except KubeNotFound:
            return None

    def create(self, res: Resource, body: dict[str, Any]) -> dict[str, Any]:
        """Create *body* (its namespace from ``metadata.namespace``). Raises
        :class:`KubeConflict` when it exists."""
        ns = body.get("metadata", {}).get("namespace")
        what = f"create {res.describe(body.get('metadata', {}).get('name', ''), ns)}"
        if res.group:
            if res.namespaced:
                return self.call(what, self.custom.create_namespaced_custom_object, res.group, res.version, ns,
                                 res.plural, body)
            return self.call(what, self.custom.create_cluster_custom_object, res.group, res.version, res.plural, body)
        if res.namespaced:
            return self.call(what, self._core("create", res, True), ns, body)
        return self.call(what, self._core("create", res, False), body)

    def replace(self, res: Resource, body: dict[str, Any]) -> dict[str, Any]:
        """Replace (PUT) an object; *body* must carry the current resourceVersion."""
        meta = body.get("metadata", {})
        ns, name = meta.get("namespace"), meta["name"]
        what = f"replace {res.describe(name, ns)}"
        if res.group:
            if res.namespaced:
                return self.call(what, self.custom.replace_namespaced_custom_object, res.group, res.version, ns,
                                 res.plural, name, body)
            return self.call(what, self.custom.replace_cluster_custom_object, res.group, res.version, res.plural,
                             name, body)
        if res.namespaced:
            return self.call(what, self._core("replace", res, True), name, ns, body)
        return self.call(what, self._core("replace", res, False), name, body)

    def merge_patch(self, res: Resource, name: str, namespace: str | None, patch: dict[str, Any]) -> dict[str, Any]:
        """Apply an RFC 7386 merge patch (custom resources refuse strategic-merge patches
        with 415; merge patches work for every kind). ``None`` values delete keys."""
        what = f"patch {res.describe(name, namespace)}"
        if res.group:
            if res.namespaced:
                return self.call(what, self.custom.patch_namespaced_custom_object, res.group, res.version, namespace,
                                 res.plural, name, patch, _content_type=MERGE_PATCH)
            return self.call(what, self.custom.patch_cluster_custom_object, res.group, res.version, res.plural, name,
                             patch, _content_type=MERGE_PATCH)
        if res.namespaced:
            return self.call(what, self._core("patch", res, True), name, namespace, patch, _content_type=MERGE_PATCH)
        return self.call(what, self._core("patch", res, False), name, patch, _content_type=MERGE_PATCH)

    def merge_patch_status(self, res: Resource, name: str, namespace: str | None,
                           patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the ``status`` subresource of a namespaced custom resource (what a
        controller writes; ``spec`` in *patch* is ignored by the server)."""
        if not (res.group and res.namespaced):
            raise KubeInvalid(f"drkit patches the status of namespaced custom resources only, not {res.kind}")
        return self.call(f"patch the status of {res.describe(name, namespace)}",
                         self.custom.patch_namespaced_custom_object_status, res.group, res.version, namespace,
                         res.plural, name, patch, _content_type=MERGE_PATCH)

    def delete(self, res: Resource, name: str, namespace: str | None = None, *, missing_ok: bool = False) -> None:
        """Delete one object. With *missing_ok*, a missing object is not an error."""
        what = f"delete {res.describe(name, namespace)}"
        try:
            if res.group:
                if res.namespaced:
                    self.call(what, self.custom.delete_namespaced_custom_object, res.group, res.version, namespace,
                              res.plural, name)
                else:
                    self.call(what, self.custom.delete_cluster_custom_object, res.group, res.version, res.plural, name)
            elif res.namespaced:
                self.call(what, self._core("delete", res, True), name, namespace)
            else:
                self.call(what, self._core("delete", res, False), name)
        except KubeNotFound:
            if not missing_ok:
                raise

    def exec(self, namespace: str, pod: str, command: Sequence[str], *, container: str | None = None,
             timeout: float = 300.0) -> ExecResult:
        """Run *command* in a pod's container through the API (``pods/exec``) and wait.

        Returns the exit status and output; raises :class:`KubeNotFound`/:class:`KubeInvalid`
        (no such pod or container, pod not running), :class:`KubeAPIError` on a timeout
        or a broken stream. Does not raise on a non-zero exit: check ``returncode``.
        """
        from kubernetes.stream import stream

        client = _client()
        what = f"exec {command[0]!r} in pod {namespace}/{pod}"
        kw: dict[str, Any] = {"command": [str(c) for c in command], "stderr": True, "stdin": False, "stdout": True, "tty": False,
                              "_preload_content": False}
        if container:
            kw["container"] = container
        try:
            ws = stream(self.core.connect_get_namespaced_pod_exec, pod, namespace, **kw)
        except client.ApiException as exc:
            status, body = exc.status, exc.body
            if not status:  # the websocket handshake failed: "Handshake status 404 Not Found -+-+- {...}"
                reason = str(exc.reason or "")
                m = re.search(r"Handshake status (\d+)", reason)
                status = int(m.group(1)) if m else None
                body = reason.split("-+-+-")[-1].strip() if reason.count("-+-+-") >= 2 else None
            raise self._translate(what, status, body) from None
        try:
            ws.run_forever(timeout=timeout)
            if ws.is_open():
                raise KubeAPIError(f"cannot {what}: no result after {timeout:g}s",
                                   hint="the command may still run in the pod; raise the hook's timeout")
            out = ws.read_channel(1)
            err = ws.read_channel(2)
            rc = ws.returncode
        finally:
            ws.close()
        return ExecResult(int(rc), out if isinstance(out, str) else str(out), err if isinstance(err, str) else str(err))

    def server_version(self) -> str:
        """The API server's ``gitVersion`` (e.g. ``v1.31.4+k3s1``)."""
        client = _client()
        data = self.call("read the server version", client.VersionApi(self.api_client).get_code)
        return str(data.get("gitVersion", ""))

    def ensure_namespace(self, name: str) -> bool:
        """Create namespace *name* if missing. Returns True when it was created."""
        if self.get_or_none(NAMESPACE, name) is not None:
            return False
        try:
            self.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        except KubeConflict:
            return False
        return True

    def apply(self, obj: dict[str, Any]) -> str:
        """Create *obj*, or replace the existing object of that name with it.

        *obj* should be stripped (:func:`strip_object`). Returns ``"created"`` or
        ``"replaced"``. Idempotent. The namespace must exist.
        """
        res = resource_of(obj)
        body = copy.deepcopy(obj)
        try:
            self.create(res, body)
            return "created"
        except KubeConflict:
            pass
        meta = body["metadata"]
        current = self.get(res, meta["name"], meta.get("namespace"))
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        self.replace(res, body)
        return "replaced"


# --- claims in use -----------------------------------------------------------------
TERMINAL_POD_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class ClaimUser:
    """A pod that mounts a PersistentVolumeClaim, and what owns it."""

    namespace: str
    pod: str
    phase: str
    owners: tuple[str, ...]
    """``Kind name`` of each owner (a ReplicaSet's Deployment is named when the pod's
    ``pod-template-hash`` label shows it)."""

    def describe(self) -> str:
        owned = f" ({', '.join(self.owners)})" if self.owners else " (no owner)"
        return f"pod {self.namespace}/{self.pod}{owned}"


def _owners(pod: dict[str, Any]) -> tuple[str, ...]:
    meta = pod.get("metadata") or {}
    hash_label = (meta.get("labels") or {}).get("pod-template-hash", "")
    out = []
    for ref in meta.get("ownerReferences") or []:
        kind, name = str(ref.get("kind", "?")), str(ref.get("name", "?"))
        if kind == "ReplicaSet" and hash_label and name.endswith(f"-{hash_label}"):
            out.append(f"Deployment {name[: -len(hash_label) - 1]} (ReplicaSet {name})")
        else:
            out.append(f"{kind} {name}")
    return tuple(out)


def pods_using_claim(kube: Kube, namespace: str, claim: str) -> list[ClaimUser]:
    """The pods of *namespace* that mount PVC *claim*, sorted by name.

    A pod counts while it is not in a terminal phase (Succeeded, Failed): running,
    pending (it mounts the claim as soon as it is scheduled) or unknown. These are the
    pods that keep a deleted claim ``Terminating`` (``kubernetes.io/pvc-protection``)
    and that would attach a volume while it is being rewritten. Read-only; needs
    ``list`` on pods in *namespace*.
    """
    users = []
    for pod in kube.list(POD, namespace):
        phase = str((pod.get("status") or {}).get("phase") or "Pending")
        if phase in TERMINAL_POD_PHASES:
            continue
        for vol in (pod.get("spec") or {}).get("volumes") or []:
            if ((vol or {}).get("persistentVolumeClaim") or {}).get("claimName") == claim:
                users.append(ClaimUser(namespace, pod["metadata"]["name"], phase, _owners(pod)))
                break
    return users


def refuse_if_claim_in_use(kube: Kube, namespace: str, claim: str, *, action: str) -> None:
    """Raise :class:`~drkit.errors.Refused` naming every pod (and its owners) that
    mounts PVC *namespace*/*claim*; return when none does. *action* says what was
    not done (``"replacing it"``). Call it before any change to the claim, its PV or
    its volume: a claim deleted under a running pod stays Terminating and goes (with
    its PV, under reclaim policy Delete) the moment the pod stops."""
    users = pods_using_claim(kube, namespace, claim)
    if not users:
        return
    owners = sorted({o.split(" (")[0] for u in users for o in u.owners})
    scale = f" (e.g. kubectl -n {namespace} scale {owners[0].replace(' ', '/').lower()} --replicas=0)" \
        if owners and not owners[0].startswith(("ReplicaSet", "Job", "Node")) else ""
    raise Refused(
        f"PVC {namespace}/{claim} is mounted by {', '.join(u.describe() for u in users)}: not {action}",
        hint=f"scale the owners down{scale}, wait until the pods are gone, then run again",
    )


# --- manifests ---------------------------------------------------------------------
CLUSTER_METADATA = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "managedFields",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
CLUSTER_ANNOTATIONS = (
    "kubectl.kubernetes.io/last-applied-configuration",
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
)
SERVER_FINALIZERS = ("kubernetes.io/pv-protection", "kubernetes.io/pvc-protection")


def strip_object(obj: dict[str, Any], *, keep_owner_references: bool = False, keep_status: bool = False) -> dict[str, Any]:
    """A copy of *obj* fit to be created on another (or a rebuilt) cluster.

    Removes metadata the server assigns (:data:`CLUSTER_METADATA`), the annotations
    in :data:`CLUSTER_ANNOTATIONS`, finalizers the server adds itself, ``status``
    (unless *keep_status*), ``ownerReferences`` (their uids point at objects of the old
    cluster; keep them with *keep_owner_references*), and a PV's
    ``spec.claimRef.uid``/``resourceVersion`` (a stale uid makes the PV Released, and
    with reclaim policy Delete Longhorn deletes the volume). Pure function.
    """
    out = copy.deepcopy(obj)
    meta = out.setdefault("metadata", {})
    for key in CLUSTER_METADATA:
        meta.pop(key, None)
    if not keep_owner_references:
        meta.pop("ownerReferences", None)
    annotations = meta.get("annotations") or {}
    for key in CLUSTER_ANNOTATIONS:
        annotations.pop(key, None)
    if not annotations:
        meta.pop("annotations", None)
    if not meta.get("labels"):
        meta.pop("labels", None)
    finalizers = [f for f in meta.get("finalizers") or [] if f not in SERVER_FINALIZERS]
    if finalizers:
        meta["finalizers"] = finalizers
    else:
        meta.pop("finalizers", None)
    if not keep_status:
        out.pop("status", None)
    if out.get("kind") == "PersistentVolume":
        ref = (out.get("spec") or {}).get("claimRef")
        if isinstance(ref, dict):
            ref.pop("uid", None)
            ref.pop("resourceVersion", None)
    return out


def dump_manifest(obj: dict[str, Any]) -> bytes:
    """YAML of one object, keys in the order kubectl shows them. Deterministic."""
    order = ["apiVersion", "kind", "metadata", "type", "immutable", "spec", "data", "stringData", "binaryData"]
    ordered = {k: obj[k] for k in order if k in obj}
    ordered.update({k: v for k, v in obj.items() if k not in ordered})
    return yaml.safe_dump(ordered, sort_keys=False, default_flow_style=False, allow_unicode=True).encode()


def load_manifest(data: bytes, *, name: str = "manifest") -> dict[str, Any]:
    """Parse one saved manifest; KubeInvalid when it is not a Kubernetes object."""
    try:
        obj = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise KubeInvalid(not_valid_yaml(exc, name)) from None
    if not isinstance(obj, dict) or not obj.get("kind") or not isinstance(obj.get("metadata"), dict):
        raise KubeInvalid(f"{name} is not a Kubernetes object (no kind/metadata)")
    return obj


def manifest_path(obj: dict[str, Any]) -> str:
    """The logical path a manifest is stored under: ``<plural>/<namespace>/<name>.yaml``
    (cluster-scoped: ``<plural>/<name>.yaml``)."""
    res = RESOURCES_BY_KIND.get((str(obj.get("apiVersion")), str(obj.get("kind"))))
    plural = res.plural if res else str(obj.get("kind", "object")).lower() + "s"
    meta = obj["metadata"]
    if meta.get("namespace"):
        return f"{plural}/{meta['namespace']}/{meta['name']}.yaml"
    return f"{plural}/{meta['name']}.yaml"


def object_ref(obj: dict[str, Any]) -> str:
    """``Kind namespace/name`` for messages."""
    meta = obj.get("metadata", {})
    where = f"{meta['namespace']}/{meta.get('name', '')}" if meta.get("namespace") else meta.get("name", "")
    return f"{obj.get('kind', '?')} {where}"


def unique(objs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop duplicates (same kind, namespace and name), keeping the first. Stable."""
    seen: set[tuple[str, str, str]] = set()
    out = []
    for o in objs:
        key = (o.get("kind", ""), o["metadata"].get("namespace", ""), o["metadata"]["name"])
        if key not in seen:
            seen.add(key)
            out.append(o)
    return out
