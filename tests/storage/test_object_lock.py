"""S3 Object Lock end to end, against moto's S3 server over HTTP with a bucket created with
``ObjectLockEnabledForBucket=True``: every object drkit writes (single PUT and multipart)
carries the configured retention, lock files none; ``init`` refuses a bucket without Object
Lock; a backup with the shipped delete-less backup-host policy succeeds; ``forget --prune``
keeps locked objects and still succeeds; a later prune (its clock moved past the retention)
deletes what is unreferenced and extends the retention of what is still referenced; a
superseded index file left behind never resurrects deleted packs.

moto does not implement GetObjectRetention: retention is read from HeadObject's
``ObjectLockMode``/``ObjectLockRetainUntilDate`` (as drkit itself does).
"""

from __future__ import annotations

import json
import os
import random
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
import yaml

from drkit.errors import EXIT_STORAGE, ConfigError, StorageError
from drkit.repository import layout
from drkit.repository.repo import Repository
from drkit.services.prune import prune
from drkit.storage.appendonly import AppendOnlyStorage
from drkit.storage.base import Retention, retention_of
from drkit.storage.local import LocalStorage
from drkit.storage.observe import unwrap, wrap_storage
from drkit.storage.s3 import S3Storage, parse_options
from tests.foundation.conftest import Workspace, tree_state
from tests.servers.s3 import MotoServer, iam_enforced
from tests.storage.conftest import FAST_RETRY

MiB = 1024 * 1024
DAYS = 2
PASSWORD = "correct horse battery staple"
ROOT = Path(__file__).resolve().parents[2]


# -- helpers ---------------------------------------------------------------------------


def locked_bucket(moto: MotoServer) -> str:
    name = f"drkit-lock-{secrets.token_hex(5)}"
    moto.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def keys(moto: MotoServer, bucket: str, prefix: str = "node1/") -> list[str]:
    pages = moto.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def lock_fields(moto: MotoServer, bucket: str, key: str) -> tuple[str | None, datetime | None]:
    head = moto.client().head_object(Bucket=bucket, Key=key)
    until = head.get("ObjectLockRetainUntilDate")
    return head.get("ObjectLockMode"), until.astimezone(timezone.utc) if until else None


def superseded_index_keys(moto: MotoServer, bucket: str) -> set[str]:
    """Index files still stored but superseded (what drkit no longer loads)."""
    storage = S3Storage(f"s3://{bucket}/node1", moto.options())
    try:
        repo = Repository.open(storage, PASSWORD)
        repo.load_index()
        return {f"node1/{layout.index_name(i)}" for i in repo.superseded_index_files}
    finally:
        storage.close()


def assert_all_retained(
    moto: MotoServer, bucket: str, mode: str, around: datetime, slack: timedelta = timedelta(minutes=5), skip: frozenset[str] | set[str] = frozenset()
) -> int:
    """Every key under node1/ except locks (and *skip*) carries *mode* until about *around*; returns the count."""
    names = [k for k in keys(moto, bucket) if not k.startswith("node1/locks/") and k not in skip]
    assert names
    for key in names:
        got_mode, until = lock_fields(moto, bucket, key)
        assert got_mode == mode, f"{key} has lock mode {got_mode}"
        assert until is not None and abs(until - around) < slack, f"{key} retained until {until}, expected about {around}"
    return len(names)


class LockWorkspace(Workspace):
    def configure(self, url: str, s3: dict[str, Any]) -> None:
        doc = {
            "repository": {"url": url, "s3": s3},
            "sources": [{"name": "data", "type": "files", "paths": [str(self.data)]}],
        }
        self.config.write_text(yaml.safe_dump(doc))
        self.config.chmod(0o600)

    def restore_matches(self, target_name: str, snapshot: str = "latest") -> None:
        target = self.root / target_name
        self.ok("restore", snapshot, "--source", "data", "--target", str(target))
        assert tree_state(target / str(self.data).lstrip("/")) == tree_state(self.data)


def make_data(root: Path, seed: int) -> None:
    rng = random.Random(seed)
    (root / "a").mkdir(parents=True, exist_ok=True)
    (root / "a/text.txt").write_text("hello object lock\n" * 4000)
    (root / "a/big.bin").write_bytes(rng.randbytes(6 * MiB + 123))  # one pack > 5 MiB: multipart upload


@pytest.fixture
def lws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LockWorkspace:
    monkeypatch.setenv("DRKIT_PASSWORD", PASSWORD)
    monkeypatch.setattr("drkit.storage.observe.RetryPolicy", lambda: FAST_RETRY)
    w = LockWorkspace(tmp_path, tmp_path / "data", tmp_path / "unused", tmp_path / "drkit.yaml")
    make_data(w.data, seed=1)
    return w


def lock_options(moto: MotoServer, mode: str = "GOVERNANCE", **extra: Any) -> dict[str, Any]:
    return moto.options(multipart_threshold_mib=5, multipart_chunk_mib=5, object_lock={"mode": mode, "days": DAYS}, **extra)


@pytest.fixture
def moto_signs_slashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Work around a moto 5 bug with IAM on: it re-signs the request from a *decoded* query
    string, so any ListObjectsV2 whose prefix holds a '/' fails SignatureDoesNotMatch.
    The server runs in this process: re-quote the query values the way clients sign them."""
    from moto.iam import access_control

    original = access_control.IAMRequestBase._create_aws_request

    def create(self: Any) -> Any:
        parts = urlsplit(self._path)
        if parts.query:
            query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in parse_qsl(parts.query, keep_blank_values=True))
            self._path = f"{parts.path}?{query}"
        return original(self)

    monkeypatch.setattr(access_control.IAMRequestBase, "_create_aws_request", create)


def shipped_policy_user(moto: MotoServer, bucket: str, policy_file: str) -> dict[str, str]:
    """An IAM user holding config/iam/POLICY_FILE for bucket/node1; its repository.s3 credentials."""
    text = (ROOT / "config/iam" / policy_file).read_text().replace("BUCKET", bucket).replace("PREFIX", "node1")
    policy = json.loads(text)
    for statement in policy["Statement"]:
        statement.pop("Condition", None)  # moto does not evaluate s3:prefix conditions
        if statement["Sid"] == "DrkitListRepository":
            statement["Action"].append("s3:HeadBucket")  # moto's name for it; AWS authorizes HeadBucket by s3:ListBucket
    iam = moto.client("iam")
    user = f"drkit-{secrets.token_hex(4)}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="drkit", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"mode": "FOREVER", "days": 3}, "repository.s3.object_lock.mode"),
        ({"mode": "GOVERNANCE", "days": 0}, "repository.s3.object_lock.days"),
        ({"mode": "GOVERNANCE"}, "repository.s3.object_lock.days"),
        ({"mode": "COMPLIANCE", "days": 3, "legal_hold": True}, "repository.s3.object_lock.legal_hold"),
        ("yes", "repository.s3.object_lock"),
    ],
)
def test_bad_object_lock_option_names_the_key(raw: Any, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_options({"object_lock": raw})
    assert exc.value.fields.get("key") == key or key in str(exc.value)


def test_object_lock_option_parses() -> None:
    opts = parse_options({"object_lock": {"mode": "compliance", "days": 30}})
    assert opts.object_lock is not None and (opts.object_lock.mode, opts.object_lock.days) == ("COMPLIANCE", 30)
    storage = S3Storage("s3://b/p", {"object_lock": {"mode": "governance", "days": 7}})
    assert storage.retention == Retention("GOVERNANCE", 7)
    assert S3Storage("s3://b/p", {}).retention is None


def test_bad_object_lock_in_config_file_is_exit_2(lws: LockWorkspace, moto_server: MotoServer) -> None:
    lws.configure(f"s3://{locked_bucket(moto_server)}/node1", moto_server.options(object_lock={"mode": "GOVERNANCE", "days": -1}))
    r = lws.run("init")
    assert r.code == 2 and "repository.s3.object_lock.days" in r.err and "Traceback" not in r.err


# -- the storage seam ---------------------------------------------------------------------


def test_every_put_carries_the_retention_and_locks_none(moto_server: MotoServer) -> None:
    bucket = locked_bucket(moto_server)
    raw = S3Storage(f"s3://{bucket}/node1", lock_options(moto_server, mode="COMPLIANCE"))
    sent: list[dict[str, Any]] = []
    raw._client.meta.events.register(
        "provide-client-params.s3.CreateMultipartUpload", lambda params, **_: sent.append(dict(params))
    )
    storage = wrap_storage(raw, FAST_RETRY)
    pack = "data/ab/" + "ab" * 32
    before = datetime.now(timezone.utc)
    storage.put("config", b"cfg")
    storage.put(pack, os.urandom(11 * MiB))  # multipart
    storage.put("locks/" + "cd" * 32, b"{}")
    expected = before + timedelta(days=DAYS)
    for key in ("node1/config", f"node1/{pack}"):
        mode, until = lock_fields(moto_server, bucket, key)
        assert mode == "COMPLIANCE" and until is not None and abs(until - expected) < timedelta(minutes=1)
    assert lock_fields(moto_server, bucket, "node1/locks/" + "cd" * 32) == (None, None)
    # The multipart upload asked for the lock itself (AWS applies it; moto ignores it and
    # drkit then sets it with PutObjectRetention).
    assert len(sent) == 1 and sent[0]["ObjectLockMode"] == "COMPLIANCE"
    assert abs(sent[0]["ObjectLockRetainUntilDate"] - expected) < timedelta(minutes=1)
    # The capability passes through every wrapper and reads HeadObject.
    for wrapped in (storage, AppendOnlyStorage(storage)):
        cap = retention_of(wrapped)
        assert cap is not None and cap.retention == Retention("COMPLIANCE", DAYS)
        until = cap.retained_until("config")
        assert until is not None and abs(until - expected) < timedelta(minutes=1)
    assert unwrap(AppendOnlyStorage(storage)) is raw  # type: ignore[arg-type]  # read-only url property
    later = expected + timedelta(days=5)
    AppendOnlyStorage(storage).extend_retention("config", later)  # extending destroys nothing
    assert abs(lock_fields(moto_server, bucket, "node1/config")[1] - later) < timedelta(seconds=1)  # type: ignore[operator]
    assert retention_of(wrap_storage(LocalStorage(Path("/nonexistent")))) is None
    assert retention_of(wrap_storage(S3Storage("s3://b/p", moto_server.options()))) is None
    storage.close()


def test_init_refuses_a_bucket_without_object_lock(lws: LockWorkspace, moto_server: MotoServer) -> None:
    bucket = moto_server.new_bucket()  # plain bucket
    lws.configure(f"s3://{bucket}/node1", lock_options(moto_server))
    r = lws.run("init")
    assert r.code == EXIT_STORAGE, r.err
    assert f"bucket '{bucket}'" in r.err and "does not have S3 Object Lock enabled" in r.err
    assert "object-lock-enabled-for-bucket" in r.err and "Traceback" not in r.err
    assert keys(moto_server, bucket) == []  # nothing written
    # The same bucket without object_lock is fine.
    lws.configure(f"s3://{bucket}/node1", moto_server.options())
    lws.ok("init")


def test_put_on_a_bucket_without_object_lock_is_the_same_clear_error(moto_server: MotoServer) -> None:
    """Credentials that may not read the bucket's lock configuration skip the check; the
    store's own refusal of the locked PUT gives the same message."""
    storage = S3Storage(f"s3://{moto_server.new_bucket()}/node1", lock_options(moto_server))
    storage._object_lock_checked = True  # as when GetObjectLockConfiguration is denied
    with pytest.raises(StorageError, match="does not have S3 Object Lock enabled"):
        storage.put("config", b"x")


# -- end to end ---------------------------------------------------------------------------


def test_backup_with_the_delete_less_backup_host_policy(lws: LockWorkspace, moto_server: MotoServer, moto_signs_slashes: None) -> None:
    """config/iam/backup-host-policy.json (delete only under locks/) is enough for a backup
    with Object Lock; that host cannot delete a pack; every object carries the retention."""
    bucket = locked_bucket(moto_server)
    host = lock_options(moto_server, **shipped_policy_user(moto_server, bucket, "backup-host-policy.json"))
    url = f"s3://{bucket}/node1"
    lws.configure(url, host)
    started = datetime.now(timezone.utc)
    with iam_enforced(moto_server):
        lws.ok("init")
        backup = lws.run("backup")
        assert backup.code == 0, backup.err
        assert "could not remove lock" not in backup.err  # the policy lets it remove its own lock
        denied = S3Storage(url, host)
        pack = next(iter(denied.list("data"))).name
        with pytest.raises(StorageError, match="access denied"):
            denied.delete(pack)
        denied.close()
    assert not [k for k in keys(moto_server, bucket) if k.startswith("node1/locks/")]
    assert assert_all_retained(moto_server, bucket, "GOVERNANCE", started + timedelta(days=DAYS)) >= 5
    lws.configure(url, lock_options(moto_server))  # the admin host restores
    lws.restore_matches("restored")


def test_forget_prune_keeps_locked_objects_then_a_later_prune_deletes_them(
    lws: LockWorkspace, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = locked_bucket(moto_server)
    lws.configure(f"s3://{bucket}/node1", lock_options(moto_server))
    started = datetime.now(timezone.utc)
    lws.ok("init")
    lws.ok("backup")
    first_snapshots = set(keys(moto_server, bucket, "node1/snapshots/"))
    make_data(lws.data, seed=2)  # new big.bin: the first snapshot's pack becomes unreferenced
    lws.ok("backup")
    assert_all_retained(moto_server, bucket, "GOVERNANCE", started + timedelta(days=DAYS))
    packs_before = keys(moto_server, bucket, "node1/data/")
    index_before = keys(moto_server, bucket, "node1/index/")

    r = lws.ok("forget", "--keep-last", "1", "--prune", "--json")
    report = r.json()["prune"]
    assert len(r.json()["removed"]) == 1
    assert report["kept_locked"] >= 1 and report["packs_deleted"] == 0 and report["packs_repacked"] == 0
    assert report["retention_extended"] == 0  # everything is fresh: nothing due yet
    assert keys(moto_server, bucket, "node1/data/") == packs_before  # locked packs stay
    assert keys(moto_server, bucket, "node1/index/") == index_before  # nothing deleted: no new index needed
    # The forgotten manifest left the repository, but its retained version is still in
    # the bucket (recoverable by removing the delete marker).
    forgotten = (first_snapshots - set(keys(moto_server, bucket, "node1/snapshots/"))).pop()
    versions = moto_server.client().list_object_versions(Bucket=bucket, Prefix=forgotten)["Versions"]
    assert [v["Key"] for v in versions] == [forgotten]
    lws.ok("verify", "--read-data")  # the locked, unreferenced pack is still indexed and intact
    lws.restore_matches("restored-1")
    text = lws.ok("prune").out
    assert "kept because still under retention" in text

    # Days later: the retention of the old pack has passed, a later prune deletes it and
    # extends the retention of everything still referenced.
    later = datetime.now(timezone.utc) + timedelta(days=DAYS + 1)
    monkeypatch.setattr("drkit.services.prune.utc_now", lambda: later)
    report = lws.ok("prune", "--json").json()
    assert report["kept_locked"] == 0
    assert report["packs_deleted"] + report["packs_repacked"] >= 1
    packs_after = keys(moto_server, bucket, "node1/data/")
    assert len(set(packs_before) - set(packs_after)) >= 1
    # The superseded index files are gone too (the repack's own interim file, written
    # just now and so retained, stays superseded until a later prune).
    assert not set(index_before) & set(keys(moto_server, bucket, "node1/index/"))
    superseded = superseded_index_keys(moto_server, bucket)
    live = assert_all_retained(moto_server, bucket, "GOVERNANCE", later + timedelta(days=DAYS), skip=superseded)
    assert report["retention_extended"] == live  # by that clock even the new index was due
    lws.ok("verify", "--read-data")
    lws.restore_matches("restored-2")
    # Idempotent: nothing more to do, nothing due.
    again = lws.ok("prune", "--json").json()
    assert (again["packs_deleted"], again["orphans_deleted"], again["retention_extended"], again["kept_locked"]) == (0, 0, 0, 0)


def test_prune_extends_objects_written_without_retention(lws: LockWorkspace, moto_server: MotoServer) -> None:
    """A repository that got object_lock later: prune (here from 'forget --prune' with
    nothing to forget) brings every referenced object under protection
    (PutObjectRetention), none are deleted."""
    bucket = locked_bucket(moto_server)
    url = f"s3://{bucket}/node1"
    lws.configure(url, moto_server.options(multipart_threshold_mib=5, multipart_chunk_mib=5))
    lws.ok("init")
    lws.ok("backup")
    assert all(lock_fields(moto_server, bucket, k) == (None, None) for k in keys(moto_server, bucket))
    lws.configure(url, lock_options(moto_server, mode="COMPLIANCE"))
    start = datetime.now(timezone.utc)
    report = lws.ok("prune", "--dry-run", "--json").json()
    assert report["retention_extended"] >= 5
    assert all(lock_fields(moto_server, bucket, k) == (None, None) for k in keys(moto_server, bucket))  # dry run
    # A scheduled 'forget --prune' that forgets nothing still prunes (and so extends).
    done = lws.ok("forget", "--keep-within", "30d", "--prune", "--json").json()
    assert done["removed"] == [] and done["prune"] is not None
    count = assert_all_retained(moto_server, bucket, "COMPLIANCE", start + timedelta(days=DAYS))
    assert done["prune"]["retention_extended"] == count
    lws.restore_matches("restored")


# -- superseded index files (repository) --------------------------------------------------


def test_superseded_index_file_left_behind_does_not_resurrect_deleted_packs(lws: LockWorkspace) -> None:
    """prune that may not delete index files (as under retention) still deletes packs; the
    old index files listing them stay, and loading the index ignores them."""
    lws.write_config()
    lws.ok("init")
    lws.ok("backup")
    make_data(lws.data, seed=3)
    lws.ok("backup")
    lws.ok("forget", "--keep-last", "1")
    storage = wrap_storage(LocalStorage(lws.repo))
    repo = Repository.open(storage, PASSWORD)
    repo.load_index()
    old_files = set(repo.index.files)
    report = prune(repo, may_delete=lambda name: not name.startswith(layout.INDEX))
    assert report.packs_deleted + report.packs_repacked >= 1
    stored_index = {layout.id_of(i.name) for i in storage.list(layout.INDEX)}
    assert old_files < stored_index  # the old files are still there
    repo.load_index()
    # Superseded: the old files and any interim file of the repack; loaded: only the new one.
    assert old_files <= repo.superseded_index_files and len(repo.index.files) == 1
    assert stored_index == repo.superseded_index_files | repo.index.files
    stored_packs = {layout.id_of(i.name) for i in storage.list(layout.DATA)}
    assert set(repo.index.packs()) <= stored_packs  # nothing indexed is missing
    lws.ok("verify", "--read-data")
    lws.restore_matches("restored")
    # A later prune allowed to delete them removes them (and nothing else).
    assert prune(repo).packs_deleted == 0
    assert {layout.id_of(i.name) for i in storage.list(layout.INDEX)} == repo.index.files
    assert {layout.id_of(i.name) for i in storage.list(layout.DATA)} == stored_packs


def test_prune_removes_stale_temporaries_through_the_wrappers(lws: LockWorkspace) -> None:
    """prune reaches the backend's remove_stale_temporaries through unwrap()."""
    from drkit.storage.local import TEMP_PREFIX

    lws.write_config()
    lws.ok("init")
    lws.ok("backup")
    leftover = lws.repo / "data" / f"{TEMP_PREFIX}crashed.1234"
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"half a pack")
    report = lws.ok("prune", "--json").json()
    assert report["temporaries_removed"] == 1 and not leftover.exists()
    assert report["kept_locked"] == 0 and report["retention_extended"] == 0  # no retention on a local disk
    lws.restore_matches("restored")


def test_objects_written_with_an_expired_retention_are_pruned_and_live_ones_extended(
    lws: LockWorkspace, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first snapshot is written with a clock 10 days back, so its retention has already
    passed; the second with the real clock. Forgetting the first and pruning repacks /
    deletes its data and its index file, keeps the second's (locked, superseded) index
    file, and extends config and key slots (still referenced, retention passed)."""
    bucket = locked_bucket(moto_server)
    lws.configure(f"s3://{bucket}/node1", lock_options(moto_server))
    past = datetime.now(timezone.utc) - timedelta(days=10)
    from drkit.storage import s3

    real_clock = s3.utc_now
    monkeypatch.setattr(s3, "utc_now", lambda: past)
    lws.ok("init")
    lws.ok("backup")
    # Only the clock goes back (monkeypatch.undo() also dropped the test's own state and
    # cache directories, and drkit then wrote to /var/lib/drkit and /var/cache/drkit).
    monkeypatch.setattr(s3, "utc_now", real_clock)
    assert_all_retained(moto_server, bucket, "GOVERNANCE", past + timedelta(days=DAYS))
    first_index = set(keys(moto_server, bucket, "node1/index/"))
    make_data(lws.data, seed=2)
    start = datetime.now(timezone.utc)
    lws.ok("backup")
    second_index = set(keys(moto_server, bucket, "node1/index/")) - first_index

    report = lws.ok("forget", "--keep-last", "1", "--prune", "--json").json()["prune"]
    assert report["packs_deleted"] + report["packs_repacked"] >= 1
    assert report["kept_locked"] == len(second_index)  # the second backup's index file
    assert report["retention_extended"] >= 2  # config and the key slot
    index_now = set(keys(moto_server, bucket, "node1/index/"))
    assert not index_now & first_index and second_index < index_now
    # Everything left is protected until about now + days (extended or freshly written).
    assert_all_retained(moto_server, bucket, "GOVERNANCE", start + timedelta(days=DAYS))
    lws.ok("verify", "--read-data")
    lws.restore_matches("restored-1")
    make_data(lws.data, seed=4)
    lws.ok("backup")  # the superseded-but-present index file does not disturb a backup
    lws.ok("verify", "--read-data")
    lws.restore_matches("restored-2")


def test_forget_and_prune_with_the_admin_host_policy(lws: LockWorkspace, moto_server: MotoServer, moto_signs_slashes: None) -> None:
    """config/iam/admin-host-policy.json is enough for forget + prune with Object Lock
    (delete, HeadObject, PutObjectRetention); no bypass of governance retention."""
    bucket = locked_bucket(moto_server)
    url = f"s3://{bucket}/node1"
    lws.configure(url, lock_options(moto_server))
    lws.ok("init")
    lws.ok("backup")
    make_data(lws.data, seed=5)
    lws.ok("backup")
    packs = keys(moto_server, bucket, "node1/data/")
    lws.configure(url, lock_options(moto_server, **shipped_policy_user(moto_server, bucket, "admin-host-policy.json")))
    with iam_enforced(moto_server):
        r = lws.ok("forget", "--keep-last", "1", "--prune", "--json")
        assert r.json()["prune"]["kept_locked"] >= 1 and len(r.json()["removed"]) == 1
        # The policy allows listing multipart uploads: stale ones are cleaned up quietly.
        assert "could not remove stale temporaries" not in r.err and "Traceback" not in r.err
        lws.restore_matches("restored")
    assert keys(moto_server, bucket, "node1/data/") == packs
    assert not [k for k in keys(moto_server, bucket) if k.startswith("node1/locks/")]


def test_retention_calls_are_retried_through_the_wrappers(moto_server: MotoServer) -> None:
    """HeadObject and PutObjectRetention go through the retry wrapper: 503 SlowDown and a
    reset connection are retried, the answer is the store's."""
    from tests.servers.faults import HttpFaultProxy

    bucket = locked_bucket(moto_server)
    proxy = HttpFaultProxy(moto_server.host, moto_server.port)
    storage = wrap_storage(S3Storage(f"s3://{bucket}/node1", lock_options(moto_server, endpoint_url=proxy.endpoint_url, max_attempts=1)), FAST_RETRY)
    try:
        storage.put("config", b"cfg")
        cap = retention_of(storage)
        assert cap is not None
        head = proxy.add("slowdown", method="HEAD", path=r"/node1/config", times=2)
        until = cap.retained_until("config")
        assert head.hits == 2 and until == lock_fields(moto_server, bucket, "node1/config")[1]
        later = datetime.now(timezone.utc) + timedelta(days=DAYS + 3)
        put = proxy.add("reset", method="PUT", path=r"retention", times=1)
        cap.extend_retention("config", later)
        assert put.hits == 1
        assert abs(lock_fields(moto_server, bucket, "node1/config")[1] - later) < timedelta(seconds=1)  # type: ignore[operator]
    finally:
        storage.close()
        proxy.close()
