"""drkit.sshconnect against a real sshd: host keys are verified (never added), and each
failure is its own class with the fingerprints and a hint."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from drkit import sshconnect
from drkit.sshconnect import HostKeyChanged, HostKeyUnknown, HostUnreachable, LoginFailed, SshEndpoint
from tests.servers.sshd import SshServer, keygen, known_hosts_line


def fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True, text=True, timeout=10).stdout
    return out.split()[1]


def endpoint(server: SshServer) -> SshEndpoint:
    return SshEndpoint(server.user, server.host, server.port)


def test_a_known_host_key_connects_and_runs(sshd: SshServer) -> None:
    client = sshconnect.connect(endpoint(sshd), known_hosts=sshd.known_hosts_file, key_files=[str(sshd.key_file)],
                                allow_agent=False, look_for_keys=False, timeout=10, keepalive=5)
    try:
        _, out, _ = client.exec_command("echo ok")
        assert out.read() == b"ok\n"
        transport = client.get_transport()
        assert transport is not None and transport.is_active()
    finally:
        client.close()


def test_an_unknown_key_is_refused_with_its_fingerprint_and_never_added(sshd: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyUnknown) as exc:
        sshconnect.connect(endpoint(sshd), known_hosts=empty, key_files=[str(sshd.key_file)], allow_agent=False,
                           look_for_keys=False, timeout=10)
    assert fingerprint(sshd.host_key_file.with_suffix(".pub")) in exc.value.message
    assert f"not in {empty}" in exc.value.message
    assert exc.value.hint and f"ssh-keyscan -p {sshd.port} {sshd.host} >> {empty}" in exc.value.hint
    assert empty.read_text() == ""


def test_a_changed_key_names_both_fingerprints(sshd: SshServer, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other_host_key")
    kh = tmp_path / "known_hosts"
    kh.write_text(known_hosts_line(sshd.host, sshd.port, other.with_suffix(".pub")))
    with pytest.raises(HostKeyChanged) as exc:
        sshconnect.connect(endpoint(sshd), known_hosts=kh, key_files=[str(sshd.key_file)], allow_agent=False,
                           look_for_keys=False, timeout=10)
    text = exc.value.message
    assert "has CHANGED" in text and "does not match" in text
    assert fingerprint(sshd.host_key_file.with_suffix(".pub")) in text and fingerprint(other.with_suffix(".pub")) in text
    assert exc.value.hint and f"ssh-keygen -f {kh} -R '[{sshd.host}]:{sshd.port}'" in exc.value.hint


def test_a_stranger_key_is_a_login_failure_naming_the_option(sshd: SshServer, tmp_path: Path) -> None:
    stranger = keygen(tmp_path / "stranger")
    with pytest.raises(LoginFailed) as exc:
        sshconnect.connect(endpoint(sshd), known_hosts=sshd.known_hosts_file, key_files=[str(stranger)],
                           allow_agent=False, look_for_keys=False, timeout=10, key_option="--identity KEYFILE")
    assert f"authentication failed for {sshd.user}@{sshd.host}:{sshd.port}" in exc.value.message
    assert exc.value.hint and "--identity KEYFILE" in exc.value.hint and "authorized_keys" in exc.value.hint


def test_a_closed_port_is_unreachable(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HostUnreachable) as exc:
        sshconnect.connect(SshEndpoint("root", "127.0.0.1", port), known_hosts=tmp_path / "none", timeout=3,
                           allow_agent=False, look_for_keys=False)
    assert exc.value.message.startswith(f"cannot reach root@127.0.0.1:{port}: ")
    assert exc.value.hint == "is the host up, sshd running, and the port right?"
