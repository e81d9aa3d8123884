"""The sshd helper itself: it starts, verifies its host key, runs commands and SFTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from tests.programs import require_binary
from tests.servers.sshd import SshServer


def test_exec_and_sftp_home(sshd_server: SshServer) -> None:
    client = sshd_server.client()
    try:
        _, out, _ = client.exec_command("id -un")
        assert out.read().decode().strip() == sshd_server.user
        sftp = client.open_sftp()
        assert sftp.normalize(".") == str(sshd_server.sftp_home)
    finally:
        client.close()


def test_rejects_unknown_host_key(sshd_server: SshServer) -> None:
    sshd_server.known_hosts_file.write_text("")
    with pytest.raises(paramiko.SSHException):
        sshd_server.client()


def test_stop_is_idempotent(sshd_server: SshServer) -> None:
    sshd_server.stop()
    sshd_server.stop()
    assert not sshd_server.running


def test_sshd_goes_when_the_test_run_is_killed(tmp_path: Path) -> None:
    """A run killed with SIGKILL runs no teardown: its sshd kept listening before."""
    require_binary("sshd")
    require_binary("ssh-keygen")
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tests.servers.sshd import start_sshd\n"
        f"server = start_sshd(Path({str(tmp_path / 'work')!r}))\n"
        "print(server.process.pid, server.port, flush=True)\n"
        "time.sleep(60)\n"
    )
    (tmp_path / "work").mkdir()
    starter = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
    try:
        assert starter.stdout is not None
        pid, port = map(int, starter.stdout.readline().split())
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # listening
    finally:
        starter.kill()
        starter.wait()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "sshd outlived the killed run"


def _alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie does not: it waits for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
