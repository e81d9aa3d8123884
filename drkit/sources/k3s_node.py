"""``k3s-node``: the server token and node configuration that a datastore needs.

The token (``server/token``) encrypts K3s's bootstrap data inside the datastore: a
datastore snapshot restored without the token of the same moment does not start.
This source saves, with modes, owners and symlinks:

- from the data dir: ``server/token`` (and ``node-token``/``agent-token`` when
  present), ``server/tls``, ``server/cred``, ``server/manifests``;
  and the containerd config templates (``agent/etc/containerd/config*.toml.tmpl``);
- from the config dir: ``config.yaml``, ``config.yaml.d/``, ``registries.yaml``;
- where K3s's other flags live (K3s installs put ``INSTALL_K3S_EXEC`` flags in the unit's
  ``ExecStart`` and ``K3S_*`` variables in env files): the systemd unit
  ``k3s.service``, ``k3s.service.env``, ``/etc/default/k3s``, ``/etc/sysconfig/k3s``,
  and the node password ``/etc/rancher/node/password``.

Logical paths are ``data/<path relative to the data dir>``,
``config/<path relative to the config dir>`` and ``system/<name>`` (names in
:data:`SYSTEM_FILES`), so ``--target DIR`` yields ``DIR/data/server/token``,
``DIR/config/config.yaml`` and ``DIR/system/k3s.service``; ``--in-place`` maps them
back onto the configured paths (refused while K3s runs); files it replaces with
different content are first copied to ``<data_dir>/../k3s-node.drkit-replaced-<time>/``.

The run's facts are recorded from every place K3s takes flags from
(:mod:`drkit.sources.k3s_flags`): K3s version, node name, secrets-encryption (on when a
flag says so or ``server/cred/encryption-config.json`` exists), the datastore kind when
it is external, the data dir, and a SHA-256 fingerprint of the server token (never the
token), so that a restore can refuse a token that is not the run's.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from drkit.atomicio import write_atomic_from
from drkit.errors import DrkitError, UsageError
from drkit.repository.tree import DIR, FILE, SYMLINK, Entry
from drkit.sources import k3s_common as k3s
from drkit.sources import k3s_flags
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

DATA_PREFIX = "data"
CONFIG_PREFIX = "config"
TOKEN_ENTRY = f"{DATA_PREFIX}/server/token"

SYSTEM_PREFIX = "system"

DATA_ITEMS = ["server/token", "server/node-token", "server/agent-token", "server/tls", "server/cred",
              "server/manifests", "agent/etc/containerd/config.toml.tmpl", "agent/etc/containerd/config-v3.toml.tmpl"]
"""What is taken from the data dir (missing optional items are skipped)."""
CONFIG_ITEMS = ["config.yaml", "config.yaml.d", "registries.yaml"]

SYSTEM_FILES = {
    "k3s.service": "unit_file",
    "k3s.service.env": "unit_env_file",
    "default-k3s": "default_env_file",
    "sysconfig-k3s": "sysconfig_env_file",
    "node-password": "node_password_file",
}
"""``system/<name>`` -> the option naming its real path."""


class K3sNodeOptions(SourceOptions):
    data_dir: Path = k3s.DEFAULT_DATA_DIR
    config_dir: Path = k3s.DEFAULT_CONFIG_DIR
    manifests: bool = True
    """Include ``server/manifests`` (auto-deployed manifests; K3s rewrites its own on start)."""
    unit_file: Path = k3s_flags.UNIT_FILE
    unit_env_file: Path = k3s_flags.ENV_FILES[0]
    default_env_file: Path = k3s_flags.ENV_FILES[1]
    sysconfig_env_file: Path = k3s_flags.ENV_FILES[2]
    node_password_file: Path = k3s_flags.NODE_PASSWORD_FILE

    def node_flags(self) -> k3s_flags.NodeFlags:
        """This node's effective K3s settings, read from the paths these options name."""
        return k3s_flags.read_node_flags(
            config_dir=self.config_dir, data_dir=self.data_dir, unit_file=self.unit_file,
            env_files=[self.unit_env_file, self.default_env_file, self.sysconfig_env_file])


class K3sNodeSource(Source):
    """K3s server token, certificates, credentials, manifests and config files."""

    type_name = "k3s-node"
    Options = K3sNodeOptions
    options: K3sNodeOptions

    running_check: k3s.RunningCheck = staticmethod(k3s.find_k3s_server)
    """How an in-place restore asks whether K3s runs (replace in tests)."""

    def describe(self) -> str:
        return f"{self.name} (k3s-node: {self.options.data_dir}, {self.options.config_dir})"

    # --- backup ------------------------------------------------------------------------

    def _roots(self) -> list[tuple[str, Path, list[str]]]:
        items = [i for i in DATA_ITEMS if self.options.manifests or i != "server/manifests"]
        return [(DATA_PREFIX, self.options.data_dir, items), (CONFIG_PREFIX, self.options.config_dir, CONFIG_ITEMS)]

    def backup(self, ctx: BackupContext) -> None:
        """Store the node files; raises UsageError when the token is missing (not a server node)."""
        token = k3s.token_path(self.options.data_dir)
        if not token.is_file():
            raise UsageError(
                f"K3s server token not found at {token}",
                hint="run drkit on the K3s server node as root, or set data_dir in this source",
            )
        counts = {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0}
        for prefix, root, items in self._roots():
            if not root.is_dir():
                continue
            ctx.add_dir(prefix, os.stat(root))
            made: set[str] = {prefix}
            for item in items:
                path = root / item
                if not os.path.lexists(path):
                    continue
                self._add_parents(ctx, prefix, root, Path(item).parent, made)
                for logical, real, st in _walk(prefix, root, Path(item)):
                    if stat.S_ISDIR(st.st_mode):
                        ctx.add_dir(logical, st)
                        counts["dirs"] += 1
                    elif stat.S_ISLNK(st.st_mode):
                        ctx.add_symlink(logical, os.readlink(real), st)
                        counts["symlinks"] += 1
                    elif stat.S_ISREG(st.st_mode):
                        ctx.add_file(logical, real, st)
                        counts["files"] += 1
                        counts["bytes"] += st.st_size
        system: list[str] = []
        ctx.add_dir(SYSTEM_PREFIX, mode=0o755)  # always there, so a restore always yields DIR/system
        for name, option in SYSTEM_FILES.items():
            sys_file: Path = getattr(self.options, option)
            if not sys_file.is_file():
                continue
            st = os.stat(sys_file)
            ctx.add_file(f"{SYSTEM_PREFIX}/{name}", sys_file, st)
            system.append(name)
            counts["files"] += 1
            counts["bytes"] += st.st_size
        flags = self.options.node_flags()
        secrets_encryption = flags.secrets_encryption
        ctx.meta.update({
            "data_dir": str(self.options.data_dir),
            "config_dir": str(self.options.config_dir),
            "secrets_encryption": secrets_encryption,
            "cluster_init": flags.flag("cluster-init"),
            "system_files": {name: str(getattr(self.options, SYSTEM_FILES[name])) for name in system},
            **counts,
        })
        facts = k3s.node_facts(self.options.config_dir, flags=flags)
        facts.record(ctx.run_meta, override=True)
        ctx.run_meta["data_dir"] = str(self.options.data_dir)
        ctx.run_meta["token_sha256"] = k3s.token_fingerprint(token.read_text())
        ctx.run_meta["token_saved"] = True

    @staticmethod
    def _add_parents(ctx: BackupContext, prefix: str, root: Path, rel: Path, made: set[str]) -> None:
        parts: list[str] = []
        for part in rel.parts:
            parts.append(part)
            logical = f"{prefix}/{'/'.join(parts)}"
            if logical not in made:
                ctx.add_dir(logical, os.stat(root.joinpath(*parts)))
                made.add(logical)

    # --- restore -----------------------------------------------------------------------

    def restore(self, ctx: RestoreContext) -> RestoreResult:
        """``--target DIR``: files under DIR/data and DIR/config. ``--in-place``: back onto
        the configured directories (refused while K3s runs; each file replaced atomically)."""
        if not ctx.options.in_place:
            result = super().restore(ctx)
            assert ctx.target is not None
            if ctx.dry_run:
                return result
            result.lines.append(f"token and data-dir files under {ctx.target / DATA_PREFIX}, "
                                f"config files under {ctx.target / CONFIG_PREFIX}")
            self._secrets_line(ctx, result)
            return result
        return self._restore_in_place(ctx)

    def _secrets_line(self, ctx: RestoreContext, result: RestoreResult) -> None:
        meta = getattr(ctx.snapshot, "meta", {}) or {}
        result.lines.append(k3s.describe_run(getattr(ctx.snapshot, "run_meta", {}) or {}))
        if meta.get("secrets_encryption"):
            result.lines.append("the original server ran with secrets-encryption: the restored server must too")

    def _real_path(self, logical: str) -> Path:
        prefix, _, rest = logical.partition("/")
        if prefix == SYSTEM_PREFIX:
            if not rest:
                return self.options.unit_file.parent
            if rest not in SYSTEM_FILES:
                raise DrkitError(f"unexpected entry {logical!r} in a k3s-node snapshot")
            return Path(getattr(self.options, SYSTEM_FILES[rest]))
        roots = {DATA_PREFIX: self.options.data_dir, CONFIG_PREFIX: self.options.config_dir}
        if prefix not in roots:
            raise DrkitError(f"unexpected entry {logical!r} in a k3s-node snapshot")
        rel = Path(rest)
        if rel.is_absolute() or ".." in rel.parts:
            raise DrkitError(f"entry {logical!r} would escape {roots[prefix]}")
        return roots[prefix] / rel if rest else roots[prefix]

    def _restore_in_place(self, ctx: RestoreContext) -> RestoreResult:
        result = RestoreResult()
        entries = list(ctx.entries())
        if ctx.dry_run:
            for e in entries:
                if e.type != DIR:
                    result.lines.append(f"would write {self._real_path(e.path)}")
            return result
        k3s.refuse_if_running(self.running_check, "replace the K3s token and node files")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside_root = self.options.data_dir.parent / f"k3s-node.drkit-replaced-{stamp}"
        kept: list[str] = []

        def keep_old(logical: str, dest: Path) -> None:
            """Copy a file about to be replaced (with different content) aside."""
            copy = aside_root / logical
            copy.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            aside_root.chmod(0o700)
            shutil.copy2(dest, copy, follow_symlinks=False)
            kept.append(logical)

        dirs: list[tuple[Path, Entry]] = []
        for e in entries:
            dest = self._real_path(e.path)
            if e.path == SYSTEM_PREFIX:
                continue  # /etc/systemd/system is the system's: neither created nor re-moded here
            if e.type == DIR:
                dest.mkdir(parents=True, exist_ok=True)
                dirs.append((dest, e))
                result.dirs += 1
            elif e.type == SYMLINK:
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.drkit-tmp")
                tmp.unlink(missing_ok=True)
                if os.path.lexists(dest) and not (dest.is_symlink() and os.readlink(dest) == e.target):
                    keep_old(e.path, dest)
                os.symlink(e.target, tmp)
                _chown(tmp, e, follow=False)
                os.replace(tmp, dest)
                result.symlinks += 1
            elif e.type == FILE:

                def keep_if_different(tmp: Path, dest: Path = dest, logical: str = e.path) -> None:
                    if os.path.lexists(dest) and not (dest.is_file() and filecmp.cmp(tmp, dest, shallow=False)):
                        keep_old(logical, dest)

                with ctx.open_entry(e) as stream:
                    result.bytes_written += write_atomic_from(dest, stream, mode=e.mode, uid=e.uid, gid=e.gid, parents=True,
                                                                  verify=keep_if_different)
                result.files += 1
        for dest, e in reversed(dirs):  # modes after contents: a 0500 dir must not block writes
            os.chmod(dest, e.mode)
            _chown(dest, e)
        result.lines.append(
            f"restored {result.files} files, {result.symlinks} symlinks into {self.options.data_dir} "
            f"and {self.options.config_dir}"
        )
        if kept:
            result.lines.append(f"kept the {len(kept)} replaced file(s) that differed under {aside_root}")
            result.details["replaced_kept_in"] = str(aside_root)
            result.details["replaced"] = kept
        self._secrets_line(ctx, result)
        return result

    def check_restored(self, restored: Path, snapshot: Snapshot) -> CheckResult:
        """The token is there and well-formed, the CA is there, file counts match."""
        problems = []
        token = restored / TOKEN_ENTRY
        if not token.is_file():
            problems.append(f"{TOKEN_ENTRY} missing")
        else:
            text = token.read_text(errors="replace").strip()
            if not text:
                problems.append("token is empty")
            elif text.startswith("K10") and "::" not in text:
                problems.append("token has a K10 prefix but no '::' part: truncated?")
        if not (restored / DATA_PREFIX / "server/tls/server-ca.crt").is_file():
            problems.append("server/tls/server-ca.crt missing")
        meta = getattr(snapshot, "meta", {}) or {}
        files = sum(1 for p in restored.rglob("*") if p.is_file() and not p.is_symlink())
        if "files" in meta and files != meta["files"]:
            problems.append(f"{files} files restored, snapshot recorded {meta['files']}")
        ok = not problems
        return CheckResult(ok=ok, summary=f"token present, {files} files" if ok else "; ".join(problems),
                           details={"files": files}, problems=problems)


def _chown(path: Path, e: Entry, *, follow: bool = True) -> None:
    if os.geteuid() == 0:
        os.chown(path, e.uid, e.gid, follow_symlinks=follow)


def _walk(prefix: str, root: Path, rel: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Yield (logical path, real path, lstat) for *rel* and, if a directory, its
    contents, depth first, sorted, directories before their contents; symlinks are
    not followed."""
    real = root / rel
    st = os.lstat(real)
    yield f"{prefix}/{rel.as_posix()}", real, st
    if stat.S_ISDIR(st.st_mode):
        for name in sorted(os.listdir(real)):
            yield from _walk(prefix, root, rel / name)
