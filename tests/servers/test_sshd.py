"""The sshd helper itself: it starts, verifies its host key, runs commands and SFTP."""

from __future__ import annotations

import paramiko
import pytest

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
