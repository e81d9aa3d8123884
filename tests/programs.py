"""Programs the tests need: :func:`require_binary` skips a test locally when one is
missing and fails it under CI (CI=true), where `.ci/run` must have installed it."""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(*names: str) -> str:
    """Return the path of the first program found; skip (locally) or fail (CI) otherwise."""
    for name in names:
        path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
        if path:
            return path
    message = f"required program not installed: {' or '.join(names)}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must install it: see scripts/install-system-deps.sh)")
    pytest.skip(message)


def require_module(name: str, install: str) -> None:
    """Import *name* or skip (locally) / fail (CI) with how to *install* it."""
    try:
        __import__(name)
    except ImportError as exc:
        message = f"{name} is not installed ({exc}); {install}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
