"""``drkit copy`` between real repositories with different keys (local, and local -> S3 over moto's HTTP server)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from drkit.metrics import parse_textfile
from drkit.repository.repo import Repository
from drkit.storage.local import LocalStorage
from tests.cli import Runner
from tests.services.conftest import damage_blob_of, make_tree, restored_files, write_config

PASS_A = "source passphrase A"
PASS_B = "destination passphrase B"
ENV_A = {"DRKIT_PASSWORD": PASS_A}


def _setup(tmp_path: Path, drkit: Runner, tree: tuple[Path, dict[str, bytes]]) -> tuple[Path, Path, Path]:
    root, _ = tree
    sources = [{"name": "data", "type": "files", "paths": [str(root)]}]
    a = write_config(tmp_path / "a.yaml", str(tmp_path / "repo-a"), sources)
    b = write_config(tmp_path / "b.yaml", str(tmp_path / "repo-b"), sources)  # restore needs the source
    assert drkit("-c", str(a), "init", env=ENV_A).code == 0
    assert drkit("-c", str(b), "init", env={"DRKIT_PASSWORD": PASS_B}).code == 0
    r = drkit("-c", str(a), "backup", "--tag", "nightly", env=ENV_A)
    assert r.code == 0, r.err
    return a, b, tmp_path / "repo-b"


def _snapshots(drkit: Runner, cfg: Path, password: str) -> list[dict[str, Any]]:
    r = drkit("-c", str(cfg), "snapshots", "--json", env={"DRKIT_PASSWORD": password})
    assert r.code == 0, r.err
    return json.loads(r.out)


def _object_names(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "locks" not in p.parts}


def test_copy_reencrypts_restores_byte_equal_and_second_copy_adds_nothing(
    tmp_path: Path, drkit: Runner, tree: tuple[Path, dict[str, bytes]]
) -> None:
    root, files = tree
    a, b, repo_b = _setup(tmp_path, drkit, tree)
    to_env = {**ENV_A, "DRKIT_TO_PASSWORD": PASS_B}

    r = drkit("-c", str(a), "copy", "--to", str(b), "--json", env=to_env)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert (report["copied"], report["skipped"], report["failed"]) == (1, 0, 0)
    item = report["snapshots"][0]
    assert item["bytes_read"] == sum(len(v) for v in files.values())
    assert item["bytes_added"] >= item["bytes_read"]  # the destination had nothing (+ the tree blobs)

    src_snaps = _snapshots(drkit, a, PASS_A)
    dst_snaps = _snapshots(drkit, b, PASS_B)
    assert len(dst_snaps) == 1
    s, d = src_snaps[0], dst_snaps[0]
    assert d["id"] != s["id"] and item["copy"] == d["id"]
    for key in ("time", "source", "source_type", "run", "host", "tags", "paths"):
        assert d[key] == s[key], key
    assert d["tags"] == ["nightly"]

    # copied_from is recorded in the destination manifest (read with B's key)
    dst = Repository.open(LocalStorage(repo_b), PASS_B)
    copy = dst.load_snapshot(d["id"])
    src_repo = Repository.open(LocalStorage(tmp_path / "repo-a"), PASS_A)
    assert copy.meta["copied_from"]["repository"] == src_repo.config["id"]
    assert copy.meta["copied_from"]["snapshot"] == s["id"]
    # different keys: the chunk ids of the two trees share nothing
    assert not set(copy.tree) & set(src_repo.load_snapshot(s["id"]).tree)
    # A's passphrase does not open B
    assert drkit("-c", str(b), "snapshots", env=ENV_A).code == 5

    # restore from the copy: every byte, the symlink and the mode
    target = tmp_path / "restored"
    r = drkit("-c", str(b), "restore", "latest", "-s", "data", "--target", str(target), env={"DRKIT_PASSWORD": PASS_B})
    assert r.code == 0, r.err
    assert restored_files(target, root) == files
    base = target / str(root).lstrip("/")
    assert (base / "link-to-readme").is_symlink() and str((base / "link-to-readme").readlink()) == "readme.txt"
    assert (base / "etc/app/config.yaml").stat().st_mode & 0o777 == 0o600

    # a drill of the destination passes: the copy restores and re-hashes
    r = drkit("-c", str(b), "drill", "--json", env={"DRKIT_PASSWORD": PASS_B})
    assert r.code == 0, r.err
    assert json.loads(r.out)["sources"][0]["snapshot"] == d["id"]

    # second copy: nothing new, no snapshot, no object written
    before = _object_names(repo_b)
    r = drkit("-c", str(a), "copy", "--to", str(b), "--json", env=to_env)
    assert r.code == 0, r.err
    again = json.loads(r.out)
    assert (again["copied"], again["skipped"]) == (0, 1)
    assert again["snapshots"][0]["copy"] == d["id"]
    assert _object_names(repo_b) == before
    assert len(_snapshots(drkit, b, PASS_B)) == 1


def test_incremental_copy_reuses_the_earlier_copy_and_url_destination(
    tmp_path: Path, drkit: Runner, tree: tuple[Path, dict[str, bytes]]
) -> None:
    root, files = tree
    a, b, repo_b = _setup(tmp_path, drkit, tree)
    to_env = {**ENV_A, "DRKIT_TO_PASSWORD": PASS_B}
    assert drkit("-c", str(a), "copy", "--to", str(repo_b), env=to_env).code == 0  # a URL (plain path)

    (root / "new.txt").write_bytes(b"added later\n")
    assert drkit("-c", str(a), "backup", env=ENV_A).code == 0
    r = drkit("-c", str(a), "copy", "--to", str(repo_b), "--json", env=to_env)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert (report["copied"], report["skipped"]) == (1, 1)
    item = next(i for i in report["snapshots"] if i["status"] == "copied")
    assert item["bytes_read"] == len(b"added later\n")  # unchanged files were not read again
    assert item["bytes_reused"] == sum(len(v) for v in files.values())
    assert item["bytes_added"] < 16 * 1024  # the new file and the new tree, nothing of the old data

    target = tmp_path / "restored2"
    r = drkit("-c", str(b), "restore", "latest", "-s", "data", "--target", str(target), env={"DRKIT_PASSWORD": PASS_B})
    assert r.code == 0, r.err
    assert restored_files(target, root) == {**files, "new.txt": b"added later\n"}
    dst_snaps = _snapshots(drkit, b, PASS_B)
    dst = Repository.open(LocalStorage(repo_b), PASS_B)
    newest = dst.load_snapshot(dst_snaps[-1]["id"])
    assert newest.parent == dst_snaps[0]["id"]  # parent chain follows the source's


def test_copy_records_metrics_per_source(tmp_path: Path, drkit: Runner, tree: tuple[Path, dict[str, bytes]]) -> None:
    a, b, repo_b = _setup(tmp_path, drkit, tree)
    prom = tmp_path / "drkit.prom"
    doc = yaml.safe_load(a.read_text())
    doc["metrics"] = {"textfile": str(prom)}
    a.write_text(yaml.safe_dump(doc))
    assert drkit("-c", str(a), "copy", "--to", str(b), env={**ENV_A, "DRKIT_TO_PASSWORD": PASS_B}).code == 0
    series = parse_textfile(prom.read_text())
    ok = series[("drkit_last_success_timestamp_seconds", (("command", "copy"), ("source", "data")))]
    assert abs(ok - time.time()) < 60
    damage_blob_of(tmp_path / "repo-a", PASS_A, "data/blob.bin")
    (tree[0] / "more.txt").write_text("more\n")
    assert drkit("-c", str(a), "backup", env=ENV_A).code == 0
    # the new snapshot reuses the earlier copy for unchanged files: damage in them is not read
    assert drkit("-c", str(a), "copy", "--to", str(b), env={**ENV_A, "DRKIT_TO_PASSWORD": PASS_B}).code == 0


def test_source_filter_and_snapshot_refs(tmp_path: Path, drkit: Runner) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    f1, f2 = make_tree(one), {"x.txt": b"two\n"}
    (two / "x.txt").write_bytes(b"two\n")
    sources = [
        {"name": "one", "type": "files", "paths": [str(one)]},
        {"name": "two", "type": "files", "paths": [str(two)]},
    ]
    a = write_config(tmp_path / "a.yaml", str(tmp_path / "repo-a"), sources)
    b = write_config(tmp_path / "b.yaml", str(tmp_path / "repo-b"), sources)
    assert drkit("-c", str(a), "init", env=ENV_A).code == 0
    assert drkit("-c", str(b), "init", env={"DRKIT_PASSWORD": PASS_B}).code == 0
    assert drkit("-c", str(a), "backup", env=ENV_A).code == 0
    assert drkit("-c", str(a), "backup", env=ENV_A).code == 0
    to_env = {**ENV_A, "DRKIT_TO_PASSWORD": PASS_B}

    r = drkit("-c", str(a), "copy", "--to", str(b), "--source", "two", "latest", "--json", env=to_env)
    assert r.code == 0, r.err
    assert [i["source"] for i in json.loads(r.out)["snapshots"]] == ["two"]
    assert [s["source"] for s in _snapshots(drkit, b, PASS_B)] == ["two"]

    r = drkit("-c", str(a), "copy", "--to", str(b), "--source", "nope", env=to_env)
    assert r.code == 2 and "no snapshot of source 'nope'" in r.err

    first_one = next(s for s in _snapshots(drkit, a, PASS_A) if s["source"] == "one")
    r = drkit("-c", str(a), "copy", "--to", str(b), first_one["id"][:10], "--json", env=to_env)
    assert r.code == 0, r.err
    assert [i["snapshot"] for i in json.loads(r.out)["snapshots"]] == [first_one["id"]]

    r = drkit("-c", str(a), "copy", "--to", str(b), "--json", env=to_env)  # the rest: one's second, two's first
    report = json.loads(r.out)
    assert (report["copied"], report["skipped"]) == (2, 2)
    assert sorted(s["source"] for s in _snapshots(drkit, b, PASS_B)) == ["one", "one", "two", "two"]

    r = drkit("-c", str(a), "copy", "--to", str(b), "deadbeef", env=to_env)
    assert r.code == 2 and "no snapshot matches 'deadbeef'" in r.err
    target = tmp_path / "r"
    r = drkit("-c", str(b), "restore", first_one["id"][:8], "-s", "one", "--target", str(target),
              env={"DRKIT_PASSWORD": PASS_B})
    # the copy has a new id: the source id does not name it in the destination
    assert r.code == 2
    r = drkit("-c", str(b), "restore", "latest", "-s", "one", "--target", str(target), env={"DRKIT_PASSWORD": PASS_B})
    assert r.code == 0 and restored_files(target, one) == f1
    del f2


def test_damage_in_the_source_fails_loudly_and_copies_nothing_broken(
    tmp_path: Path, drkit: Runner, tree: tuple[Path, dict[str, bytes]]
) -> None:
    a, b, repo_b = _setup(tmp_path, drkit, tree)
    pack = damage_blob_of(tmp_path / "repo-a", PASS_A, "data/blob.bin")
    r = drkit("-c", str(a), "copy", "--to", str(b), env={**ENV_A, "DRKIT_TO_PASSWORD": PASS_B})
    assert r.code == 6, (r.out, r.err)
    assert "damaged object data/" in r.err and pack.name in r.err
    assert "not copied" in r.err
    assert _snapshots(drkit, b, PASS_B) == []  # no manifest for a snapshot whose data is bad


def test_destination_errors_are_one_line(tmp_path: Path, drkit: Runner, tree: tuple[Path, dict[str, bytes]]) -> None:
    a, b, repo_b = _setup(tmp_path, drkit, tree)
    r = drkit("-c", str(a), "copy", "--to", str(b), env=ENV_A)
    assert r.code == 2 and "DRKIT_TO_PASSWORD" in r.err
    r = drkit("-c", str(a), "copy", "--to", str(b), env={**ENV_A, "DRKIT_TO_PASSWORD": "wrong"})
    assert r.code == 5
    r = drkit("-c", str(a), "copy", "--to", str(tmp_path / "nowhere"), env={**ENV_A, "DRKIT_TO_PASSWORD": PASS_B})
    assert r.code == 3 and "no drkit repository" in r.err
    r = drkit("-c", str(a), "copy", "--to", str(a), env={**ENV_A, "DRKIT_TO_PASSWORD": PASS_A})
    assert r.code == 2 and "same repository" in r.err
    pw = tmp_path / "b.pass"
    pw.write_text(PASS_B + "\n")
    pw.chmod(0o600)
    b2 = write_config(tmp_path / "b2.yaml", str(repo_b))
    doc = b2.read_text().replace("pack_size_mib: 1", f"pack_size_mib: 1\n  password_file: {pw}")
    b2.write_text(doc)
    r = drkit("-c", str(a), "copy", "--to", str(b2), env={**ENV_A, "DRKIT_TO_PASSWORD": PASS_B})
    assert r.code == 2 and "more than one place" in r.err
    r = drkit("-c", str(a), "copy", "--to", str(b2), env=ENV_A)  # the destination config's password_file
    assert r.code == 0, r.err
    assert PASS_B not in r.out + r.err


def test_copy_local_to_s3_over_moto_http(tmp_path: Path, drkit: Runner, tree: tuple[Path, dict[str, bytes]],
                                         moto_server: Any) -> None:
    root, files = tree
    sources = [{"name": "data", "type": "files", "paths": [str(root)]}]
    a = write_config(tmp_path / "a.yaml", str(tmp_path / "repo-a"), sources)
    bucket = moto_server.new_bucket()
    s3 = write_config(tmp_path / "s3.yaml", f"s3://{bucket}/offsite", sources)
    doc = yaml.safe_load(s3.read_text())
    doc["repository"]["s3"] = moto_server.options()
    s3.write_text(yaml.safe_dump(doc))
    env_s3 = {"DRKIT_PASSWORD": PASS_B}
    assert drkit("-c", str(a), "init", env=ENV_A).code == 0
    r = drkit("-c", str(s3), "init", env=env_s3)
    assert r.code == 0, r.err
    assert drkit("-c", str(a), "backup", env=ENV_A).code == 0

    r = drkit("-c", str(a), "copy", "--to", str(s3), "--json", env={**ENV_A, "DRKIT_TO_PASSWORD": PASS_B})
    assert r.code == 0, r.err
    assert json.loads(r.out)["copied"] == 1
    keys = [o["Key"] for o in moto_server.client().list_objects_v2(Bucket=bucket, Prefix="offsite/").get("Contents", [])]
    assert any(k.startswith("offsite/data/") for k in keys) and any(k.startswith("offsite/snapshots/") for k in keys)
    assert not any(k.startswith("offsite/locks/") for k in keys)  # both locks released

    target = tmp_path / "from-s3"
    r = drkit("-c", str(s3), "restore", "latest", "-s", "data", "--target", str(target), env=env_s3)
    assert r.code == 0, r.err
    assert restored_files(target, root) == files

    count = len(keys)
    r = drkit("-c", str(a), "copy", "--to", str(s3), "--json", env={**ENV_A, "DRKIT_TO_PASSWORD": PASS_B})
    assert r.code == 0 and json.loads(r.out)["skipped"] == 1
    keys2 = [o["Key"] for o in moto_server.client().list_objects_v2(Bucket=bucket, Prefix="offsite/").get("Contents", [])]
    assert len(keys2) == count


def test_damaged_source_manifest_copies_the_rest_and_fails(tmp_path: Path, drkit: Runner,
                                                           tree: tuple[Path, dict[str, bytes]]) -> None:
    a, b, repo_b = _setup(tmp_path, drkit, tree)
    (tree[0] / "x").write_text("x\n")
    assert drkit("-c", str(a), "backup", env=ENV_A).code == 0
    first = _snapshots(drkit, a, PASS_A)[0]["id"]
    manifest = tmp_path / "repo-a" / "snapshots" / first
    manifest.chmod(0o644)
    manifest.write_bytes(manifest.read_bytes()[:-1] + b"\x00")
    r = drkit("-c", str(a), "copy", "--to", str(b), env={**ENV_A, "DRKIT_TO_PASSWORD": PASS_B})
    assert r.code == 6
    assert f"damaged object snapshots/{first}" in r.err and "were not copied" in r.err
    assert len(_snapshots(drkit, b, PASS_B)) == 1  # the readable one was copied


def test_copy_s3_to_sftp_chain(tmp_path: Path, drkit: Runner, tree: tuple[Path, dict[str, bytes]],
                               moto_server: Any, sshd: Any) -> None:
    """local -> S3 -> SFTP: a copy of a copy restores the same bytes, and copying the
    copy back to the S3 repository adds nothing."""
    root, files = tree
    sources = [{"name": "data", "type": "files", "paths": [str(root)]}]
    a = write_config(tmp_path / "a.yaml", str(tmp_path / "repo-a"), sources)
    s3 = write_config(tmp_path / "s3.yaml", f"s3://{moto_server.new_bucket()}/r", sources)
    doc = yaml.safe_load(s3.read_text())
    doc["repository"]["s3"] = moto_server.options()
    s3.write_text(yaml.safe_dump(doc))
    sftp = write_config(tmp_path / "sftp.yaml", sshd.url(f"~/copy-{tmp_path.name}"), sources)
    doc = yaml.safe_load(sftp.read_text())
    doc["repository"]["sftp"] = {"key_file": str(sshd.key_file), "known_hosts_file": str(sshd.known_hosts_file),
                                 "allow_agent": False}
    sftp.write_text(yaml.safe_dump(doc))
    pw_c = "third passphrase"
    assert drkit("-c", str(a), "init", env=ENV_A).code == 0
    assert drkit("-c", str(s3), "init", env={"DRKIT_PASSWORD": PASS_B}).code == 0
    r = drkit("-c", str(sftp), "init", env={"DRKIT_PASSWORD": pw_c})
    assert r.code == 0, r.err
    assert drkit("-c", str(a), "backup", env=ENV_A).code == 0
    assert drkit("-c", str(a), "copy", "--to", str(s3), env={**ENV_A, "DRKIT_TO_PASSWORD": PASS_B}).code == 0
    r = drkit("-c", str(s3), "copy", "--to", str(sftp), "--json", env={"DRKIT_PASSWORD": PASS_B, "DRKIT_TO_PASSWORD": pw_c})
    assert r.code == 0, r.err
    assert json.loads(r.out)["copied"] == 1
    target = tmp_path / "from-sftp"
    r = drkit("-c", str(sftp), "restore", "latest", "-s", "data", "--target", str(target), env={"DRKIT_PASSWORD": pw_c})
    assert r.code == 0, r.err
    assert restored_files(target, root) == files
    # back from SFTP to S3: the snapshot there is the one it was copied from
    r = drkit("-c", str(sftp), "copy", "--to", str(s3), "--json", env={"DRKIT_PASSWORD": pw_c, "DRKIT_TO_PASSWORD": PASS_B})
    assert r.code == 0, r.err
    back = json.loads(r.out)
    assert (back["copied"], back["skipped"]) == (0, 1)
    assert "the destination holds the same snapshot" in back["snapshots"][0]["reason"]
    # and from the original straight to SFTP: the copy of the copy counts as the same snapshot
    r = drkit("-c", str(a), "copy", "--to", str(sftp), "--json", env={**ENV_A, "DRKIT_TO_PASSWORD": pw_c})
    assert r.code == 0, r.err
    direct = json.loads(r.out)
    assert (direct["copied"], direct["skipped"]) == (0, 1)
