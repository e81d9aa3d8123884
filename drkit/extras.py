"""Optional extras: the third-party clients only some setups need.

::

    pip install 'drkit[s3]'     boto3       S3 storage
    pip install 'drkit[sftp]'   paramiko    SFTP storage; runbook steps on a host over SSH
    pip install 'drkit[k8s]'    kubernetes  sources and runbook steps that use the Kubernetes API
    pip install 'drkit[all]'    all three (what a K3s node backing up offsite wants)

Every import of these packages is already inside the function that needs it, so a
drkit without them runs everything else. Where one is first needed, :func:`require`
turns its absence into one line naming the extra (exit 2), not a traceback.
"""

from __future__ import annotations

import importlib

from drkit.errors import MissingExtra

EXTRAS = {"boto3": "s3", "paramiko": "sftp", "kubernetes": "k8s"}
"""Top-level module -> the extra that installs it."""


def require(module: str, needed_for: str) -> None:
    """Import *module* (one of :data:`EXTRAS`); MissingExtra naming the extra if it is
    not installed. A module that is installed but fails inside its own imports is not
    hidden: that ImportError propagates as it is."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        if exc.name not in (module, None) and not str(exc.name).startswith(module + "."):
            raise
        extra = EXTRAS[module]
        raise MissingExtra(what=needed_for, module=module, hint=f"install it with: pip install 'drkit[{extra}]' (or 'drkit[all]')") from None
