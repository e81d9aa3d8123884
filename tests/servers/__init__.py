"""Real servers for tests, started on free loopback ports and torn down afterwards.

- :mod:`tests.servers.sshd`: OpenSSH ``sshd`` (``start_sshd(tmpdir) -> SshServer``).
- :mod:`tests.servers.s3`: moto's ``ThreadedMotoServer`` over real HTTP (``start_moto()``).
- :mod:`tests.servers.faults`: a TCP proxy that injects faults between a client and a server.

The pytest fixtures below skip locally and fail under CI=true when a program is missing.
Use them by importing them into a test module (``from tests.servers import sshd_server``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import require_binary
from tests.servers.sshd import SshServer, start_sshd

__all__ = ["SshServer", "sshd_server", "start_sshd"]


@pytest.fixture
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A private sshd for one test (its own host key, client key and known_hosts)."""
    require_binary("sshd")
    require_binary("ssh-keygen")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()
