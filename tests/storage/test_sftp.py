"""SFTP backend specifics against a real OpenSSH sshd: URLs, ssh config aliases, host key
checks, authentication, permissions, file modes, full disk, reconnects."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from drkit.errors import (
    ConfigError,
    ObjectNotFound,
    StorageError,
    StorageFull,
    TransientStorageError,
)
from drkit.storage import open_storage
from drkit.storage.observe import wrap_storage
from drkit.storage.sftp import SftpStorage, parse_options, parse_url
from tests.conftest import require_binary
from tests.servers.sshd import SshServer, keygen, known_hosts_line, start_sshd
from tests.storage.conftest import FAST_RETRY, sftp_options


def fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


@pytest.mark.parametrize(
    "url,expected",
    [
        ("sftp://backup@nas:2222/srv/drkit", ("backup", "nas", 2222, "/srv/drkit")),
        ("sftp://backup@nas/srv/drkit/", ("backup", "nas", None, "/srv/drkit")),
        ("sftp://nas/~/drkit", (None, "nas", None, "~/drkit")),
        ("sftp://b%40x@[::1]:22/~/r", ("b@x", "::1", 22, "~/r")),
    ],
)
def test_url_parsing(url: str, expected: tuple) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["sftp://u:pw@nas/srv", "sftp://nas", "sftp://nas/", "sftp://nas/~", "sftp://nas/~other/x", "sftp://nas/srv/../etc", "sftp://nas:99999/x", "ssh://nas/x"],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_url(url)
    assert exc.value.key == "repository.url" and exc.value.exit_code == 2


def test_bad_option_names_the_key() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_options({"keyfile": "/x"})
    assert exc.value.key == "repository.sftp.keyfile"
    with pytest.raises(ConfigError) as exc:
        parse_options({"port": 0})
    assert exc.value.key == "repository.sftp.port"


def test_absolute_path_modes_and_no_temporaries(sshd: SshServer, tmp_path: Path) -> None:
    root = sshd.workdir / f"abs-{os.getpid()}-{tmp_path.name}"
    storage = open_storage(sshd.url(str(root)), {"sftp": sftp_options(sshd)})
    assert isinstance(storage, SftpStorage)
    storage.put("data/ab/pack", b"p" * 1000)
    storage.put("config", b"c")
    assert (root / "data" / "ab" / "pack").read_bytes() == b"p" * 1000
    assert stat.S_IMODE((root / "data" / "ab" / "pack").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "config").stat().st_mode) == 0o600
    for d in (root, root / "data", root / "data" / "ab"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["config", "pack"]
    storage.close()


def test_ssh_config_alias(sshd: SshServer, tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host backupnas\n  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.key_file}\n  UserKnownHostsFile {sshd.known_hosts_file}\n"
    )
    storage = SftpStorage("sftp://backupnas/~/alias-repo", {"ssh_config_file": str(config), "allow_agent": False})
    assert storage.hostname == sshd.host and storage.port == sshd.port and storage.user == sshd.user
    storage.put("index/i", b"via alias")
    assert (sshd.sftp_home / "alias-repo" / "index" / "i").read_bytes() == b"via alias"
    storage.close()


def test_unknown_host_key_is_refused_with_fingerprint_and_hint(sshd: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    for kh in (empty, tmp_path / "missing_known_hosts"):
        storage = wrap_storage(SftpStorage(sshd.url("~/r"), sftp_options(sshd, known_hosts_file=str(kh))), FAST_RETRY)
        with pytest.raises(StorageError) as exc:
            storage.stat("config")
        assert not isinstance(exc.value, TransientStorageError)
        text = str(exc.value)
        assert "unknown host key" in text and fingerprint(sshd.host_key_file.with_suffix(".pub")) in text
        assert "gave up" not in text  # refused at once, not retried
        assert f"ssh-keyscan -p {sshd.port} {sshd.host} >> {kh}" in (exc.value.hint or "")
        assert exc.value.exit_code == 8
    assert empty.read_text() == ""  # never added silently


def test_changed_host_key_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other_host_key")
    kh = tmp_path / "known_hosts"
    kh.write_text(known_hosts_line(sshd.host, sshd.port, other.with_suffix(".pub")))
    storage = SftpStorage(sshd.url("~/r"), sftp_options(sshd, known_hosts_file=str(kh)))
    with pytest.raises(StorageError) as exc:
        storage.put("config", b"x")
    text = str(exc.value)
    assert "has CHANGED" in text
    assert fingerprint(sshd.host_key_file.with_suffix(".pub")) in text and fingerprint(other.with_suffix(".pub")) in text
    assert f"ssh-keygen -f {kh} -R '[{sshd.host}]:{sshd.port}'" in (exc.value.hint or "")


def test_authentication_failure(sshd: SshServer, tmp_path: Path) -> None:
    stranger = keygen(tmp_path / "stranger")
    storage = wrap_storage(SftpStorage(sshd.url("~/r"), sftp_options(sshd, key_file=str(stranger))), FAST_RETRY)
    with pytest.raises(StorageError) as exc:
        storage.put("config", b"x")
    assert "authentication failed" in str(exc.value) and "gave up" not in str(exc.value)
    assert "authorized_keys" in (exc.value.hint or "")


def test_missing_key_file_is_config_error(sshd: SshServer, tmp_path: Path) -> None:
    storage = SftpStorage(sshd.url("~/r"), sftp_options(sshd, key_file=str(tmp_path / "nope")))
    with pytest.raises(ConfigError) as exc:
        storage.stat("config")
    assert exc.value.key == "repository.sftp.key_file"


def test_connection_refused_names_host(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    storage = wrap_storage(SftpStorage(f"sftp://root@127.0.0.1:{port}/srv/x", {"connect_timeout": 2, "allow_agent": False}), FAST_RETRY)
    with pytest.raises(StorageError) as exc:
        storage.stat("config")
    assert f"cannot reach root@127.0.0.1:{port}" in str(exc.value) and "gave up" in str(exc.value)


def test_permission_denied(tmp_path: Path) -> None:
    """A read-only SFTP server (internal-sftp -R) refuses writes even to root."""
    require_binary("sshd")
    server = start_sshd(tmp_path, sftp_args="-R")
    try:
        (server.sftp_home / "ro" / "index").mkdir(parents=True)
        (server.sftp_home / "ro" / "index" / "i").write_bytes(b"readable")
        storage = wrap_storage(SftpStorage(server.url("~/ro"), sftp_options(server)), FAST_RETRY)
        assert storage.get("index/i") == b"readable"
        with pytest.raises(StorageError) as exc:
            storage.put("index/j", b"x")
        assert "permission denied" in str(exc.value) and "gave up" not in str(exc.value)
        assert "may read and write" in (exc.value.hint or "")
        assert exc.value.exit_code == 8
        with pytest.raises(StorageError, match="permission denied"):
            storage.delete("index/i")
        assert sorted(p.name for p in (server.sftp_home / "ro" / "index").iterdir()) == ["i"]
        storage.close()
    finally:
        server.stop()


def test_full_disk_is_storage_full(sshd: SshServer, tiny_fs: Path) -> None:
    storage = wrap_storage(SftpStorage(sshd.url(str(tiny_fs / "repo")), sftp_options(sshd)), FAST_RETRY)
    storage.put("config", b"c")
    with pytest.raises(StorageFull) as exc:
        storage.put("data/00/big", os.urandom(3 * 1024 * 1024))
    assert exc.value.exit_code == 8 and "bytes free" in str(exc.value)
    assert [i.name for i in storage.list("data")] == []
    assert not [p for p in tiny_fs.rglob("*") if p.is_file() and p.name != "config"]  # no temporaries
    storage.put("index/small", b"fits")
    assert storage.get("config") == b"c"
    storage.close()


def test_reconnects_after_dropped_connection(sshd: SshServer, tmp_path: Path) -> None:
    storage = SftpStorage(sshd.url(f"~/recon-{tmp_path.name}"), sftp_options(sshd))
    storage.put("index/a", b"1")
    storage._client.get_transport().close()  # the network drops the session
    assert storage.get("index/a") == b"1"  # a fresh connection, transparently
    storage.close()
    storage.put("index/b", b"2")  # close() is not final either
    assert sorted(i.name for i in storage.list("index")) == ["index/a", "index/b"]
    storage.close()


def test_missing_object_and_folder(sshd: SshServer, tmp_path: Path) -> None:
    storage = SftpStorage(sshd.url(f"~/nothing-{tmp_path.name}"), sftp_options(sshd))
    assert list(storage.list("data")) == []
    with pytest.raises(ObjectNotFound):
        storage.get("config")
    storage.delete("config")
    storage.close()


def test_remove_stale_temporaries(sshd: SshServer, tmp_path: Path) -> None:
    folder = f"stale-{tmp_path.name}"
    storage = SftpStorage(sshd.url(f"~/{folder}"), sftp_options(sshd))
    storage.put("data/00/p", b"whole")
    root = sshd.sftp_home / folder
    old = root / "data" / "00" / ".tmp-q.dead"
    young = root / "data" / "00" / ".tmp-r.inflight"
    old.write_bytes(b"partial")
    young.write_bytes(b"partial")
    os.utime(old, (1_000_000_000, 1_000_000_000))
    assert wrap_storage(storage).inner.inner is storage  # what unwrap() walks through
    assert storage.remove_stale_temporaries(min_age_seconds=3600) == 1
    assert sorted(p.name for p in (root / "data" / "00").iterdir()) == [".tmp-r.inflight", "p"]
    assert storage.remove_stale_temporaries(min_age_seconds=0) == 1
    assert sorted(p.name for p in (root / "data" / "00").iterdir()) == ["p"]
    storage.close()


def test_no_delete_server_still_takes_backups(tmp_path: Path) -> None:
    """An SFTP server that refuses deletes (internal-sftp -P remove,rmdir): puts work."""
    require_binary("sshd")
    server = start_sshd(tmp_path, sftp_args="-P remove,rmdir")
    try:
        storage = wrap_storage(SftpStorage(server.url("~/nodel"), sftp_options(server)), FAST_RETRY)
        storage.put("data/00/p", b"pack")
        storage.put("config", b"c")
        storage.put("config", b"c2")  # overwrite = rename over the old file
        assert storage.get("config") == b"c2"
        assert sorted(i.name for i in storage.list("data")) == ["data/00/p"]
        with pytest.raises(StorageError, match="permission denied: delete config"):
            storage.delete("config")
        assert sorted(p.name for p in (server.sftp_home / "nodel").rglob("*") if p.is_file()) == ["config", "p"]
        storage.close()
    finally:
        server.stop()


def test_login_through_ssh_agent(sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No key_file and no ~/.ssh keys: the key comes from a real ssh-agent."""
    import shutil

    agent = require_binary("ssh-agent")
    require_binary("ssh-add")
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen([agent, "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        home = tmp_path / "home"
        home.mkdir()
        monkeypatch.setenv("HOME", str(home))  # no ~/.ssh/id_* to fall back on
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        key = tmp_path / "agent_key"
        shutil.copy(sshd.key_file, key)
        key.chmod(0o600)
        subprocess.run(["ssh-add", "-q", str(key)], check=True, env={**os.environ}, timeout=10, capture_output=True)
        key.unlink()  # only the agent holds it now
        storage = SftpStorage(sshd.url(f"~/agent-{tmp_path.name}"), {"known_hosts_file": str(sshd.known_hosts_file)})
        storage.put("index/i", b"via agent")
        assert storage.get("index/i") == b"via agent"
        storage.close()
        no_agent = SftpStorage(sshd.url("~/x"), {"known_hosts_file": str(sshd.known_hosts_file), "allow_agent": False})
        with pytest.raises(StorageError, match="no SSH key to log in") as exc:
            no_agent.stat("config")
        assert not isinstance(exc.value, TransientStorageError)
    finally:
        proc.terminate()
        proc.wait(timeout=5)
