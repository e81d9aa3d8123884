"""Shared test fixtures.

- Every test runs with drkit's environment variables cleared (borg's habit), a weak
  KDF so repositories open fast, and an empty registry of secrets to redact.
- :func:`require_binary` skips a test when a program is missing locally, but fails it
  under CI (CI=true), where `.ci/run` must have installed it.
"""

from __future__ import annotations

import os
import shutil

import pytest

_DRKIT_VARS = [k for k in os.environ if k.startswith("DRKIT_")]


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


@pytest.fixture(autouse=True)
def _clean_drkit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("DRKIT_"):
            monkeypatch.delenv(key, raising=False)
    try:
        from drkit.redact import REGISTRY
        from drkit.repository import keys
    except ImportError:
        return
    monkeypatch.setattr(keys, "DEFAULT_KDF", keys.TEST_KDF)
    # Secrets registered for redaction are process-wide: one test's passphrase
    # ("wrong", say) must not mask another test's messages.
    REGISTRY.clear()
