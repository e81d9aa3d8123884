"""Source types, by the ``type:`` they have in the config file.

Classes are imported lazily: a K3s node that backs up only files never imports the
Kubernetes client.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from pydantic import ValidationError

from drkit.errors import ConfigError
from drkit.sources.base import Source

# type name -> "module:Class"
SOURCE_TYPES: dict[str, str] = {
    "files": "drkit.sources.files:FilesSource",
    "k3s-sqlite": "drkit.sources.k3s_sqlite:K3sSqliteSource",
    "k3s-etcd": "drkit.sources.k3s_etcd:K3sEtcdSource",
    "k3s-node": "drkit.sources.k3s_node:K3sNodeSource",
    "k8s-secrets": "drkit.sources.k8s_secrets:K8sSecretsSource",
    "argocd": "drkit.sources.argocd:ArgoCDSource",
    "longhorn": "drkit.sources.longhorn:LonghornSource",
    "local-path": "drkit.sources.local_path:LocalPathSource",
    "git": "drkit.sources.git:GitSource",
}


def available_types() -> list[str]:
    """Type names whose implementation is present in this installation."""
    found = []
    for name, target in SOURCE_TYPES.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            found.append(name)
    return found


def source_class(type_name: str, *, key: str = "type") -> type[Source]:
    """Return the class for *type_name*; ConfigError if unknown."""
    target = SOURCE_TYPES.get(type_name)
    if target is None or type_name not in available_types():
        raise ConfigError(
            f"unknown source type {type_name!r}",
            key=key,
            hint="known types: " + ", ".join(available_types()),
        )
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_source(spec: dict[str, Any], *, key: str) -> Source:
    """Build a Source from one raw ``sources:`` item (already has name and type)."""
    cls = source_class(spec["type"], key=f"{key}.type")
    options = {k: v for k, v in spec.items() if k not in ("name", "type")}
    try:
        parsed = cls.Options.model_validate(options)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(err["msg"], key=f"{key}.{loc}" if loc else key) from None
    return cls(spec["name"], parsed)
