"""Storage backends: named byte objects on a local disk, SFTP or S3.

:func:`open_storage` turns ``repository.url`` into a backend. Schemes register
themselves in :data:`SCHEMES` so that a new backend plugs in without touching callers.
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlparse

from drkit.errors import ConfigError
from drkit.storage.base import ObjectInfo, Storage, validate_name
from drkit.storage.local import LocalStorage

__all__ = ["ObjectInfo", "Storage", "validate_name", "LocalStorage", "open_storage", "SCHEMES"]


def _open_local(url: str, options: dict[str, Any]) -> Storage:
    path = urlparse(url).path if url.startswith("file://") else url
    return LocalStorage(path)


# scheme -> factory(url, repository-options) ; other modules add "s3", "sftp".
SCHEMES: dict[str, Callable[[str, dict[str, Any]], Storage]] = {
    "": _open_local,
    "file": _open_local,
}


_NEEDS = {"s3": ("boto3", "S3 storage"), "sftp": ("paramiko", "SFTP storage")}
"""scheme -> (module, what needs it): the optional extra a remote backend needs."""


def scheme_of(url: str) -> str:
    """Return the URL scheme, '' for a plain path."""
    if "://" not in url:
        return ""
    return url.split("://", 1)[0].lower()


def open_storage(url: str, options: dict[str, Any] | None = None) -> Storage:
    """Build the backend for *url*; raises ConfigError for an unknown scheme."""
    scheme = scheme_of(url)
    if scheme in _NEEDS:
        from drkit.extras import require

        require(*_NEEDS[scheme])
    factory = SCHEMES.get(scheme)
    if factory is None:
        _load_optional_backends()
        factory = SCHEMES.get(scheme)
    if factory is None:
        raise ConfigError(
            f"unsupported URL scheme {scheme!r}",
            key="repository.url",
            hint="use a local path, file://PATH, s3://BUCKET/PREFIX or sftp://USER@HOST/PATH",
        )
    return factory(url, options or {})


def _load_optional_backends() -> None:
    """Import remote backends lazily (boto3/paramiko are slow to import)."""
    import importlib

    for module in ("drkit.storage.s3", "drkit.storage.sftp"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
