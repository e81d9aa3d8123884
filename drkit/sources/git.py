"""``git``: the GitOps repository, every ref, incrementally, verified.

How a backup works:

1. A bare mirror cache under ``cache_dir`` (default ``/var/cache/drkit/git/<source>``)
   is fetched with ``--prune`` (refspecs ``+P:P`` for each pattern of ``refs``, default
   ``refs/*``: branches, tags, notes and anything else under refs/), and ``HEAD`` follows
   the remote's default branch.
2. ``git fsck`` checks every object and the refs are listed (``for-each-ref``).
3. The mirror's files are stored: ``HEAD``, a clean ``config``, ``packed-refs``,
   ``refs/**`` and ``objects/**``. The cache never repacks everything (``gc.auto=0``,
   ``fetch.unpackLimit=1``): each fetch arrives as a new pack and old packs stay
   byte-identical, so a second run stores little more than the new objects. When
   packs pile up (more than ``max_packs``) a geometric repack merges only the small
   ones. (A ``git bundle`` of all refs is re-packed from scratch every run and
   deduplicates far worse: see the test measuring both.)

Credentials never reach argv, a stored URL, the manifest or a log line: an SSH key
goes into ``GIT_SSH_COMMAND``, a token (from ``token_file`` or the ``token_env``
variable) becomes an ``http.extraHeader`` passed through ``GIT_CONFIG_*`` environment
variables, and everything git prints in an error is redacted. URLs that embed a
password or token are refused.

Restore writes a bare repository into ``--target DIR``, or mirror-pushes it to
``--push-to URL``; both run ``git fsck``, compare every ref with the snapshot's list
and report the refs restored. A restore writes only ``HEAD``, ``packed-refs``,
``refs/`` and ``objects/`` from the snapshot, plus drkit's own minimal ``config``:
hooks, a config or alternates in a snapshot (a hostile backup host could put them
there) are skipped with a warning, and every git drkit runs has hooks disabled
(``core.hooksPath=/dev/null``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from drkit import proc
from drkit.errors import ConfigError, DrkitError, IntegrityError, UsageError
from drkit.repository.tree import DIR, FILE, Entry
from drkit.sources.base import (
    BackupContext,
    CheckResult,
    RestoreContext,
    RestoreResult,
    Source,
    SourceOptions,
)

if TYPE_CHECKING:
    from drkit.repository.snapshot import Snapshot

DEFAULT_CACHE_ROOT = Path("/var/cache/drkit/git")
CLEAN_CONFIG = "[core]\n\trepositoryformatversion = {version}\n\tfilemode = true\n\tbare = true\n{extensions}"

# Files of a bare repository that are not stored (caches, logs, locks, local hooks).
_SKIP_TOP = {"hooks", "logs", "info", "FETCH_HEAD", "ORIG_HEAD", "description", "config", "gc.log", "shallow",
             "index", "packed-refs.lock"}
_SKIP_OBJECTS = {"info", "commit-graph", "commit-graphs"}


def _restorable(entry: Entry) -> bool:
    """What a git restore writes: HEAD, packed-refs, refs/** and objects/** (not
    objects/info/**: alternates would point git at objects outside the repository).
    Directories and regular files only. Hooks, config and anything else a snapshot
    holds are never written (backup never stores them)."""
    if entry.type not in (DIR, FILE):
        return False
    parts = entry.path.strip("/").split("/")
    if parts[0] in ("HEAD", "packed-refs"):
        return len(parts) == 1 and entry.type == FILE
    if parts[0] == "refs":
        return True
    if parts[0] == "objects":
        return len(parts) == 1 or parts[1] != "info"
    return False


def _write_clean_config(repo: Path, object_format: str) -> None:
    """drkit's own minimal bare-repository config, atomically, never through a link."""
    if object_format not in ("sha1", "sha256"):
        raise IntegrityError(name=str(repo), detail=f"unknown object format {object_format!r} in the snapshot")
    extensions = f"[extensions]\n\tobjectformat = {object_format}\n" if object_format != "sha1" else ""
    text = CLEAN_CONFIG.format(version=1 if extensions else 0, extensions=extensions).encode()
    tmp = f".drkit-config-{os.urandom(6).hex()}"
    dfd = os.open(repo, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
        with os.fdopen(fd, "wb") as f:
            f.write(text)
        os.rename(tmp, "config", src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.close(dfd)


def check_url(url: str, key: str = "url") -> str:
    """Refuse a URL that carries credentials (http(s) userinfo); return it unchanged."""
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and (parts.username or parts.password):
            raise ConfigError(
                "the URL must not contain credentials (they would be stored and logged)",
                key=key,
                hint="put the token in a file (token_file) or an environment variable (token_env)",
            )
        if parts.password:
            raise ConfigError("the URL must not contain a password", key=key,
                              hint="use ssh_key_file, the SSH agent, token_file or token_env")
    return url


class GitOptions(SourceOptions):
    url: str = Field(min_length=1)
    """ssh (``git@host:org/repo.git``, ``ssh://``), ``https://`` or a local path."""
    ssh_key_file: Path | None = None
    ssh_known_hosts_file: Path | None = None
    token_file: Path | None = None
    token_env: str | None = None
    token_user: str = "x-access-token"
    """User name sent with the token (GitHub: any; GitLab: ``oauth2``)."""
    refs: list[str] = Field(default_factory=lambda: ["refs/*"], min_length=1)
    """Ref patterns to keep (``refs/heads/*``, ``refs/tags/*``, ``refs/notes/*`` ...)."""
    cache_dir: Path | None = None
    max_packs: int = Field(50, ge=2)
    timeout: float = Field(1800.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        try:
            return check_url(v)
        except ConfigError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None

    @field_validator("refs")
    @classmethod
    def _refs(cls, v: list[str]) -> list[str]:
        for pattern in v:
            if not pattern.startswith("refs/") or pattern.count("*") > 1 or ":" in pattern:
                raise ValueError(f"ref pattern {pattern!r} must start with refs/ and hold at most one '*'")
        return v


@dataclass
class GitAuth:
    """Environment for git that carries credentials, and the strings to redact."""

    env: dict[str, str]
    secrets: list[str]


@dataclass(frozen=True)
class RefList:
    """``for-each-ref`` output: sorted (name, object id) pairs and their digest."""

    refs: tuple[tuple[str, str], ...]

    @property
    def digest(self) -> str:
        text = "".join(f"{oid} {name}\n" for name, oid in self.refs)
        return hashlib.sha256(text.encode()).hexdigest()

    def counts(self) -> dict[str, int]:
        out = {"branches": 0, "tags": 0, "notes": 0, "other": 0}
        for name, _ in self.refs:
            kind = ("branches" if name.startswith("refs/heads/") else "tags" if name.startswith("refs/tags/")
                    else "notes" if name.startswith("refs/notes/") else "other")
            out[kind] += 1
        return out

    def describe(self) -> str:
        c = self.counts()
        return (f"{len(self.refs)} refs ({c['branches']} branches, {c['tags']} tags, {c['notes']} notes, "
                f"{c['other']} other)")


def git(repo: Path | None, *args: str, auth: GitAuth | None = None, timeout: float = 600.0,
        hint: str | None = None) -> proc.Result:
    """Run git (in *repo* when given) with prompts disabled and credentials from *auth*."""
    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false",
           "LC_ALL": "C"}
    if auth:
        env.update(auth.env)
    # Hooks never run: a repository drkit touches may have come from a snapshot.
    cmd = ["git", "-c", "core.hooksPath=/dev/null"] + (["-C", str(repo)] if repo is not None else []) + list(args)
    return proc.run(cmd, env=env, timeout=timeout, redact=auth.secrets if auth else (), hint=hint)


def list_refs(repo: Path) -> RefList:
    out = git(repo, "for-each-ref", "--format=%(refname) %(objectname)").text
    pairs = sorted(tuple(line.split(" ", 1)) for line in out.splitlines() if line.strip())
    return RefList(tuple((name, oid) for name, oid in pairs))


def fsck(repo: Path, timeout: float = 1800.0) -> None:
    """Full ``git fsck``; raises IntegrityError naming the first problems."""
    try:
        git(repo, "fsck", "--no-progress", "--no-dangling", "--full", timeout=timeout)
    except proc.CommandFailed as exc:
        raise IntegrityError(name=str(repo), detail=f"git fsck failed: {exc.stderr_tail}") from None


class GitSource(Source):
    """A Git repository: all refs, via an incremental mirror cache."""

    type_name = "git"
    Options = GitOptions
    options: GitOptions

    def describe(self) -> str:
        return f"{self.name} (git: {self.options.url})"

    # --- credentials -------------------------------------------------------------------

    def auth(self, environ: Mapping[str, str] | None = None) -> GitAuth:
        """Build the credential environment. *environ* is where ``token_env`` is looked
        up (default: this process's environment, read once per run).

        Raises ConfigError when a configured key or token file is missing or empty."""
        o = self.options
        env: dict[str, str] = {}
        secrets: list[str] = []
        if o.ssh_key_file is not None:
            if not o.ssh_key_file.is_file():
                raise ConfigError(f"SSH key file {o.ssh_key_file} not found", key="ssh_key_file")
            ssh = ["ssh", "-i", str(o.ssh_key_file), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
            if o.ssh_known_hosts_file is not None:
                ssh += ["-o", f"UserKnownHostsFile={o.ssh_known_hosts_file}", "-o", "StrictHostKeyChecking=yes"]
            env["GIT_SSH_COMMAND"] = shlex.join(ssh)
        token = None
        if o.token_file is not None:
            try:
                token = o.token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read token file {o.token_file}: {exc.strerror}", key="token_file") from None
            if not token:
                raise ConfigError(f"token file {o.token_file} is empty", key="token_file")
        elif o.token_env:
            token = (environ if environ is not None else os.environ).get(o.token_env) or None
            if token is None:
                raise ConfigError(f"environment variable {o.token_env} is not set or empty", key="token_env",
                                  hint="export it in the environment drkit runs in (systemd: EnvironmentFile=)")
        if token:
            basic = base64.b64encode(f"{o.token_user}:{token}".encode()).decode()
            env.update({
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
            })
            secrets += [token, basic]
        return GitAuth(env, secrets)

    # --- the mirror cache --------------------------------------------------------------

    def cache_dir(self) -> Path:
        return self.options.cache_dir or DEFAULT_CACHE_ROOT / self.name

    def update_mirror(self, auth: GitAuth) -> Path:
        """Create or fetch the mirror cache (prune included); return its path.

        Idempotent; a fetch that fails leaves the previous cache usable."""
        mirror = self.cache_dir() / "mirror.git"
        url = self.options.url
        if not (mirror / "HEAD").exists():
            mirror.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            git(None, "init", "--bare", "-q", str(mirror))
            git(mirror, "remote", "add", "origin", url)
        else:
            git(mirror, "config", "remote.origin.url", url)
        for key, value in (("gc.auto", "0"), ("fetch.unpackLimit", "1"), ("transfer.unpackLimit", "1"),
                           ("core.logAllRefUpdates", "false"), ("repack.writeBitmaps", "false"),
                           ("fetch.writeCommitGraph", "false"), ("remote.origin.mirror", "false")):
            git(mirror, "config", key, value)
        if self._has_fetch(mirror):
            git(mirror, "config", "--unset-all", "remote.origin.fetch")
        for pattern in self.options.refs:
            git(mirror, "config", "--add", "remote.origin.fetch", f"+{pattern}:{pattern}")
        hint = "check url and credentials (ssh_key_file / token_file / token_env); try 'git ls-remote URL'"
        git(mirror, "fetch", "--prune", "--quiet", "--no-write-fetch-head", "origin", auth=auth,
            timeout=self.options.timeout, hint=hint)
        head = git(mirror, "ls-remote", "--symref", "origin", "HEAD", auth=auth, timeout=120, hint=hint).text
        for line in head.splitlines():
            if line.startswith("ref: ") and line.endswith("\tHEAD"):
                git(mirror, "symbolic-ref", "HEAD", line[5:].split("\t")[0])
                break
        packs = list((mirror / "objects" / "pack").glob("*.pack"))
        if len(packs) > self.options.max_packs:
            git(mirror, "repack", "--geometric=2", "-d", "-q", timeout=self.options.timeout)
        return mirror

    @staticmethod
    def _has_fetch(mirror: Path) -> bool:
        try:
            git(mirror, "config", "--get-all", "remote.origin.fetch")
        except proc.CommandFailed:
            return False
        return True

    # --- backup ------------------------------------------------------------------------

    def backup(self, ctx: BackupContext) -> None:
        """Fetch, fsck, store the mirror's files; raises DrkitError when the remote is
        unreachable, has no refs, or fsck fails (nothing is stored then)."""
        auth = self.auth(ctx.env)
        started = time.monotonic()
        ctx.progress(f"fetching {self.options.url}")
        mirror = self.update_mirror(auth)
        refs = list_refs(mirror)
        if not refs.refs:
            raise DrkitError(f"repository {self.options.url} has no refs matching {', '.join(self.options.refs)}",
                             hint="check url and refs; an empty backup of the GitOps repo is never what you want")
        ctx.progress("git fsck")
        try:
            fsck(mirror, self.options.timeout)
        except IntegrityError as exc:
            raise IntegrityError(name=f"mirror cache {mirror}", detail=str(exc.fields.get("detail", "")),
                                 hint=f"nothing was stored; delete {self.cache_dir()} so that the next run "
                                 "clones afresh, and check the disk") from None
        fmt = git(mirror, "rev-parse", "--show-object-format").text.strip() or "sha1"
        extensions = f"[extensions]\n\tobjectformat = {fmt}\n" if fmt != "sha1" else ""
        version = 1 if extensions else 0
        ctx.add_bytes("config", CLEAN_CONFIG.format(version=version, extensions=extensions).encode(), mode=0o644)
        stored = self._store_tree(ctx, mirror)
        head = (mirror / "HEAD").read_text().strip()
        ctx.meta.update({
            "url": self.options.url,
            "refs_sha256": refs.digest,
            "ref_count": len(refs.refs),
            **{f"ref_{k}": v for k, v in refs.counts().items()},
            "head": head.removeprefix("ref: "),
            "object_format": fmt,
            "packs": stored["packs"],
            "fetch_seconds": round(time.monotonic() - started, 3),
        })
        if len(refs.refs) <= 2000:
            ctx.meta["refs"] = {name: oid for name, oid in refs.refs}

    def _store_tree(self, ctx: BackupContext, mirror: Path) -> dict[str, int]:
        counts = {"packs": 0, "files": 0}

        def walk(rel: Path) -> None:
            real = mirror / rel
            for name in sorted(os.listdir(real)):
                child = rel / name
                if rel == Path(".") and name in _SKIP_TOP:
                    continue
                if rel == Path("objects") and name in _SKIP_OBJECTS:
                    continue
                if name.endswith((".lock", ".keep")) or name.startswith("tmp_"):
                    continue
                st = os.lstat(mirror / child)
                logical = child.as_posix()
                if os.path.isdir(mirror / child) and not os.path.islink(mirror / child):
                    ctx.add_dir(logical, st)
                    walk(child)
                elif os.path.isfile(mirror / child):
                    ctx.add_file(logical, mirror / child, st)
                    counts["files"] += 1
                    counts["packs"] += name.endswith(".pack")

        walk(Path("."))
        return counts

    # --- restore -----------------------------------------------------------------------

    def restore(self, ctx: RestoreContext) -> RestoreResult:
        """Write a bare repository into ``ctx.target`` or mirror-push to ``push_to``.

        Raises IntegrityError when fsck fails or the refs differ from the snapshot's."""
        push_to = ctx.options.push_to
        if push_to:
            check_url(push_to, key="--push-to")
        if ctx.target is None and not push_to:
            raise UsageError(f"source {self.name!r} restores into a directory (--target DIR) or a remote (--push-to URL)")
        if ctx.options.in_place:
            raise UsageError("a git source has no in-place restore", hint="use --target DIR or --push-to URL")
        tmp: str | None = None
        dest = ctx.target
        if dest is None:
            tmp = tempfile.mkdtemp(prefix="drkit-git-restore-")
            dest = Path(tmp) / "repo.git"
        try:
            kept: list[Entry] = []
            skipped: list[Entry] = []
            for entry in ctx.entries():
                (kept if _restorable(entry) else skipped).append(entry)
            result = ctx.write_entries(dest, include=[], entries=iter(kept))
            if skipped:
                names = ", ".join(e.path for e in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
                result.lines.append(f"warning: skipped {len(skipped)} entries a git restore never writes "
                                    f"(only HEAD, packed-refs, refs/ and objects/; config is drkit's own): {names}")
                result.details["skipped"] = [e.path for e in skipped]
            if ctx.dry_run:
                if push_to:
                    result.lines.append(f"would mirror-push to {push_to}")
                return result
            for sub in ("refs/heads", "refs/tags", "objects/info"):
                (dest / sub).mkdir(parents=True, exist_ok=True)
            _write_clean_config(dest, str((getattr(ctx.snapshot, "meta", None) or {}).get("object_format") or "sha1"))
            refs = self._verify(dest, ctx.snapshot)
            result.details["refs"] = {name: oid for name, oid in refs.refs}
            if push_to:
                auth = self.auth(ctx.env)
                git(dest, "push", "--mirror", "--quiet", push_to, auth=auth, timeout=self.options.timeout,
                    hint="check the remote URL and that the credentials may push to it")
                result.lines.append(f"mirror-pushed {refs.describe()} to {push_to}")
                result.details["pushed_to"] = push_to
            else:
                result.lines.append(f"restored a bare repository with {refs.describe()} into {dest}")
            result.details["ref_count"] = len(refs.refs)
            return result
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _verify(self, repo: Path, snapshot: Any) -> RefList:
        fsck(repo, self.options.timeout)
        refs = list_refs(repo)
        meta = getattr(snapshot, "meta", {}) or {}
        if meta.get("refs_sha256") and refs.digest != meta["refs_sha256"]:
            raise IntegrityError(name=str(repo), detail=f"restored refs differ from the snapshot's "
                                 f"({len(refs.refs)} refs, snapshot recorded {meta.get('ref_count')})")
        return refs

    def check_restored(self, restored: Path, snapshot: Snapshot) -> CheckResult:
        """``git fsck`` and every ref compared with the snapshot's list."""
        try:
            refs = self._verify(restored, snapshot)
        except DrkitError as exc:
            return CheckResult(ok=False, summary="restored repository is not sound", problems=[exc.message])
        return CheckResult(ok=True, summary=f"git fsck ok, {refs.describe()} match the snapshot",
                           details={"ref_count": len(refs.refs)})
