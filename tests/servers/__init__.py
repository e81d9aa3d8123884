"""Real servers for tests, started on free loopback ports and torn down afterwards.

- :mod:`tests.servers.sshd`: OpenSSH ``sshd`` (``start_sshd(tmpdir) -> SshServer``).
- :mod:`tests.servers.s3`: moto's ``ThreadedMotoServer`` over real HTTP (``start_moto()``).
- :mod:`tests.servers.etcd`: a real etcd, plain or TLS.
- :mod:`tests.servers.faults`: a TCP proxy that injects faults between a client and a server.

The pytest fixtures below (and etcd's) are the only ones of their kind; ``tests/conftest.py``
offers them to every test. They skip locally and fail under CI=true when a program is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.programs import require_binary, require_module
from tests.servers.s3 import MotoServer, start_moto
from tests.servers.sshd import SshServer, start_sshd

__all__ = ["MotoServer", "SshServer", "moto_server", "sshd", "sshd_server", "start_moto", "start_sshd"]


def _serve_sshd(workdir: Path) -> Iterator[SshServer]:
    require_binary("sshd")
    require_binary("ssh-keygen")
    server = start_sshd(workdir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A private sshd for one test (its own host key, client key and known_hosts)."""
    yield from _serve_sshd(tmp_path_factory.mktemp("sshd"))


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """One sshd shared by the session (tests that only need somewhere to connect)."""
    yield from _serve_sshd(tmp_path_factory.mktemp("sshd-session"))


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto's S3 server over real HTTP on a free loopback port (one per session)."""
    require_module("moto.server", "pip install -e '.[test]'")
    server = start_moto()  # raises (fails the tests) if it cannot serve
    try:
        yield server
    finally:
        server.stop()
