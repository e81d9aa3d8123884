"""Shared test fixtures.

- Every test runs with drkit's environment variables cleared (borg's habit), a weak
  KDF so repositories open fast, and an empty registry of secrets to redact.
- :func:`require_binary` (from :mod:`tests.programs`) skips a test when a program is
  missing locally, but fails it under CI (CI=true), where `.ci/run` must have installed it.
- The real servers (moto S3, sshd, etcd) and the fake Kubernetes API are fixtures defined
  once, in :mod:`tests.servers` and :mod:`tests.fakes.kube_api`, and offered here to
  every test.
"""

from __future__ import annotations

import os

import pytest

from tests.cli import Runner, invoke
from tests.fakes.kube_api import fake_kube  # noqa: F401 - fixture
from tests.programs import require_binary  # noqa: F401 - tests import it from here
from tests.servers import moto_server, sshd, sshd_server  # noqa: F401 - fixtures
from tests.servers.etcd import etcd_server, etcd_tls_server  # noqa: F401 - fixtures


@pytest.fixture(autouse=True)
def _clean_drkit_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    for key in list(os.environ):
        if key.startswith("DRKIT_"):
            monkeypatch.delenv(key, raising=False)
    # Each test its own state directory (host id, what was seen of repositories),
    # never /var/lib/drkit or ~/.local/state.
    monkeypatch.setenv("DRKIT_STATE_DIR", str(tmp_path_factory.mktemp("drkit-state")))
    monkeypatch.setenv("DRKIT_CACHE_DIR", str(tmp_path_factory.mktemp("drkit-cache")))
    try:
        from drkit.repository import locks
    except ImportError:
        pass
    else:
        locks.configure(None)
    try:
        from drkit.redact import REGISTRY
        from drkit.repository import keys
    except ImportError:
        return
    monkeypatch.setattr(keys, "DEFAULT_KDF", keys.TEST_KDF)
    # Secrets registered for redaction are process-wide: one test's passphrase
    # ("wrong", say) must not mask another test's messages.
    REGISTRY.clear()


@pytest.fixture
def drkit() -> Runner:
    """``drkit(*args, env={...})``: run the CLI in this process (see :mod:`tests.cli`)."""
    return invoke
