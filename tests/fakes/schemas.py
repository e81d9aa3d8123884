"""Schemas the FAKE Kubernetes API server validates against (test support only).

- Longhorn: the real CRDs of Longhorn v1.12.1 (``longhorn-crds.yaml`` next to this file,
  a verbatim copy of the shared ``schemas/longhorn-crds.yaml``: all 25 kinds with their
  ``openAPIV3Schema``), converted to JSON Schema for ``jsonschema``.
- core v1 (Namespace, Secret, ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod),
  storage.k8s.io/v1 StorageClass and Argo CD (Application, AppProject, ApplicationSet) and cert-manager (Issuer,
  ClusterIssuer): hand-written *subsets* of the real schemas. They list every field
  drkit or the tests write, with the real names, types and required fields; parts drkit
  never writes are open (``x-kubernetes-preserve-unknown-fields``).

Structural-schema facts honoured (see :func:`unknown_fields`): a field not declared in
the schema is *unknown*; the real API server prunes it silently (``fieldValidation``
``Ignore``), prunes with a warning (``Warn``, the default since 1.27) or rejects the
request (``Strict``). ``metadata`` is never pruned by a CRD schema; it is checked
against ObjectMeta instead.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

LONGHORN_CRDS = Path(__file__).with_name("longhorn-crds.yaml")

OPEN: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
STR: dict[str, Any] = {"type": "string"}
BOOL: dict[str, Any] = {"type": "boolean"}
INT: dict[str, Any] = {"type": "integer"}
STR_MAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
STR_LIST: dict[str, Any] = {"type": "array", "items": {"type": "string"}}


def obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


OBJECT_META = obj(
    {
        "name": STR,
        "generateName": STR,
        "namespace": STR,
        "labels": STR_MAP,
        "annotations": STR_MAP,
        "uid": STR,
        "resourceVersion": STR,
        "creationTimestamp": {"type": ["string", "null"]},
        "deletionTimestamp": {"type": ["string", "null"]},
        "deletionGracePeriodSeconds": INT,
        "generation": INT,
        "finalizers": STR_LIST,
        "ownerReferences": {"type": "array", "items": OPEN},
        "managedFields": {"type": "array", "items": OPEN},
        "selfLink": STR,
    }
)


def top(kind_props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    props = {"apiVersion": STR, "kind": STR, "metadata": {"type": "object"}}
    props.update(kind_props)
    return obj(props, required)


QUANTITY_MAP = {"type": "object", "additionalProperties": {"type": ["string", "integer"]}}

SECRET = top({"data": STR_MAP, "stringData": STR_MAP, "type": STR, "immutable": BOOL})
CONFIGMAP = top({"data": STR_MAP, "binaryData": STR_MAP, "immutable": BOOL})
NAMESPACE = top({"spec": obj({"finalizers": STR_LIST}), "status": OPEN})

_SECRET_REF = obj({"name": STR, "namespace": STR})
_NODE_SELECTOR_REQUIREMENT = obj(
    {"key": STR, "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]},
     "values": STR_LIST},
    ["key", "operator"],
)
_VOLUME_NODE_AFFINITY = obj(
    {
        "required": obj(
            {"nodeSelectorTerms": {"type": "array", "items": obj({
                "matchExpressions": {"type": "array", "items": _NODE_SELECTOR_REQUIREMENT},
                "matchFields": {"type": "array", "items": _NODE_SELECTOR_REQUIREMENT},
            })}},
            ["nodeSelectorTerms"],
        ),
    }
)
PERSISTENT_VOLUME = top(
    {
        "spec": obj(
            {
                "capacity": QUANTITY_MAP,
                "accessModes": STR_LIST,
                "persistentVolumeReclaimPolicy": {"type": "string", "enum": ["Retain", "Delete", "Recycle"]},
                "storageClassName": STR,
                "volumeMode": {"type": "string", "enum": ["Filesystem", "Block"]},
                "mountOptions": STR_LIST,
                "nodeAffinity": _VOLUME_NODE_AFFINITY,
                "volumeAttributesClassName": STR,
                "claimRef": obj(
                    {
                        "apiVersion": STR,
                        "kind": STR,
                        "namespace": STR,
                        "name": STR,
                        "uid": STR,
                        "resourceVersion": STR,
                        "fieldPath": STR,
                    }
                ),
                "csi": obj(
                    {
                        "driver": STR,
                        "volumeHandle": STR,
                        "fsType": STR,
                        "readOnly": BOOL,
                        "volumeAttributes": STR_MAP,
                        "controllerPublishSecretRef": _SECRET_REF,
                        "nodeStageSecretRef": _SECRET_REF,
                        "nodePublishSecretRef": _SECRET_REF,
                        "controllerExpandSecretRef": _SECRET_REF,
                        "nodeExpandSecretRef": _SECRET_REF,
                    },
                    ["driver", "volumeHandle"],
                ),
                "hostPath": obj({"path": STR, "type": {"type": "string", "enum": [
                    "", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice",
                    "BlockDevice"]}}, ["path"]),
                "local": obj({"path": STR, "fsType": STR}, ["path"]),
                "nfs": obj({"server": STR, "path": STR, "readOnly": BOOL}, ["server", "path"]),
            }
        ),
        "status": OPEN,
    }
)
PERSISTENT_VOLUME_CLAIM = top(
    {
        "spec": obj(
            {
                "accessModes": STR_LIST,
                "resources": obj({"requests": QUANTITY_MAP, "limits": QUANTITY_MAP}),
                "storageClassName": {"type": ["string", "null"]},
                "volumeName": STR,
                "volumeMode": {"type": "string", "enum": ["Filesystem", "Block"]},
                "selector": OPEN,
                "dataSource": OPEN,
                "dataSourceRef": OPEN,
                "volumeAttributesClassName": STR,
            }
        ),
        "status": OPEN,
    }
)

POD = top(
    {
        "spec": obj(
            {
                "containers": {"type": "array", "items": obj({"name": STR, "image": STR, "command": STR_LIST,
                                                               "args": STR_LIST, "volumeMounts": {"type": "array",
                                                                                                  "items": OPEN}},
                                                              ["name"])},
                "volumes": {"type": "array", "items": OPEN},
                "nodeName": STR,
            },
            ["containers"],
        ),
        "status": OPEN,
    }
)

# storage.k8s.io/v1 StorageClass: no spec, its fields sit at the top level
STORAGE_CLASS = top(
    {
        "provisioner": STR,
        "parameters": STR_MAP,
        "reclaimPolicy": {"type": "string", "enum": ["Retain", "Delete", "Recycle"]},
        "volumeBindingMode": {"type": "string", "enum": ["Immediate", "WaitForFirstConsumer"]},
        "allowVolumeExpansion": BOOL,
        "mountOptions": STR_LIST,
        "allowedTopologies": {"type": "array", "items": OPEN},
    },
    ["provisioner"],
)

# --- Argo CD (argoproj.io/v1alpha1), a subset of the real CRDs -----------------------
_DESTINATION = obj({"server": STR, "name": STR, "namespace": STR})
_APP_SOURCE = obj(
    {
        "repoURL": STR,
        "path": STR,
        "targetRevision": STR,
        "chart": STR,
        "ref": STR,
        "name": STR,
        "helm": OPEN,
        "kustomize": OPEN,
        "directory": OPEN,
        "plugin": OPEN,
    },
    ["repoURL"],
)
_SYNC_POLICY = obj(
    {
        "automated": obj({"prune": BOOL, "selfHeal": BOOL, "allowEmpty": BOOL, "enabled": BOOL}),
        "syncOptions": STR_LIST,
        "retry": OPEN,
        "managedNamespaceMetadata": OPEN,
    }
)
_APP_SPEC = obj(
    {
        "project": STR,
        "destination": _DESTINATION,
        "source": _APP_SOURCE,
        "sources": {"type": "array", "items": _APP_SOURCE},
        "syncPolicy": _SYNC_POLICY,
        "ignoreDifferences": {"type": "array", "items": OPEN},
        "info": {"type": "array", "items": OPEN},
        "revisionHistoryLimit": INT,
        "sourceHydrator": OPEN,
    },
    ["destination", "project"],
)
APPLICATION = top({"spec": _APP_SPEC, "operation": OPEN, "status": OPEN}, ["metadata", "spec"])
APPPROJECT = top(
    {
        "spec": obj(
            {
                "description": STR,
                "sourceRepos": STR_LIST,
                "destinations": {"type": "array", "items": _DESTINATION},
                "clusterResourceWhitelist": {"type": "array", "items": OPEN},
                "clusterResourceBlacklist": {"type": "array", "items": OPEN},
                "namespaceResourceWhitelist": {"type": "array", "items": OPEN},
                "namespaceResourceBlacklist": {"type": "array", "items": OPEN},
                "roles": {"type": "array", "items": OPEN},
                "orphanedResources": OPEN,
                "syncWindows": {"type": "array", "items": OPEN},
                "signatureKeys": {"type": "array", "items": OPEN},
                "sourceNamespaces": STR_LIST,
                "permitOnlyProjectScopedClusters": BOOL,
                "destinationServiceAccounts": {"type": "array", "items": OPEN},
            }
        ),
        "status": OPEN,
    },
    ["metadata", "spec"],
)
APPLICATIONSET = top(
    {
        "spec": obj(
            {
                "generators": {"type": "array", "items": OPEN},
                "template": obj({"metadata": OPEN, "spec": _APP_SPEC}, ["metadata", "spec"]),
                "syncPolicy": obj({"preserveResourcesOnDeletion": BOOL, "applicationsSync": STR}),
                "goTemplate": BOOL,
                "goTemplateOptions": STR_LIST,
                "strategy": OPEN,
                "preservedFields": OPEN,
                "ignoreApplicationDifferences": {"type": "array", "items": OPEN},
                "templatePatch": STR,
            },
            ["generators", "template"],
        ),
        "status": OPEN,
    },
    ["metadata", "spec"],
)
CERT_MANAGER_ISSUER = top({"spec": OPEN, "status": OPEN}, ["spec"])

# --- what kubectl in the runbooks touches: core Node, apps/v1 workloads (subsets) -----
NODE = top({"spec": OPEN, "status": OPEN})
_POD_TEMPLATE = obj({"metadata": OPEN, "spec": OPEN})
_WORKLOAD_SPEC = {"replicas": INT, "selector": OPEN, "template": _POD_TEMPLATE, "strategy": OPEN,
                  "revisionHistoryLimit": INT, "minReadySeconds": INT, "progressDeadlineSeconds": INT, "paused": BOOL}
DEPLOYMENT = top({"spec": obj(_WORKLOAD_SPEC, ["selector", "template"]), "status": OPEN}, ["spec"])
STATEFULSET = top({"spec": obj({**_WORKLOAD_SPEC, "serviceName": STR, "volumeClaimTemplates": {"type": "array",
                                                                                               "items": OPEN},
                                "podManagementPolicy": STR, "updateStrategy": OPEN,
                                "persistentVolumeClaimRetentionPolicy": OPEN}, ["selector", "template"]),
                   "status": OPEN}, ["spec"])


# --- Longhorn: the real CRDs -----------------------------------------------------------
@functools.lru_cache(maxsize=1)
def longhorn_crds() -> dict[str, dict[str, Any]]:
    """kind -> {"plural", "schema" (openAPIV3Schema, raw), "status_subresource"}."""
    out: dict[str, dict[str, Any]] = {}
    for doc in yaml.safe_load_all(LONGHORN_CRDS.read_text()):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        version = next(v for v in spec["versions"] if v["name"] == "v1beta2")
        out[spec["names"]["kind"]] = {
            "plural": spec["names"]["plural"],
            "schema": version["schema"]["openAPIV3Schema"],
            "status_subresource": "status" in (version.get("subresources") or {}),
            "namespaced": spec["scope"] == "Namespaced",
        }
    return out


def to_jsonschema(schema: dict[str, Any]) -> dict[str, Any]:
    """Convert an OpenAPI v3 structural schema to JSON Schema (draft 7 vocabulary).

    ``nullable: true`` becomes a ``null`` alternative; ``x-kubernetes-*`` extensions and
    descriptions are dropped (pruning is done separately by :func:`unknown_fields`).
    """
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes") or key in ("description", "nullable", "format"):
            continue
        if key == "properties":
            out[key] = {k: to_jsonschema(v) for k, v in value.items()}
        elif key in ("additionalProperties", "items") and isinstance(value, dict):
            out[key] = to_jsonschema(value)
        else:
            out[key] = copy.deepcopy(value)
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable"):
        if "type" in out:
            types = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = types + ["null"]
        if "enum" in out:
            out["enum"] = list(out["enum"]) + [None]
    return out


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "", *, prune: bool = False) -> list[str]:
    """Paths of fields *value* has that *schema* does not declare (structural pruning).

    With ``prune=True`` they are also removed from *value* in place. The top-level
    ``metadata`` is skipped (ObjectMeta is validated on its own).
    """
    found: list[str] = []
    if schema.get("x-kubernetes-preserve-unknown-fields") or value is None:
        return found
    if isinstance(value, dict) and schema.get("type", "object") == "object":
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        for key in list(value):
            child_path = f"{path}.{key}"
            if path == "" and key == "metadata":
                continue
            if props is not None and key in props:
                found += unknown_fields(value[key], props[key], child_path, prune=prune)
            elif isinstance(addl, dict):
                found += unknown_fields(value[key], addl, child_path, prune=prune)
            elif addl is True:
                continue
            else:
                found.append(child_path)
                if prune:
                    del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]", prune=prune)
    return found


def prune_nulls(value: Any, schema: dict[str, Any]) -> None:
    """Drop ``null`` values of fields whose schema is not ``nullable`` (in place), as
    the API server does before defaulting and validation."""
    if schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties"):
        return
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties")
        for key in list(value):
            child = props.get(key) if key in props else (addl if isinstance(addl, dict) else None)
            if child is None:
                continue
            if value[key] is None and not child.get("nullable"):
                del value[key]
            else:
                prune_nulls(value[key], child)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            prune_nulls(item, schema["items"])
