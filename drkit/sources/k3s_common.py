"""What the K3s sources share: where K3s keeps things, whether it runs, what it is.

Facts of a K3s server node this module encodes (K3s v1.2x-v1.3x):

- data dir ``/var/lib/rancher/k3s`` (``data-dir:`` in config.yaml moves it); the
  server token at ``server/token``, certificates under ``server/tls``, the
  datastore under ``server/db`` (``state.db`` for SQLite, ``etcd/`` for embedded etcd);
- config dir ``/etc/rancher/k3s``: ``config.yaml``, drop-ins ``config.yaml.d/*.yaml``
  (read in lexical order; later files win; a key ending in ``+`` appends), and
  ``registries.yaml``;
- the running server shows up in ``/proc`` as a process whose command line is
  ``k3s server ...`` (K3s rewrites its argv[0] to ``k3s server``).

Nothing here changes the node (files are placed with :mod:`drkit.atomicio`).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from drkit.repository.tree import Entry

import yaml

from drkit import proc
from drkit.errors import DrkitError, Refused

DEFAULT_DATA_DIR = Path("/var/lib/rancher/k3s")
DEFAULT_CONFIG_DIR = Path("/etc/rancher/k3s")
DEFAULT_PROC_ROOT = Path("/proc")


def sqlite_db_path(data_dir: Path) -> Path:
    return data_dir / "server" / "db" / "state.db"


def etcd_member_dir(data_dir: Path) -> Path:
    return data_dir / "server" / "db" / "etcd"


def etcd_tls_dir(data_dir: Path) -> Path:
    return data_dir / "server" / "tls" / "etcd"


def token_path(data_dir: Path) -> Path:
    return data_dir / "server" / "token"


# --- is K3s running? -------------------------------------------------------------

@dataclass(frozen=True)
class RunningProcess:
    """A process that looks like a K3s server."""

    pid: int
    cmdline: str


def find_k3s_server(proc_root: Path = DEFAULT_PROC_ROOT) -> RunningProcess | None:
    """Return the first process under *proc_root* whose command line is ``k3s server``.

    Read-only; processes that vanish or cannot be read are skipped. *proc_root* is
    a parameter so that tests can lay out a fake ``/proc`` (``<pid>/cmdline``).
    """
    try:
        names = os.listdir(proc_root)
    except OSError:
        return None
    for name in names:
        if not name.isdigit():
            continue
        try:
            raw = (proc_root / name / "cmdline").read_bytes()
        except OSError:
            continue
        args = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        if not args:
            continue
        if _is_k3s_server(args):
            return RunningProcess(int(name), " ".join(args)[:200])
    return None


def _is_k3s_server(args: list[str]) -> bool:
    first = args[0].split()
    # K3s rewrites its title to "k3s server" (one argv element with a space).
    words = first + args[1:]
    if not words or os.path.basename(words[0]) != "k3s":
        return False
    return len(words) > 1 and words[1] == "server"


def processes_holding(paths: Iterable[Path], proc_root: Path = DEFAULT_PROC_ROOT) -> list[RunningProcess]:
    """Processes (other than this one) with one of *paths* open, found via
    ``/proc/<pid>/fd``. Read-only; unreadable processes are skipped."""
    wanted = {os.path.realpath(p) for p in paths}
    found: list[RunningProcess] = []
    try:
        names = os.listdir(proc_root)
    except OSError:
        return found
    me = str(os.getpid())
    for name in names:
        if not name.isdigit() or name == me:
            continue
        fd_dir = proc_root / name / "fd"
        try:
            links = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in links:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if target in wanted:
                try:
                    cmd = (proc_root / name / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
                except OSError:
                    cmd = "?"
                found.append(RunningProcess(int(name), cmd.strip()[:200]))
                break
    return found


RunningCheck = Callable[[], "RunningProcess | None"]
"""How a source asks whether K3s runs; injectable for tests."""


def refuse_if_running(check: RunningCheck, action: str) -> None:
    """Raise :class:`Refused` when *check* finds a running K3s server."""
    found = check()
    if found is not None:
        raise Refused(
            f"K3s is running (pid {found.pid}: {found.cmdline}); refusing to {action}",
            hint="stop it first ('systemctl stop k3s', or k3s-killall.sh), then run the restore again",
        )


# --- config.yaml -------------------------------------------------------------------

def read_k3s_config(config_dir: Path) -> dict[str, Any]:
    """Merge ``config.yaml`` and ``config.yaml.d/*.yaml`` the way K3s does.

    Later files override earlier keys; ``key+`` appends to a list value. A missing
    file is an empty config. Raises :class:`DrkitError` on unparsable YAML.
    """
    files: list[Path] = []
    main = config_dir / "config.yaml"
    if main.is_file():
        files.append(main)
    dropins = config_dir / "config.yaml.d"
    if dropins.is_dir():
        files.extend(sorted(p for p in dropins.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()))
    merged: dict[str, Any] = {}
    for path in files:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise DrkitError(f"cannot read K3s config {path}: {exc}".splitlines()[0],
                             hint="fix the file; K3s would not start with it either") from None
        if not isinstance(data, dict):
            continue
        for key, value in data.items():
            key = str(key)
            if key.endswith("+"):
                base = key[:-1]
                old = merged.get(base, [])
                old = old if isinstance(old, list) else [old]
                merged[base] = old + (value if isinstance(value, list) else [value])
            else:
                merged[key] = value
    return merged


def config_flag(config: dict[str, Any], name: str) -> bool:
    """True when boolean flag *name* is set in a merged K3s config."""
    value = config.get(name)
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def data_dir_from_config(config_dir: Path) -> Path:
    """The data dir config.yaml names (``data-dir:``), else the default."""
    value = read_k3s_config(config_dir).get("data-dir")
    return Path(value) if isinstance(value, str) and value else DEFAULT_DATA_DIR


def node_name(config: dict[str, Any]) -> str:
    """``node-name:`` from the K3s config, else this host's name (as K3s does)."""
    value = config.get("node-name")
    return str(value) if value else socket.gethostname()


_VERSION_RE = re.compile(r"k3s version (v\d+\.\d+\.\d+\S*)")


def k3s_version(binary: str = "k3s") -> str | None:
    """``vX.Y.Z+k3sN`` from ``k3s --version``, or None if k3s is not installed."""
    path = shutil.which(binary) or (binary if os.access(binary, os.X_OK) else None)
    if path is None:
        return None
    try:
        out = proc.run([path, "--version"], timeout=20).text
    except DrkitError:
        return None
    match = _VERSION_RE.search(out)
    return match.group(1) if match else None


@dataclass
class NodeFacts:
    """What a datastore source records in the run's metadata."""

    k3s_version: str | None
    node_name: str
    secrets_encryption: bool
    extra: dict[str, Any] = field(default_factory=dict)
    k3s_found: bool = True
    """False when this host shows no sign of K3s (no config, unit or binary): its
    settings are then unknown, not "off"."""

    def record(self, run_meta: dict[str, Any], *, override: bool = False) -> None:
        """Fill *run_meta* (keys ``k3s_version``, ``node_name``, ``secrets_encryption``
        and the extras). Without *override*, what another source of the run already
        recorded is kept (the ``k3s-node`` source overrides: it reads every place K3s
        takes flags from)."""
        values: dict[str, Any] = {"k3s_version": self.k3s_version or "unknown", "node_name": self.node_name,
                                  "secrets_encryption": self.secrets_encryption, **self.extra}
        for key, value in values.items():
            if override and not (key == "k3s_version" and value == "unknown" and run_meta.get(key)):
                run_meta[key] = value
            else:
                run_meta.setdefault(key, value)


def node_facts(config_dir: Path, k3s_binary: str = "k3s", *, data_dir: Path | None = None,
               flags: Any = None) -> NodeFacts:
    """Collect version, node name and secrets-encryption from this node (read-only):
    config.yaml(.d), the systemd unit and its env files, and
    ``server/cred/encryption-config.json`` (see :mod:`drkit.sources.k3s_flags`)."""
    from drkit.sources import k3s_flags

    if flags is None:
        flags = k3s_flags.read_node_flags(config_dir=config_dir, data_dir=data_dir)
    version = k3s_version(k3s_binary)
    found = bool(flags.files_found) or (config_dir / "config.yaml").is_file() or version is not None \
        or token_path(flags.data_dir).is_file()
    extra: dict[str, Any] = {}
    if flags.datastore_endpoint:
        extra["datastore"] = "external"
    return NodeFacts(
        k3s_version=version,
        node_name=flags.node_name,
        secrets_encryption=flags.secrets_encryption,
        extra=extra,
        k3s_found=found,
    )


def token_fingerprint(token: str) -> str:
    """SHA-256 (hex) of a K3s server token's password part, so that the short form
    (``PASSWORD``) and the full form (``K10<ca-hash>::server:PASSWORD``) of the same
    token compare equal. Never the token itself."""
    import hashlib

    text = token.strip()
    if "::" in text:
        text = text.split("::", 1)[1]
        text = text.split(":", 1)[1] if ":" in text else text
    return hashlib.sha256(text.encode()).hexdigest()


# --- run consistency -----------------------------------------------------------------

def require_token_source(source_name: str, run: Iterable[Any]) -> None:
    """Refuse a run that holds a datastore source but no ``k3s-node`` source."""
    if any(getattr(s, "type_name", None) == "k3s-node" for s in run):
        return
    raise Refused(
        f"source {source_name!r} saves the K3s datastore, but this run has no k3s-node source: "
        "a datastore snapshot without the server token of the same moment cannot be restored",
        hint="add a 'type: k3s-node' source to the config and back both up in the same run "
        "(drkit backup --source DATASTORE --source NODE)",
    )


# --- restore-time consistency --------------------------------------------------------

_MINOR_RE = re.compile(r"v?(\d+)\.(\d+)")


def _minor(version: str | None) -> tuple[int, int] | None:
    match = _MINOR_RE.match(version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def describe_run(run_meta: dict[str, Any]) -> str:
    """One line about the node a snapshot came from (for restore reports)."""
    parts = [f"K3s {run_meta.get('k3s_version', 'unknown')}"]
    if run_meta.get("node_name"):
        parts.append(f"node {run_meta['node_name']}")
    if "secrets_encryption" in run_meta:
        parts.append("secrets-encryption " + ("on" if run_meta["secrets_encryption"] else "off"))
    return "snapshot taken on " + ", ".join(parts)


def mismatch_warnings(run_meta: dict[str, Any], facts: NodeFacts) -> list[str]:
    """Warnings when this node differs from the one a snapshot came from: an older K3s
    minor version (it cannot read a newer datastore), another minor, or another
    ``secrets-encryption`` setting. Empty when all match or when either side is
    unknown (a host without K3s has no settings to compare)."""
    warnings = []
    then, now = _minor(run_meta.get("k3s_version")), _minor(facts.k3s_version)
    if then and now and now < then:
        warnings.append(
            f"warning: the snapshot was taken with K3s {run_meta['k3s_version']}, this node runs the OLDER "
            f"{facts.k3s_version}: an older minor cannot restore it; install {run_meta['k3s_version']} (or newer) first"
        )
    elif then and now and then != now:
        warnings.append(
            f"warning: the snapshot was taken with K3s {run_meta['k3s_version']}, this node runs {facts.k3s_version}: "
            "restore with the same minor version (install it pinned), then upgrade"
        )
    if facts.k3s_found and "secrets_encryption" in run_meta \
            and bool(run_meta["secrets_encryption"]) != facts.secrets_encryption:
        want = "on" if run_meta["secrets_encryption"] else "off"
        warnings.append(
            f"warning: the snapshot's server ran with secrets-encryption {want}, this node's config has it "
            f"{'on' if facts.secrets_encryption else 'off'}: set 'secrets-encryption: "
            f"{'true' if run_meta['secrets_encryption'] else 'false'}' in config.yaml before starting K3s"
        )
    return warnings


def private_file(path: Path) -> int:
    """Create (or truncate) *path* with mode 0600 from its first byte, never through a
    link; return the open fd (write only). For scratch copies of datastores and secrets."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def private_entries(entries: Iterable["Entry"]) -> Iterator["Entry"]:
    """*entries* with every file's mode narrowed to 0600 (datastore copies hold every
    Secret of the cluster, whatever mode a snapshot recorded)."""
    import dataclasses

    for e in entries:
        yield dataclasses.replace(e, mode=0o600) if e.type == "file" else e
