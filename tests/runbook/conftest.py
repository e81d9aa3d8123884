"""Fixtures for the runbook tests: the CLI in-process, and the two kinds of target.

``target`` runs each test twice: against this host, and against a real OpenSSH sshd on
loopback (``tests.servers.sshd``) reached with paramiko, host key verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.runbook.world import make_node
from tests.servers.sshd import SshServer


@dataclass
class Target:
    kind: str
    args: list[str]
    server: SshServer | None = None


@pytest.fixture(params=["local", "ssh"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    if request.param == "local":
        yield Target("local", [])
        return
    server: SshServer = request.getfixturevalue("sshd_server")
    yield Target(
        "ssh",
        ["--target", f"{server.user}@{server.host}:{server.port}", "--identity", str(server.key_file),
         "--known-hosts", str(server.known_hosts_file)],
        server,
    )


@pytest.fixture
def node(tmp_path: Path) -> dict:
    """See :func:`tests.runbook.world.make_node`."""
    return make_node(tmp_path)
