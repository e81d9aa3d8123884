"""Real Git repositories for the git source tests (built with fast-import: fast)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ENV = {**os.environ, "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.test", "GIT_COMMITTER_NAME": "T",
       "GIT_COMMITTER_EMAIL": "t@example.test", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}


def run_git(repo: Path, *args: str, input: bytes | None = None) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, input=input,
                          env=ENV, timeout=120).stdout.decode()


def refs_of(repo: Path) -> dict[str, str]:
    out = run_git(repo, "for-each-ref", "--format=%(refname) %(objectname)")
    return dict(line.split(" ", 1)[::1] for line in out.splitlines())  # type: ignore[misc]


def add_commits(repo: Path, branch: str, n: int, start: int, *, size: int = 2000) -> None:
    """Append *n* commits to *branch* (each changes one file and adds one), via fast-import."""
    parent = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "-q", f"refs/heads/{branch}"],
                            capture_output=True, env=ENV).stdout.decode().strip()
    lines = []
    for i in range(start, start + n):
        body = (f"commit {i} of {branch}\n" + "".join(f"line {j} {i * 7919 % 10007}\n" for j in range(size // 12)))
        data = body.encode()
        lines.append(f"commit refs/heads/{branch}\nmark :{i + 1}\n"
                     f"committer T <t@example.test> {1700000000 + i} +0000\n")
        msg = f"commit {i} on {branch}\n".encode()
        lines.append(f"data {len(msg)}\n{msg.decode()}")
        if parent and i == start:
            lines.append(f"from {parent}\n")
        lines.append(f"M 100644 inline apps/app-{i % 40}/values.yaml\ndata {len(data)}\n{data.decode()}\n")
        lines.append(f"M 100644 inline history/{i}.txt\ndata {len(data)}\n{data.decode()}\n")
    subprocess.run(["git", "-C", str(repo), "fast-import", "--quiet"], input="".join(lines).encode(), check=True,
                   env=ENV, timeout=120, capture_output=True)


def make_gitops_repo(path: Path, commits: int = 400) -> Path:
    """A bare repo: main with *commits* commits, 3 branches, annotated + lightweight tags, notes."""
    subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(path)], check=True, env=ENV)
    add_commits(path, "main", commits, 0)
    for k, name in enumerate(("staging", "feature/ingress", "release/1.x")):
        run_git(path, "branch", name, f"main~{(k + 1) * 20}")
        add_commits(path, name, 10, 10000 * (k + 1))
    run_git(path, "tag", "v0.1.0", "main~300")  # lightweight
    run_git(path, "tag", "-a", "-m", "release 0.2.0", "v0.2.0", "main~100")
    run_git(path, "tag", "-a", "-m", "release 0.3.0", "v0.3.0", "main")
    run_git(path, "notes", "add", "-m", "deployed to prod 2026-01-02", "main~5")
    run_git(path, "notes", "--ref", "review", "add", "-m", "reviewed", "main")
    run_git(path, "update-ref", "refs/pipelines/last-green", "main~2")
    return path
