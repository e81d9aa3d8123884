"""Remote storage faults that are data, not outages (issue #15, case 7): an S3 object
whose stored bytes were altered is damage (verify names it and its snapshots, restore
fails as damage), never retried as transient; 501 NotImplemented is a capability answer;
a failed AbortMultipartUpload is reported; init reads back what it wrote."""

from __future__ import annotations

import logging
import os

import pytest

from drkit.errors import EXIT_DAMAGE, EXIT_STORAGE, IntegrityError, StorageError
from drkit.storage.observe import wrap_storage
from tests.servers.faults import HttpFaultProxy
from tests.servers.s3 import MotoServer
from tests.storage.conftest import FAST_RETRY
from tests.storage.test_e2e_remote import RemoteWorkspace, rws, s3_config  # noqa: F401 - fixture
from tests.storage.test_faults import pending_uploads, s3_proxy, s3_via  # noqa: F401 - fixture

MiB = 1024 * 1024


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_pack_altered_on_the_server_is_damage_named_by_verify_not_an_outage(
    rws: RemoteWorkspace, moto_server: MotoServer  # noqa: F811
) -> None:
    proxy = HttpFaultProxy(moto_server.host, moto_server.port)
    try:
        bucket = moto_server.new_bucket()
        rws.configure(f"s3://{bucket}/node1", **s3_config(moto_server, proxy.endpoint_url))
        (rws.data / "big.bin").unlink()  # one small pack is enough
        rws.ok("init")
        snap = rws.ok("backup", "--json").json()["snapshots"][0]
        client = moto_server.client()
        packs = [o for o in client.list_objects_v2(Bucket=bucket, Prefix="node1/data/")["Contents"]]
        victim = max(packs, key=lambda o: o["Size"])["Key"]
        obj = client.get_object(Bucket=bucket, Key=victim)
        body = bytearray(obj["Body"].read())
        body[len(body) // 2] ^= 0xFF
        client.put_object(Bucket=bucket, Key=victim, Body=bytes(body), Metadata=obj["Metadata"])  # MD5 of the original kept

        proxy.requests.clear()
        r = rws.run("verify", "--read-data")
        assert r.code == EXIT_DAMAGE, r.err
        damaged = [line for line in r.err.splitlines() if line.startswith("damaged: ")]
        assert len(damaged) == 1 and victim.removeprefix("node1/") in damaged[0] and snap["short_id"] in damaged[0]
        assert "do not match the MD5" in damaged[0]
        assert "gave up" not in r.err and "retry" not in r.err
        gets = [p for m, p in proxy.requests if m == "GET" and p.split("?")[0].endswith(victim)]
        # The whole pack read twice (once more to confirm), plus at most one ranged read of a
        # tree blob by the structure check; never the six tries of an outage.
        assert 2 <= len(gets) <= 3, "read once more to confirm, never retried as an outage"

        r = rws.run("restore", "latest", "-s", "data", "--target", str(rws.root / "r"))
        assert r.code == EXIT_DAMAGE, r.err
        line = one_error_line(r.err)
        assert "damaged" in line and ("a/b/random.bin" in line or victim.removeprefix("node1/") in line), line
    finally:
        proxy.close()


def test_corruption_in_transit_is_still_retried(moto_server: MotoServer, s3_proxy: HttpFaultProxy) -> None:  # noqa: F811
    bucket = moto_server.new_bucket()
    storage = wrap_storage(s3_via(s3_proxy, moto_server, bucket), FAST_RETRY)
    payload = os.urandom(300_000)
    storage.put("data/00/p", payload)
    rule = s3_proxy.add("corrupt", method="GET", path=r"/data/00/p$", times=1)
    assert storage.get("data/00/p") == payload
    assert rule.hits == 1


def test_501_not_implemented_is_a_capability_answer_not_retried(moto_server: MotoServer, s3_proxy: HttpFaultProxy) -> None:  # noqa: F811
    bucket = moto_server.new_bucket()
    storage = wrap_storage(s3_via(s3_proxy, moto_server, bucket), FAST_RETRY)
    rule = s3_proxy.add("notimplemented", method="PUT", times=100)
    with pytest.raises(StorageError) as caught:
        storage.put("index/i", b"x")
    assert rule.hits == 1
    assert "does not implement put index/i (NotImplemented)" in caught.value.message
    assert "gave up" not in caught.value.message and caught.value.hint


def test_a_failed_abort_of_a_failed_multipart_upload_is_reported(
    moto_server: MotoServer, s3_proxy: HttpFaultProxy, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    bucket = moto_server.new_bucket()
    storage = s3_via(s3_proxy, moto_server, bucket)
    s3_proxy.add("reset", method="PUT", path=r"partNumber=2", times=100)
    abort = s3_proxy.add("error500", method="DELETE", path=r"uploadId=", times=100)
    with caplog.at_level(logging.WARNING, logger="drkit.storage.s3"), pytest.raises(StorageError):
        storage.put("data/00/big", os.urandom(12 * MiB))
    assert abort.hits == 1
    uploads = pending_uploads(moto_server, bucket)
    assert len(uploads) == 1 and storage.unaborted_uploads == [("data/00/big", uploads[0]["UploadId"])]
    warning = [r.getMessage() for r in caplog.records if "aborting it failed too" in r.getMessage()]
    assert len(warning) == 1 and uploads[0]["UploadId"] in warning[0] and "drkit prune" in warning[0]
    s3_proxy.heal()
    assert storage.remove_stale_temporaries(min_age_seconds=0) == 1
    assert pending_uploads(moto_server, bucket) == []


def test_init_reads_back_what_it_wrote(rws: RemoteWorkspace, moto_server: MotoServer) -> None:  # noqa: F811
    proxy = HttpFaultProxy(moto_server.host, moto_server.port)
    try:
        bucket = moto_server.new_bucket()
        rws.configure(f"s3://{bucket}/node1", **s3_config(moto_server, proxy.endpoint_url))
        proxy.add("corrupt", method="GET", path=r"/node1/config$", times=100)  # a store that mangles what it serves
        r = rws.run("init")
        assert r.code == EXIT_STORAGE, r.err
        assert "does not give back what was written to config" in one_error_line(r.err)
        assert moto_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0, "nothing left behind"
        proxy.heal()
        rws.ok("init")
        (rws.data / "big.bin").unlink()
        rws.ok("backup")
    finally:
        proxy.close()


def test_damage_read_from_s3_is_an_integrity_error(moto_server: MotoServer, s3_proxy: HttpFaultProxy) -> None:  # noqa: F811
    bucket = moto_server.new_bucket()
    storage = wrap_storage(s3_via(s3_proxy, moto_server, bucket), FAST_RETRY)
    storage.put("data/00/p", os.urandom(300_000))
    rule = s3_proxy.add("corrupt", method="GET", path=r"/data/00/p$", times=1000)
    with pytest.raises(IntegrityError, match="data/00/p"):
        storage.get("data/00/p")
    assert rule.hits == 2


def test_501_on_a_write_with_object_lock_says_the_store_lacks_object_lock(moto_server: MotoServer, s3_proxy: HttpFaultProxy) -> None:  # noqa: F811
    """An S3-compatible store without Object Lock answers the retention headers with 501:
    that is the answer to 'does it have Object Lock', said as such, once."""
    from drkit.storage.s3 import S3Storage

    bucket = f"drkit-lock-{os.urandom(4).hex()}"
    moto_server.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    storage = wrap_storage(
        S3Storage(f"s3://{bucket}/repo", moto_server.options(endpoint_url=s3_proxy.endpoint_url, max_attempts=1,
                                                           object_lock={"mode": "GOVERNANCE", "days": 7})),
        FAST_RETRY,
    )
    rule = s3_proxy.add("notimplemented", method="PUT", path=r"/repo/index/", times=100)
    with pytest.raises(StorageError) as caught:
        storage.put("index/" + "0" * 64, b"x")
    assert rule.hits == 1
    assert "does not have S3 Object Lock enabled" in caught.value.message
