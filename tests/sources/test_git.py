"""git source with real git: every ref survives, a second run stores about only the
new objects, restore into a bare repo and by mirror push, credentials stay hidden."""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from drkit.errors import ConfigError, DrkitError, IntegrityError
from drkit.sources import build_source
from drkit.sources.git import GitSource
from tests.fixtures.recording import RecordingBackup, RecordingRestore
from tests.sources.git_repos import ENV, add_commits, make_gitops_repo, refs_of, run_git


def _source(tmp_path: Path, url: str, **extra: object) -> GitSource:
    src = build_source({"name": "gitops", "type": "git", "url": url, "cache_dir": str(tmp_path / "cache"), **extra},
                       key="sources[0]")
    assert isinstance(src, GitSource)
    return src


def _backup(tmp_path: Path, src: GitSource, seen: set[str], parent: RecordingBackup | None = None,
            n: int = 0) -> RecordingBackup:
    scratch = tmp_path / f"scratch{n}"
    scratch.mkdir()
    ctx = RecordingBackup("gitops", scratch, seen=seen, parent=parent)
    src.backup(ctx)
    return ctx


def _fsck(repo: Path) -> None:
    subprocess.run(["git", "-C", str(repo), "fsck", "--full", "--no-dangling"], check=True, capture_output=True, env=ENV)


def test_two_runs_restore_every_ref_and_second_run_is_incremental(tmp_path: Path) -> None:
    origin = make_gitops_repo(tmp_path / "origin.git")
    refs1 = refs_of(origin)
    assert {"refs/tags/v0.1.0", "refs/tags/v0.2.0", "refs/notes/commits", "refs/notes/review",
            "refs/heads/feature/ingress", "refs/pipelines/last-green"} <= set(refs1)
    src = _source(tmp_path, str(origin))
    seen: set[str] = set()
    first = _backup(tmp_path, src, seen, n=1)
    assert first.meta["ref_count"] == len(refs1) and first.meta["head"] == "refs/heads/main"
    assert first.meta["refs"] == refs1

    # the remote moves on: new commits, a new tag, a new branch, one branch deleted
    add_commits(origin, "main", 5, 500)
    run_git(origin, "tag", "-a", "-m", "release 0.4.0", "v0.4.0", "main")
    run_git(origin, "branch", "hotfix", "main~1")
    run_git(origin, "branch", "-D", "release/1.x")
    refs2 = refs_of(origin)
    second = _backup(tmp_path, src, seen, parent=first, n=2)
    assert second.meta["refs"] == refs2 and "refs/heads/release/1.x" not in second.meta["refs"]

    # incremental: the second run adds about the size of the new objects only
    mirror = tmp_path / "cache" / "mirror.git"
    packs = sorted((mirror / "objects/pack").glob("*.pack"), key=lambda p: p.stat().st_mtime_ns)
    assert len(packs) == 2
    new_pack = packs[-1].stat().st_size
    assert first.new > 300_000
    print("git incremental: first run", first.new, "bytes; second run", second.new, "bytes; new pack", new_pack)
    assert second.new < new_pack * 3 + 20_000, (second.new, new_pack)
    assert second.new < first.new / 10

    for ctx, expected, name in ((first, refs1, "r1"), (second, refs2, "r2")):
        target = tmp_path / name
        result = src.restore(RecordingRestore(ctx, target))
        assert refs_of(target) == expected
        _fsck(target)
        assert run_git(target, "rev-parse", "--is-bare-repository").strip() == "true"
        assert run_git(target, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
        assert result.details["ref_count"] == len(expected)
        assert any(f"{len(expected)} refs" in line for line in result.lines)
        assert run_git(target, "notes", "show", "main~5" if name == "r1" else "main~10").strip() == \
            "deployed to prod 2026-01-02"
        assert src.check_restored(target, ctx.snapshot()).ok

    # restore by mirror push into a fresh bare remote
    remote = tmp_path / "new-remote.git"
    subprocess.run(["git", "init", "--bare", "-q", str(remote)], check=True, env=ENV)
    res = src.restore(RecordingRestore(second, None, options={"push_to": str(remote)}))
    assert refs_of(remote) == refs2
    _fsck(remote)
    assert res.details["pushed_to"] == str(remote)


def test_check_restored_catches_a_changed_ref(tmp_path: Path) -> None:
    origin = make_gitops_repo(tmp_path / "origin.git")
    src = _source(tmp_path, str(origin))
    ctx = _backup(tmp_path, src, set(), n=1)
    target = tmp_path / "r"
    src.restore(RecordingRestore(ctx, target))
    run_git(target, "update-ref", "refs/heads/main", "main~1")
    check = src.check_restored(target, ctx.snapshot())
    assert not check.ok and "refs differ" in check.problems[0]


def test_damaged_pack_fails_restore(tmp_path: Path) -> None:
    origin = make_gitops_repo(tmp_path / "origin.git")
    src = _source(tmp_path, str(origin))
    ctx = _backup(tmp_path, src, set(), n=1)
    pack = next(p for p in ctx.content if p.endswith(".pack"))
    data = bytearray(ctx.content[pack])
    data[len(data) // 2] ^= 0xFF
    ctx.content[pack] = bytes(data)
    with pytest.raises(IntegrityError, match="git fsck failed"):
        src.restore(RecordingRestore(ctx, tmp_path / "r"))


def test_refs_option_limits_what_is_kept(tmp_path: Path) -> None:
    origin = make_gitops_repo(tmp_path / "origin.git")
    src = _source(tmp_path, str(origin), refs=["refs/heads/*", "refs/tags/*"])
    ctx = _backup(tmp_path, src, set(), n=1)
    assert set(ctx.meta["refs"]) == {r for r in refs_of(origin) if r.startswith(("refs/heads/", "refs/tags/"))}
    with pytest.raises(ConfigError, match="must start with refs/"):
        _source(tmp_path, str(origin), refs=["heads/*"])


def test_empty_or_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.git"
    subprocess.run(["git", "init", "--bare", "-q", str(empty)], check=True, env=ENV)
    with pytest.raises(DrkitError, match="has no refs"):
        _backup(tmp_path, _source(tmp_path, str(empty)), set(), n=1)
    with pytest.raises(DrkitError, match="command failed") as info:
        _backup(tmp_path, _source(tmp_path / "x", str(tmp_path / "missing.git")), set(), n=2)
    assert info.value.hint and "ls-remote" in info.value.hint


def test_url_with_credentials_is_refused(tmp_path: Path) -> None:
    for url in ("https://user:ghp_secret@github.com/org/gitops.git", "https://ghp_secret@github.com/org/gitops.git"):
        with pytest.raises(ConfigError) as info:
            _source(tmp_path, url)
        assert "ghp_secret" not in str(info.value)
    _source(tmp_path, "git@github.com:org/gitops.git")
    _source(tmp_path, "ssh://git@github.com/org/gitops.git")


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization", "")))
        self.send_response(403)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_recorder() -> Iterator[str]:
    _Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_token_goes_in_a_header_never_in_argv_url_errors_or_cache(tmp_path: Path, http_recorder: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    import base64
    import logging

    token = "ghp_S3cretTok3nValue0123456789"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    src = _source(tmp_path, f"{http_recorder}/org/gitops.git", token_file=str(token_file))
    caplog.set_level(logging.DEBUG, logger="drkit")
    with pytest.raises(DrkitError) as info:
        _backup(tmp_path, src, set(), n=1)
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    assert any(auth == f"Basic {basic}" for _, auth in _Recorder.seen), _Recorder.seen
    text = str(info.value) + (info.value.hint or "") + caplog.text
    assert token not in text and basic not in text
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert token.encode() not in content and basic.encode() not in content, path

    # the same through token_env
    src_env = _source(tmp_path, f"{http_recorder}/org/gitops.git", token_env="GITOPS_TOKEN")
    auth = src_env.auth({"GITOPS_TOKEN": token})
    assert token in auth.secrets and all(token not in v for v in auth.env.values())
    with pytest.raises(ConfigError, match="GITOPS_TOKEN is not set"):
        src_env.auth({})


def test_ssh_key_goes_into_git_ssh_command(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    src = _source(tmp_path, "git@example.test:org/gitops.git", ssh_key_file=str(key),
                  ssh_known_hosts_file=str(tmp_path / "known_hosts"))
    env = src.auth({}).env
    assert env["GIT_SSH_COMMAND"].startswith(f"ssh -i {key} -o IdentitiesOnly=yes -o BatchMode=yes")
    assert "StrictHostKeyChecking=yes" in env["GIT_SSH_COMMAND"]
    with pytest.raises(ConfigError, match="not found"):
        _source(tmp_path, "git@example.test:org/gitops.git", ssh_key_file=str(tmp_path / "nope")).auth({})


def test_packs_are_merged_geometrically_when_they_pile_up(tmp_path: Path) -> None:
    origin = make_gitops_repo(tmp_path / "origin.git")
    src = _source(tmp_path, str(origin), max_packs=2)
    seen: set[str] = set()
    prev = None
    for n in range(4):
        if n:
            add_commits(origin, "main", 3, 20000 + 10 * n)
        prev = _backup(tmp_path, src, seen, parent=prev, n=n)
        packs = list((tmp_path / "cache/mirror.git/objects/pack").glob("*.pack"))
        assert len(packs) <= 3, [p.name for p in packs]
    assert prev is not None and prev.meta["refs"] == refs_of(origin)
    target = tmp_path / "r"
    src.restore(RecordingRestore(prev, target))
    assert refs_of(target) == refs_of(origin)
    _fsck(target)


def test_damaged_mirror_cache_is_refused_with_a_hint(tmp_path: Path) -> None:
    origin = make_gitops_repo(tmp_path / "origin.git")
    src = _source(tmp_path, str(origin))
    _backup(tmp_path, src, set(), n=1)
    pack = next((tmp_path / "cache/mirror.git/objects/pack").glob("*.pack"))
    pack.chmod(0o644)
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0xFF
    pack.write_bytes(bytes(data))
    rec = RecordingBackup("gitops", tmp_path / "s2")
    (tmp_path / "s2").mkdir()
    with pytest.raises(IntegrityError, match="mirror cache") as info:
        src.backup(rec)
    assert info.value.hint and str(tmp_path / "cache") in info.value.hint
    assert not any(e.path.endswith(".pack") for e in rec.entries)


def test_token_auth_against_a_real_git_http_backend(tmp_path: Path) -> None:
    from tests.servers.git_http import start_git_http

    token = "glpat-R3alT0kenForHttp"
    root = tmp_path / "srv"
    root.mkdir()
    origin = make_gitops_repo(root / "gitops.git")
    subprocess.run(["git", "init", "--bare", "-q", str(root / "mirror.git")], check=True, env=ENV)
    run_git(root / "mirror.git", "config", "http.receivepack", "true")
    server = start_git_http(root, user="oauth2", token=token)
    try:
        token_file = tmp_path / "token"
        token_file.write_text(token)
        src = _source(tmp_path, f"{server.url}/gitops.git", token_file=str(token_file), token_user="oauth2")
        ctx = _backup(tmp_path, src, set(), n=1)
        assert ctx.meta["refs"] == refs_of(origin)
        assert server.requests and all(ok for _, ok in server.requests)
        res = src.restore(RecordingRestore(ctx, None, options={"push_to": f"{server.url}/mirror.git"}))
        assert refs_of(root / "mirror.git") == refs_of(origin)
        assert token not in repr(res) and token not in repr(ctx.meta)
        # a wrong token: refused by the server, one clear error without the token in it
        token_file.write_text("wrong-token")
        with pytest.raises(DrkitError) as info:
            _backup(tmp_path, _source(tmp_path / "b", f"{server.url}/gitops.git", token_file=str(token_file),
                                      token_user="oauth2"), set(), n=2)
        assert "wrong-token" not in str(info.value) and "command failed" in str(info.value)
    finally:
        server.stop()
