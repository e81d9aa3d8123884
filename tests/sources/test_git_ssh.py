"""git source over SSH against a real OpenSSH sshd: key from ssh_key_file, host key
checked against ssh_known_hosts_file, backup, restore and --push-to over ssh://."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from drkit.errors import DrkitError
from drkit.sources import build_source
from drkit.sources.git import GitSource
from tests.conftest import require_binary
from tests.fixtures.recording import RecordingBackup, RecordingRestore
from tests.servers.sshd import start_sshd
from tests.sources.git_repos import ENV, make_gitops_repo, refs_of


def test_backup_restore_and_push_over_ssh(tmp_path: Path) -> None:
    require_binary("sshd")
    require_binary("ssh")
    server = start_sshd(tmp_path)
    try:
        origin = make_gitops_repo(tmp_path / "origin.git")
        url = f"ssh://{server.user}@{server.host}:{server.port}{origin}"
        spec = {"name": "gitops", "type": "git", "url": url, "cache_dir": str(tmp_path / "cache"),
                "ssh_key_file": str(server.key_file), "ssh_known_hosts_file": str(server.known_hosts_file)}
        src = build_source(spec, key="s")
        assert isinstance(src, GitSource)
        (tmp_path / "scratch").mkdir()
        ctx = RecordingBackup("gitops", tmp_path / "scratch")
        src.backup(ctx)
        assert ctx.meta["refs"] == refs_of(origin)

        target = tmp_path / "restored.git"
        src.restore(RecordingRestore(ctx, target))
        assert refs_of(target) == refs_of(origin)

        remote = tmp_path / "pushed.git"
        subprocess.run(["git", "init", "--bare", "-q", str(remote)], check=True, env=ENV)
        push_url = f"ssh://{server.user}@{server.host}:{server.port}{remote}"
        res = src.restore(RecordingRestore(ctx, None, options={"push_to": push_url}))
        assert refs_of(remote) == refs_of(origin)
        assert res.details["pushed_to"] == push_url

        # an unknown host key is refused (StrictHostKeyChecking=yes), with one clear error
        empty = tmp_path / "known_hosts_empty"
        empty.write_text("")
        strict = build_source({**spec, "ssh_known_hosts_file": str(empty), "cache_dir": str(tmp_path / "c2")},
                              key="s")
        (tmp_path / "scratch2").mkdir()
        with pytest.raises(DrkitError, match="Host key verification failed"):
            strict.backup(RecordingBackup("gitops", tmp_path / "scratch2"))
    finally:
        server.stop()
