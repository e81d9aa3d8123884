"""Faults between drkit and real servers: S3 through an HTTP fault proxy in front of moto
(503 SlowDown, resets, truncated and corrupted bodies), SFTP through a TCP proxy in front
of sshd (session cut mid-upload, refused connections). With the retry wrapper each
operation either succeeds with the right bytes or fails with a clear StorageError, and
never leaves a partial object (nor a temporary) behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from drkit.errors import IntegrityError, ObjectNotFound, StorageError
from drkit.storage.observe import wrap_storage
from drkit.storage.s3 import S3Storage
from drkit.storage.sftp import SftpStorage
from tests.servers.faults import HttpFaultProxy, TcpFaultProxy
from tests.servers.s3 import MotoServer
from tests.servers.sshd import SshServer, known_hosts_line
from tests.storage.conftest import FAST_RETRY, sftp_options

MiB = 1024 * 1024


# -- S3 ----------------------------------------------------------------------------------


@pytest.fixture
def s3_proxy(moto_server: MotoServer) -> Iterator[HttpFaultProxy]:
    proxy = HttpFaultProxy(moto_server.host, moto_server.port)
    yield proxy
    proxy.close()


def s3_via(proxy: HttpFaultProxy, moto: MotoServer, bucket: str, botocore_attempts: int = 1) -> S3Storage:
    """botocore's own retries off (by default), so drkit's wrapper is what recovers."""
    return S3Storage(
        f"s3://{bucket}/repo",
        moto.options(
            endpoint_url=proxy.endpoint_url,
            max_attempts=botocore_attempts,
            multipart_threshold_mib=5,
            multipart_chunk_mib=5,
            read_timeout=10,
        ),
    )


def pending_uploads(moto: MotoServer, bucket: str) -> list:
    return moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def test_s3_slowdown_is_retried(moto_server: MotoServer, s3_proxy: HttpFaultProxy) -> None:
    bucket = moto_server.new_bucket()
    storage = wrap_storage(s3_via(s3_proxy, moto_server, bucket), FAST_RETRY)
    rule = s3_proxy.add("slowdown", method="PUT", times=2)
    payload = os.urandom(50_000)
    storage.put("data/00/p", payload)
    assert rule.hits == 2
    assert storage.get("data/00/p") == payload
    assert storage.stats.puts == 1


def test_s3_botocore_adaptive_retries_absorb_slowdown(moto_server: MotoServer, s3_proxy: HttpFaultProxy) -> None:
    bucket = moto_server.new_bucket()
    storage = s3_via(s3_proxy, moto_server, bucket, botocore_attempts=5)  # no drkit wrapper
    rule = s3_proxy.add("slowdown", method="GET", times=2)
    storage.put("index/i", b"abc")
    assert storage.get("index/i") == b"abc"
    assert rule.hits == 2


def test_s3_reset_mid_multipart_retries_whole_put(moto_server: MotoServer, s3_proxy: HttpFaultProxy) -> None:
    bucket = moto_server.new_bucket()
    storage = wrap_storage(s3_via(s3_proxy, moto_server, bucket), FAST_RETRY)
    rule = s3_proxy.add("reset", method="PUT", path=r"partNumber=2", times=1)
    payload = os.urandom(12 * MiB)
    storage.put("data/00/big", payload)
    assert rule.hits == 1
    assert storage.get("data/00/big") == payload
    assert pending_uploads(moto_server, bucket) == []  # the failed attempt was aborted


def test_s3_persistent_failure_is_clear_and_leaves_nothing(moto_server: MotoServer, s3_proxy: HttpFaultProxy) -> None:
    bucket = moto_server.new_bucket()
    storage = wrap_storage(s3_via(s3_proxy, moto_server, bucket), FAST_RETRY)
    s3_proxy.add("reset", method="PUT", path=r"partNumber=3", times=1000)
    with pytest.raises(StorageError) as exc:
        storage.put("data/00/big", os.urandom(12 * MiB))
    text = str(exc.value)
    assert s3_proxy.endpoint_url in text and "gave up on put data/00/big after 4 attempt(s)" in text
    assert exc.value.exit_code == 8
    s3_proxy.heal()
    with pytest.raises(ObjectNotFound):
        storage.stat("data/00/big")
    assert pending_uploads(moto_server, bucket) == []
    storage.put("data/00/big", b"later run")  # the next run completes
    assert storage.get("data/00/big") == b"later run"


def test_s3_5xx_on_single_put_gives_up_clearly(moto_server: MotoServer, s3_proxy: HttpFaultProxy) -> None:
    bucket = moto_server.new_bucket()
    storage = wrap_storage(s3_via(s3_proxy, moto_server, bucket), FAST_RETRY)
    s3_proxy.add("error500", method="PUT", times=1000)
    with pytest.raises(StorageError, match=r"InternalError.*gave up on put index/i after 4"):
        storage.put("index/i", b"x")
    s3_proxy.heal()
    with pytest.raises(ObjectNotFound):
        storage.stat("index/i")


def test_s3_truncated_download_is_retried(moto_server: MotoServer, s3_proxy: HttpFaultProxy) -> None:
    bucket = moto_server.new_bucket()
    storage = wrap_storage(s3_via(s3_proxy, moto_server, bucket), FAST_RETRY)
    payload = os.urandom(2 * MiB)
    storage.put("data/00/p", payload)
    rule = s3_proxy.add("truncate", method="GET", times=2)
    assert storage.get("data/00/p") == payload
    assert rule.hits == 2


def test_s3_corrupted_download_is_detected_and_retried(moto_server: MotoServer, s3_proxy: HttpFaultProxy) -> None:
    bucket = moto_server.new_bucket()
    storage = wrap_storage(s3_via(s3_proxy, moto_server, bucket), FAST_RETRY)
    payload = os.urandom(300_000)
    storage.put("data/00/p", payload)
    rule = s3_proxy.add("corrupt", method="GET", path=r"/data/00/p$", times=1)
    assert storage.get("data/00/p") == payload
    assert rule.hits == 1
    # Wrong the same way on every read: the stored object is damaged (see test_remote_damage.py).


# -- SFTP --------------------------------------------------------------------------------


@pytest.fixture
def sftp_proxy(sshd: SshServer, tmp_path: Path) -> Iterator[tuple[TcpFaultProxy, dict]]:
    proxy = TcpFaultProxy(sshd.host, sshd.port)
    kh = tmp_path / "known_hosts_proxy"
    kh.write_text(known_hosts_line("127.0.0.1", proxy.port, sshd.host_key_file.with_suffix(".pub")))
    yield proxy, sftp_options(sshd, known_hosts_file=str(kh), io_timeout=10)
    proxy.close()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_sftp_session_cut_mid_upload_reconnects(sshd: SshServer, sftp_proxy: tuple[TcpFaultProxy, dict], tmp_path: Path) -> None:
    proxy, opts = sftp_proxy
    folder = f"cut-{tmp_path.name}"
    storage = wrap_storage(SftpStorage(f"sftp://{sshd.user}@127.0.0.1:{proxy.port}/~/{folder}", opts), FAST_RETRY)
    storage.put("config", b"c")  # connected, folder exists
    payload = os.urandom(4 * MiB)
    proxy.cut_after(1 * MiB)
    storage.put("data/00/p", payload)
    assert proxy.cuts == 1 and proxy.accepted == 2
    assert storage.get("data/00/p") == payload
    # The cut attempt's temporary is removed after the reconnect: only whole objects remain.
    assert files_under(sshd.sftp_home / folder) == ["config", "data/00/p"]


def test_sftp_cut_every_time_fails_clearly_then_next_run_completes(
    sshd: SshServer, sftp_proxy: tuple[TcpFaultProxy, dict], tmp_path: Path
) -> None:
    proxy, opts = sftp_proxy
    folder = f"cutall-{tmp_path.name}"
    storage = wrap_storage(SftpStorage(f"sftp://{sshd.user}@127.0.0.1:{proxy.port}/~/{folder}", opts), FAST_RETRY)
    storage.put("config", b"c")
    proxy.cut_after(512 * 1024, every_connection=True)
    with pytest.raises(StorageError) as exc:
        storage.put("data/00/p", os.urandom(3 * MiB))
    text = str(exc.value)
    assert "lost during put data/00/p" in text and "gave up on put data/00/p after 4 attempt(s)" in text
    assert exc.value.exit_code == 8
    proxy.heal()
    with pytest.raises(ObjectNotFound):
        storage.stat("data/00/p")
    storage.put("data/00/q", b"next run")
    assert files_under(sshd.sftp_home / folder) == ["config", "data/00/q"]  # no partial object, no temporary


def test_sftp_refused_connections_are_retried(sshd: SshServer, sftp_proxy: tuple[TcpFaultProxy, dict], tmp_path: Path) -> None:
    proxy, opts = sftp_proxy
    storage = wrap_storage(SftpStorage(f"sftp://{sshd.user}@127.0.0.1:{proxy.port}/~/reset-{tmp_path.name}", opts), FAST_RETRY)
    proxy.reset_new_connections(2)
    storage.put("index/i", b"after resets")
    assert storage.get("index/i") == b"after resets"
    assert proxy.accepted == 3


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_sftp_cut_during_download_is_retried(sshd: SshServer, sftp_proxy: tuple[TcpFaultProxy, dict], tmp_path: Path) -> None:
    proxy, opts = sftp_proxy
    storage = wrap_storage(SftpStorage(f"sftp://{sshd.user}@127.0.0.1:{proxy.port}/~/dl-{tmp_path.name}", opts), FAST_RETRY)
    payload = os.urandom(16 * MiB)  # a pack: 64 read requests of 255 KiB, about 4 KB sent
    storage.put("data/00/p", payload)
    proxy.cut_after(2000)  # the next few read requests go up, then the line drops
    assert storage.get("data/00/p") == payload
    assert proxy.cuts == 1


def test_s3_every_upload_carries_a_content_md5(moto_server: MotoServer, s3_proxy: HttpFaultProxy) -> None:
    import base64
    import hashlib

    bucket = moto_server.new_bucket()
    storage = s3_via(s3_proxy, moto_server, bucket)
    storage.put("index/i", os.urandom(1000))
    storage.put("data/00/big", os.urandom(12 * MiB))
    # Object and part uploads (not the CompleteMultipartUpload POST, whose body is XML).
    puts = [u for u in s3_proxy.uploads if "partNumber=" in u[0] or "uploadId=" not in u[0]]
    assert len(puts) == 1 + 3  # one PUT, three parts of 5+5+2 MiB
    for path, headers, body in puts:
        want = base64.b64encode(hashlib.md5(body).digest()).decode()
        assert {k.lower(): v for k, v in headers.items()}.get("content-md5") == want, path


def test_s3_upload_corrupted_in_transit_is_caught_on_download(moto_server: MotoServer, s3_proxy: HttpFaultProxy) -> None:
    """A real S3 refuses such an upload (BadDigest: the Content-MD5 does not match); moto
    does not check, so this shows the second line of defence: the download check."""
    bucket = moto_server.new_bucket()
    storage = wrap_storage(s3_via(s3_proxy, moto_server, bucket), FAST_RETRY)
    s3_proxy.add("corrupt_request", method="PUT", times=1)
    storage.put("data/00/p", os.urandom(10_000))
    with pytest.raises(IntegrityError, match="data/00/p: stored bytes .* do not match the MD5"):
        storage.get("data/00/p")
