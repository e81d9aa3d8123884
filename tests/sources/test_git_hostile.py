"""#14 case 2: a git snapshot written by a hostile backup host cannot run code on the
admin's machine: hooks and config entries are skipped with a warning, git runs with
hooks disabled, and the restore (and the push) still succeed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from drkit.repository.repo import Repository
from drkit.repository.tree import DIR, FILE, Entry, iter_tree
from drkit.sources.git import git
from drkit.storage import LocalStorage
from tests.foundation.conftest import Result
from tests.hostile.snapshots import write_snapshot
from tests.sources.git_repos import ENV, make_gitops_repo, refs_of

PASSPHRASE = "git hostile passphrase"


def _cli(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> Result:
    from drkit.cli import cli
    from drkit.cli.app import run_cli

    capsys.readouterr()
    code = run_cli(cli, ["-c", str(config), *args])
    out, err = capsys.readouterr()
    return Result(code, out, err)


def test_hooks_and_config_in_a_git_snapshot_are_skipped_and_never_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DRKIT_PASSWORD", PASSPHRASE)
    origin = make_gitops_repo(tmp_path / "origin.git")
    config = tmp_path / "drkit.yaml"
    config.write_text(yaml.safe_dump({
        "repository": {"url": str(tmp_path / "repo")},
        "sources": [{"name": "gitops", "type": "git", "url": str(origin), "cache_dir": str(tmp_path / "cache")}],
    }))
    config.chmod(0o600)
    assert _cli(capsys, config, "init").code == 0
    assert _cli(capsys, config, "backup").code == 0

    repo = Repository.open(LocalStorage(tmp_path / "repo"), PASSPHRASE)
    repo.load_index()
    real = repo.find_snapshot("latest")
    marker = tmp_path / "pwned"
    hook = f"#!/bin/sh\necho owned > {marker}\n".encode()
    evil_config = (f"[core]\n\tbare = true\n\thooksPath = hooks\n\tfsmonitor = \"touch {marker}\"\n"
                   f"[alias]\n\tfsck = !touch {marker}\n").encode()
    entries = [e for e in iter_tree(repo, real) if e.path != "config"]
    entries += [Entry("config", FILE, mode=0o644), Entry("hooks", DIR, mode=0o755),
                Entry("hooks/pre-push", FILE, mode=0o755), Entry("hooks/post-checkout", FILE, mode=0o755),
                Entry("objects/info", DIR, mode=0o755), Entry("objects/info/alternates", FILE, mode=0o644)]
    write_snapshot(repo, entries, {"config": evil_config, "hooks/pre-push": hook, "hooks/post-checkout": hook,
                                   "objects/info/alternates": b"/etc\n"},
                   source="gitops", source_type="git", meta=real.meta)

    remote = tmp_path / "new-remote.git"
    subprocess.run(["git", "init", "--bare", "-q", str(remote)], check=True, env=ENV)
    r = _cli(capsys, config, "restore", "latest", "-s", "gitops", "--push-to", str(remote))
    assert r.code == 0, r.err
    assert not marker.exists(), "a hook or config command from the snapshot ran"
    assert refs_of(remote) == refs_of(origin)
    assert "warning: skipped 7 entries" in r.out and "hooks/pre-push" in r.out and "config" in r.out

    target = tmp_path / "restored.git"
    r = _cli(capsys, config, "restore", "latest", "-s", "gitops", "--target", str(target))
    assert r.code == 0, r.err
    assert not (target / "hooks").exists()
    assert not (target / "objects/info/alternates").exists()
    cfg = (target / "config").read_text()
    assert "hooksPath" not in cfg and "fsmonitor" not in cfg and "alias" not in cfg and "bare = true" in cfg
    assert refs_of(target) == refs_of(origin)
    assert not marker.exists()


def test_git_runs_with_hooks_disabled(tmp_path: Path) -> None:
    marker = tmp_path / "hook-ran"
    repo = tmp_path / "r.git"
    subprocess.run(["git", "init", "--bare", "-q", str(repo)], check=True, env=ENV)
    (repo / "hooks").mkdir(exist_ok=True)
    hook = repo / "hooks" / "reference-transaction"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    os.chmod(hook, 0o755)
    tree = subprocess.run(["git", "-C", str(repo), "mktree"], input=b"", capture_output=True, check=True,
                          env=ENV).stdout.decode().strip()
    commit = subprocess.run(["git", "-C", str(repo), "commit-tree", tree, "-m", "x"], capture_output=True, check=True,
                            env=ENV).stdout.decode().strip()
    git(repo, "update-ref", "refs/heads/main", commit)  # runs the reference-transaction hook unless disabled
    assert not marker.exists()
    subprocess.run(["git", "-C", str(repo), "update-ref", "refs/heads/other", commit], check=True, env=ENV)
    assert marker.exists(), "the hook is live: the test would prove nothing"
