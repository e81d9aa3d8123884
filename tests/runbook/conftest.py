"""Fixtures for the runbook tests: the CLI in-process, and the two kinds of target.

``target`` runs each test twice: against this host, and against a real OpenSSH sshd on
loopback (``tests.servers.sshd``) reached with paramiko, host key verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from drkit.cli import cli
from drkit.cli.app import run_cli
from tests.runbook.world import make_node
from tests.servers.sshd import SshServer


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture
def drkit(capsys: pytest.CaptureFixture[str]):
    """Run ``drkit ARGS...`` in-process; returns CliResult (exit code, stdout, stderr)."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = run_cli(cli, [str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


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
