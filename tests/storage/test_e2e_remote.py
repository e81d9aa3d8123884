"""End to end through the real CLI against remote repositories: ``drkit init / backup /
verify / restore`` with the repository on S3 (moto over HTTP) and on SFTP (a real sshd),
restored bytes compared with the source tree; faults during a backup; one-line errors
with exit codes for wrong credentials, a missing bucket and an unknown host key."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from drkit.errors import EXIT_STORAGE
from tests.foundation.conftest import Workspace, make_tree, tree_state
from tests.servers.faults import HttpFaultProxy, TcpFaultProxy
from tests.servers.s3 import MotoServer, create_user_with_policy, iam_enforced
from tests.servers.sshd import SshServer, known_hosts_line
from tests.storage.conftest import FAST_RETRY, sftp_options

MiB = 1024 * 1024


class RemoteWorkspace(Workspace):
    """A foundation workspace whose repository lives at a URL with storage options."""

    def configure(self, url: str, **options: Any) -> None:
        doc = {
            "repository": {"url": url, **options},
            "sources": [{"name": "data", "type": "files", "paths": [str(self.data)], "exclude": ["*.tmp"]}],
        }
        self.config.write_text(yaml.safe_dump(doc))
        self.config.chmod(0o600)


@pytest.fixture
def rws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RemoteWorkspace:
    monkeypatch.setenv("DRKIT_PASSWORD", "correct horse battery staple")
    # Short backoff so failing runs fail fast (the policy's shape is tested in test_wrappers).
    monkeypatch.setattr("drkit.storage.observe.RetryPolicy", lambda: FAST_RETRY)
    w = RemoteWorkspace(tmp_path, tmp_path / "data", tmp_path / "unused", tmp_path / "drkit.yaml")
    w.data.mkdir()
    make_tree(w.data)
    (w.data / "big.bin").write_bytes(os.urandom(12 * MiB))  # a pack big enough for multipart
    return w


def s3_config(moto: MotoServer, endpoint: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"s3": moto.options(endpoint_url=endpoint or moto.endpoint_url, multipart_threshold_mib=5, multipart_chunk_mib=5, **extra)}


@pytest.fixture(params=["s3", "sftp"])
def remote(request: pytest.FixtureRequest, rws: RemoteWorkspace) -> RemoteWorkspace:
    if request.param == "s3":
        moto: MotoServer = request.getfixturevalue("moto_server")
        rws.configure(f"s3://{moto.new_bucket()}/node1", **s3_config(moto))
    else:
        sshd: SshServer = request.getfixturevalue("sshd")
        rws.configure(sshd.url(f"~/e2e-{secrets.token_hex(4)}"), sftp=sftp_options(sshd))
    return rws


def expected_tree(ws: Workspace) -> dict:
    want = tree_state(ws.data)
    del want["skip.tmp"]
    return want


def restore_and_compare(ws: Workspace, target_name: str) -> None:
    target = ws.root / target_name
    ws.ok("restore", "latest", "--source", "data", "--target", str(target))
    assert tree_state(target / str(ws.data).lstrip("/")) == expected_tree(ws)


def test_init_backup_verify_restore(remote: RemoteWorkspace) -> None:
    remote.ok("init")
    first = remote.ok("backup", "--json").json()["snapshots"][0]
    assert first["bytes_read"] > 12 * MiB
    report = remote.ok("verify", "--read-data")
    assert report.code == 0
    restore_and_compare(remote, "restore1")
    # Deduplication works over the remote too: an unchanged tree adds almost nothing.
    second = remote.ok("backup", "--json").json()["snapshots"][0]
    assert second["bytes_stored"] < 4096
    (remote.data / "a/text.txt").write_text("changed\n")
    remote.ok("backup")
    restore_and_compare(remote, "restore2")


def test_s3_backup_survives_throttling_and_resets(rws: RemoteWorkspace, moto_server: MotoServer) -> None:
    proxy = HttpFaultProxy(moto_server.host, moto_server.port)
    try:
        rws.configure(f"s3://{moto_server.new_bucket()}/node1", **s3_config(moto_server, proxy.endpoint_url, max_attempts=2))
        rws.ok("init")
        slow = proxy.add("slowdown", method="PUT", path=r"/data/", times=3)
        reset = proxy.add("reset", method="PUT", path=r"partNumber=2", times=2)
        rws.ok("backup")
        assert slow.hits == 3 and reset.hits == 2
        rws.ok("verify", "--read-data")
        proxy.add("truncate", method="GET", path=r"/data/", times=2)
        restore_and_compare(rws, "restored")
    finally:
        proxy.close()


def test_s3_failed_backup_is_clear_and_next_run_completes(rws: RemoteWorkspace, moto_server: MotoServer) -> None:
    proxy = HttpFaultProxy(moto_server.host, moto_server.port)
    try:
        rws.configure(f"s3://{moto_server.new_bucket()}/node1", **s3_config(moto_server, proxy.endpoint_url, max_attempts=1))
        rws.ok("init")
        proxy.add("reset", method="PUT", path=r"partNumber=2", times=10_000)
        failed = rws.run("backup")
        assert failed.code == EXIT_STORAGE, failed.err
        assert "storage error" in failed.err and proxy.endpoint_url in failed.err and "Traceback" not in failed.err
        proxy.heal()
        rws.ok("backup")
        rws.ok("verify", "--read-data")
        restore_and_compare(rws, "restored")
    finally:
        proxy.close()


def test_sftp_backup_survives_a_dropped_session(rws: RemoteWorkspace, sshd: SshServer) -> None:
    proxy = TcpFaultProxy(sshd.host, sshd.port)
    try:
        kh = rws.root / "known_hosts_proxy"
        kh.write_text(known_hosts_line("127.0.0.1", proxy.port, sshd.host_key_file.with_suffix(".pub")))
        url = f"sftp://{sshd.user}@127.0.0.1:{proxy.port}/~/e2e-cut-{secrets.token_hex(4)}"
        rws.configure(url, sftp=sftp_options(sshd, known_hosts_file=str(kh), io_timeout=10))
        rws.ok("init")
        proxy.cut_after(4 * MiB)  # in the middle of the big pack
        rws.ok("backup")
        assert proxy.cuts == 1
        rws.ok("verify", "--read-data")
        restore_and_compare(rws, "restored")
        folder = sshd.sftp_home / url.rsplit("/", 1)[-1]
        assert not [p for p in folder.rglob(".tmp-*")], "a temporary of the cut upload was left behind"
    finally:
        proxy.close()


def test_s3_wrong_credentials_one_line_error(rws: RemoteWorkspace, moto_server: MotoServer) -> None:
    bucket = moto_server.new_bucket()
    create_user_with_policy(moto_server, f"e2e-{secrets.token_hex(3)}", ["s3:*"], bucket)
    rws.configure(f"s3://{bucket}/node1", s3=moto_server.options(access_key_id="AKIANOTAREALKEY00000", secret_access_key="bad-secret"))
    with iam_enforced(moto_server):
        r = rws.run("init")
    assert r.code == EXIT_STORAGE
    assert "credentials rejected" in r.err and "bad-secret" not in r.err and "Traceback" not in r.err


def test_s3_missing_bucket_one_line_error(rws: RemoteWorkspace, moto_server: MotoServer) -> None:
    rws.configure("s3://drkit-no-such-bucket/node1", **s3_config(moto_server))
    r = rws.run("init")
    assert r.code == EXIT_STORAGE
    assert "bucket 'drkit-no-such-bucket' does not exist" in r.err and "hint:" in r.err


def test_sftp_unknown_host_key_one_line_error(rws: RemoteWorkspace, sshd: SshServer) -> None:
    empty = rws.root / "empty_known_hosts"
    empty.write_text("")
    rws.configure(sshd.url("~/never"), sftp=sftp_options(sshd, known_hosts_file=str(empty)))
    r = rws.run("init")
    assert r.code == EXIT_STORAGE
    assert "unknown host key" in r.err and "ssh-keyscan" in r.err and "Traceback" not in r.err
    assert not (sshd.sftp_home / "never").exists()


def test_bad_storage_option_is_config_error(rws: RemoteWorkspace, moto_server: MotoServer) -> None:
    rws.configure("s3://b/p", s3={"endpoint": "http://x"})
    r = rws.run("init")
    assert r.code == 2 and "repository.s3.endpoint" in r.err


def test_sftp_backup_with_a_server_that_refuses_deletes(rws: RemoteWorkspace, tmp_path: Path) -> None:
    """Backup must never need to delete (issue 3): a no-delete SFTP account still backs up."""
    from tests.conftest import require_binary
    from tests.servers.sshd import start_sshd

    require_binary("sshd")
    server = start_sshd(tmp_path / "nodel", sftp_args="-P remove,rmdir")
    try:
        rws.configure(server.url("~/repo"), sftp=sftp_options(server))
        rws.ok("init")
        r = rws.run("backup")
        assert r.code == 0, r.err
        restore_and_compare(rws, "restored")
    finally:
        server.stop()
