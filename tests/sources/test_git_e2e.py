"""git source end to end through the real CLI and repository: two runs, the second
adding about only the new objects (measured against storing a bundle), restore of both
snapshots compared ref for ref, and restore by --push-to."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.sources.cli_helper import DrkitCli
from tests.sources.git_repos import ENV, add_commits, make_gitops_repo, refs_of, run_git


def _fsck(repo: Path) -> None:
    subprocess.run(["git", "-C", str(repo), "fsck", "--full", "--no-dangling"], check=True, capture_output=True, env=ENV)


def test_git_two_runs_restore_and_push(tmp_path: Path) -> None:
    origin = make_gitops_repo(tmp_path / "origin.git", commits=1500)
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    d = DrkitCli.setup(tmp_path / "drkit", [
        {"name": "gitops", "type": "git", "url": str(origin), "cache_dir": str(tmp_path / "cache")},
        # the alternative design, measured: a fresh `git bundle create --all` stored each run
        {"name": "bundle", "type": "files", "paths": [str(bundle_dir)]},
    ])

    def bundle() -> None:
        subprocess.run(["git", "-C", str(origin), "bundle", "create", "-q", str(bundle_dir / "repo.bundle"), "--all"],
                       check=True, env=ENV, capture_output=True)

    bundle()
    refs1 = refs_of(origin)
    first = d.backup()
    add_commits(origin, "main", 10, 5000)
    run_git(origin, "tag", "-a", "-m", "release 1.0", "v1.0.0", "main")
    run_git(origin, "notes", "add", "-m", "deployed", "main")
    refs2 = refs_of(origin)
    bundle()
    second = d.backup()

    mirror_added, bundle_added = second["gitops"]["bytes_added"], second["bundle"]["bytes_added"]
    print(f"\nsecond run bytes_added: mirror {mirror_added}, bundle {bundle_added} "
          f"(first run: mirror {first['gitops']['bytes_added']}, bundle {first['bundle']['bytes_added']})")
    new_pack = max((tmp_path / "cache/mirror.git/objects/pack").glob("*.pack"),
                   key=lambda p: p.stat().st_mtime_ns).stat().st_size
    assert mirror_added < new_pack * 3 + 64 * 1024, (mirror_added, new_pack)
    assert mirror_added < first["gitops"]["bytes_added"] / 5
    assert mirror_added < bundle_added  # why the mirror design was picked

    import json

    snaps = [s for s in json.loads(d.ok("snapshots", "--json").stdout) if s["source"] == "gitops"]
    assert len(snaps) == 2
    for snap, expected, name in ((snaps[0], refs1, "r1"), (snaps[1], refs2, "r2")):
        target = tmp_path / name
        out = d.restore_json(snap["id"], "-s", "gitops", "--target", str(target))
        assert refs_of(target) == expected
        _fsck(target)
        assert out["details"]["ref_count"] == len(expected)
        assert any(f"{len(expected)} refs" in line for line in out["lines"])

    remote = tmp_path / "fresh-remote.git"
    subprocess.run(["git", "init", "--bare", "-q", str(remote)], check=True, env=ENV)
    out = d.restore_json("latest", "-s", "gitops", "--push-to", str(remote))
    assert refs_of(remote) == refs2
    _fsck(remote)
    assert any("mirror-pushed" in line for line in out["lines"])
