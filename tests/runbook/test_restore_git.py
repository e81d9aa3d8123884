"""``restore-git`` end to end, everything real: a GitOps repository (branches, an
annotated tag, notes) backed up by the ``git`` source with ``drkit backup``, restored by the runbook with
``drkit restore``, checked with ``git fsck``, mirror-pushed to a new bare remote whose
refs must then equal the original's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from drkit.runbook.journal import Journal
from tests.conftest import require_binary


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=60,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@x", "HOME": str(cwd or "/tmp"), "PATH": "/usr/bin:/bin"}).stdout


def refs(repo: Path) -> str:
    return git("-C", str(repo), "for-each-ref", "--format=%(objectname) %(refname)")


def test_restore_git_runbook(tmp_path, drkit):
    require_binary("git")
    work = tmp_path / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", str(work), cwd=tmp_path)
    for i in range(3):
        (work / f"app{i}.yaml").write_text(f"replicas: {i}\n")
        git("-C", str(work), "add", ".", cwd=tmp_path)
        git("-C", str(work), "commit", "-q", "-m", f"c{i}", cwd=tmp_path)
    git("-C", str(work), "tag", "-a", "v1", "-m", "release", cwd=tmp_path)
    git("-C", str(work), "notes", "add", "-m", "deployed", "HEAD", cwd=tmp_path)
    git("-C", str(work), "branch", "staging", "HEAD~1", cwd=tmp_path)
    origin = tmp_path / "gitops.git"
    git("clone", "-q", "--mirror", str(work), str(origin), cwd=tmp_path)
    (tmp_path / "pw").write_text("pw\n")
    (tmp_path / "pw").chmod(0o600)
    config = tmp_path / "drkit.yaml"
    config.write_text(yaml.safe_dump({
        "repository": {"url": str(tmp_path / "repo"), "password_file": str(tmp_path / "pw")},
        "sources": [{"name": "gitops", "type": "git", "url": f"file://{origin}", "cache_dir": str(tmp_path / "cache")}],
    }))
    config.chmod(0o600)
    assert drkit("-c", config, "init").code == 0
    assert drkit("-c", config, "backup").code == 0

    new_remote = tmp_path / "new-remote.git"
    git("init", "-q", "--bare", str(new_remote), cwd=tmp_path)
    restore_dir = tmp_path / "restored"
    args = ["-c", config, "runbook", "run", "restore-git", "--state-dir", tmp_path / "state",
            "--var", f"restore_dir={restore_dir}", "--var", f"push_url={new_remote}"]
    r = drkit(*args)
    assert r.code == 0, r.text
    assert {s.name: s.status for s in Journal.latest(tmp_path / "state").steps} == {
        "restored": "changed", "fsck": "ok", "pushed": "changed"}
    assert refs(restore_dir) == refs(origin)
    assert refs(new_remote) == refs(origin)
    assert "refs/notes/commits" in refs(new_remote) and "refs/tags/v1" in refs(new_remote)

    r2 = drkit(*args)
    assert r2.code == 0, r2.text
    assert "nothing changed: every step already held" in r2.out

    # a push that cannot work fails with the runbook's hint
    r3 = drkit(*args[:-2], "--var", f"push_url={tmp_path / 'missing.git'}")
    assert r3.code == 7
    assert "step 'pushed' failed" in r3.err and f"check that {tmp_path / 'missing.git'} exists" in r3.err
