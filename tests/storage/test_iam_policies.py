"""The shipped least-privilege S3 policies (config/iam/) for every command each host runs.

Each host role runs its whole repertoire against moto's S3 server with IAM enforced:
the backup host init, backup, snapshots, verify (structure and read-data), restore and
unlock, and is refused forget; the admin host all of that plus forget and prune. A command
that needs an action the policy lacks fails its test here rather than a night's backup.

Two things moto does not do as AWS does are bridged honestly, each named where it is used:

- moto does not evaluate ``s3:prefix`` conditions, so the policies' conditioned ListBucket
  grant is loaded without its condition (``shipped_policy_user``);
- that condition has a consequence on AWS which moto never shows: a GET or HEAD carries no
  prefix, so the conditioned grant does not count as "may list the bucket", and AWS answers
  a GET/HEAD of a *missing* key with 403 AccessDenied instead of 404. An HTTP proxy in front of
  moto (``deny_missing``) turns those 404s into 403s, as AWS would send them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from drkit.errors import EXIT_STORAGE, ObjectNotFound, StorageError
from drkit.storage.s3 import S3Storage
from tests.servers.faults import HttpFaultProxy
from tests.servers.s3 import MotoServer, create_user_with_policy, iam_enforced
from tests.storage.test_object_lock import (  # noqa: F401  (fixtures)
    LockWorkspace,
    lock_options,
    locked_bucket,
    lws,
    make_data,
    moto_signs_slashes,
    shipped_policy_user,
)

EVERY_REQUEST = 10**9


@pytest.fixture
def aws_like(moto_server: MotoServer) -> Iterator[HttpFaultProxy]:
    """moto behind a proxy that answers GET/HEAD of a missing object with 403, as AWS does
    for a caller whose only ListBucket grant is conditioned on s3:prefix."""
    proxy = HttpFaultProxy(moto_server.host, moto_server.port)
    proxy.add("deny_missing", times=EVERY_REQUEST)
    yield proxy
    proxy.close()


def host_options(moto: MotoServer, proxy: HttpFaultProxy, bucket: str, policy: str) -> dict[str, object]:
    return lock_options(moto, endpoint_url=proxy.endpoint_url, **shipped_policy_user(moto, bucket, policy))


def snapshot_count(w: LockWorkspace) -> int:
    return len(w.ok("snapshots", "--json").json())


def test_a_missing_object_answered_403_is_missing_not_denied(moto_server: MotoServer, aws_like: HttpFaultProxy) -> None:
    """stat/get of a missing key under the AWS 403 rule raise ObjectNotFound (init, lock
    checks and the index rely on it); a key that exists but may not be read stays denied."""
    bucket = moto_server.new_bucket()
    moto_server.client().put_object(Bucket=bucket, Key="repo/present", Body=b"x")
    list_only, secret = create_user_with_policy(moto_server, f"lister-{secrets.token_hex(3)}", ["s3:ListBucket"], bucket)
    storage = S3Storage(f"s3://{bucket}/repo", moto_server.options(endpoint_url=aws_like.endpoint_url))
    lister = S3Storage(
        f"s3://{bucket}/repo",
        moto_server.options(endpoint_url=aws_like.endpoint_url, access_key_id=list_only, secret_access_key=secret),
    )
    try:
        with iam_enforced(moto_server):
            with pytest.raises(ObjectNotFound):
                lister.stat("config")
            with pytest.raises(ObjectNotFound):
                lister.get("config")
            with pytest.raises(StorageError, match="access denied") as denied:
                lister.get("present")
            assert not isinstance(denied.value, ObjectNotFound)
        assert storage.get("present") == b"x"
        assert any(method == "HEAD" for method, _ in aws_like.requests)
    finally:
        storage.close()
        lister.close()


def test_backup_host_policy_covers_every_backup_host_command(
    lws: LockWorkspace, moto_server: MotoServer, moto_signs_slashes: None, aws_like: HttpFaultProxy  # noqa: F811 - fixtures
) -> None:
    bucket = locked_bucket(moto_server)
    url = f"s3://{bucket}/node1"
    lws.configure(url, host_options(moto_server, aws_like, bucket, "backup-host-policy.json"))
    with iam_enforced(moto_server):
        lws.ok("init")
        lws.ok("backup")
        make_data(lws.data, seed=2)
        lws.ok("backup")
        assert snapshot_count(lws) == 2
        lws.ok("verify")
        lws.ok("verify", "--read-data")
        lws.restore_matches("restored")
        lws.ok("unlock")
        refused = lws.run("forget", "--keep-last", "1")
        assert refused.code == EXIT_STORAGE, refused.err
        assert "access denied" in refused.err and "Traceback" not in refused.err
        assert snapshot_count(lws) == 2  # the refusal removed nothing
    assert aws_like.rules[0].hits > 0  # the 403-for-missing rule was exercised


def test_admin_host_policy_covers_every_admin_command(
    lws: LockWorkspace, moto_server: MotoServer, moto_signs_slashes: None, aws_like: HttpFaultProxy  # noqa: F811 - fixtures
) -> None:
    bucket = locked_bucket(moto_server)
    url = f"s3://{bucket}/node1"
    lws.configure(url, host_options(moto_server, aws_like, bucket, "admin-host-policy.json"))
    with iam_enforced(moto_server):
        lws.ok("init")
        lws.ok("backup")
        make_data(lws.data, seed=3)
        lws.ok("backup")
        lws.ok("verify", "--read-data")
        forget = lws.ok("forget", "--keep-last", "1", "--prune", "--json")
        assert len(forget.json()["removed"]) == 1
        lws.ok("prune")
        assert snapshot_count(lws) == 1
        lws.ok("unlock")
        lws.restore_matches("restored")
        assert "Traceback" not in forget.err and "could not remove" not in forget.err


def test_init_refuses_an_existing_repository_under_the_403_rule(
    lws: LockWorkspace, moto_server: MotoServer, moto_signs_slashes: None, aws_like: HttpFaultProxy  # noqa: F811 - fixtures
) -> None:
    """The 403-means-missing reading never hides a real config: a second init still refuses."""
    bucket = locked_bucket(moto_server)
    lws.configure(f"s3://{bucket}/node1", host_options(moto_server, aws_like, bucket, "backup-host-policy.json"))
    with iam_enforced(moto_server):
        lws.ok("init")
        again = lws.run("init")
    assert again.code == 10, again.err
    assert Path(lws.config).exists()
