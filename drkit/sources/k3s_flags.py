"""Where a K3s server's flags live, all of them: the effective settings of one node.

K3s takes its settings from four places (K3s v1.2x-v1.3x; later wins):

1. ``K3S_*`` environment variables, which the install script writes into
   ``/etc/systemd/system/k3s.service.env``; the unit also reads ``/etc/default/k3s``
   and ``/etc/sysconfig/k3s`` (``EnvironmentFile=-``);
2. ``config.yaml`` and ``config.yaml.d/*.yaml`` (K3s turns them into arguments placed
   *before* the command line's, so the command line wins);
3. the unit's ``ExecStart`` (``INSTALL_K3S_EXEC`` puts ``--data-dir``,
   ``--secrets-encryption``, ``--node-name``, ``--cluster-init`` ... there).

``--config``/``K3S_CONFIG_FILE`` moves config.yaml; ``--data-dir``/``K3S_DATA_DIR`` moves
the data dir. ``<data dir>/server/cred/encryption-config.json`` existing means
secrets-encryption is on (K3s writes it only then).

Read-only. Every path is looked up under a *root* (``/`` on a node; a temp dir in tests),
and the paths returned are under that root too.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drkit.sources import k3s_common as k3s

UNIT_FILE = Path("/etc/systemd/system/k3s.service")
ENV_FILES = (
    Path("/etc/systemd/system/k3s.service.env"),
    Path("/etc/default/k3s"),
    Path("/etc/sysconfig/k3s"),
)
NODE_PASSWORD_FILE = Path("/etc/rancher/node/password")
"""The password this node registered with (K3s keeps its hash in a Secret in kube-system)."""

ENV_TO_FLAG = {
    "K3S_DATA_DIR": "data-dir",
    "K3S_CONFIG_FILE": "config",
    "K3S_TOKEN": "token",
    "K3S_TOKEN_FILE": "token-file",
    "K3S_NODE_NAME": "node-name",
    "K3S_DATASTORE_ENDPOINT": "datastore-endpoint",
    "K3S_CLUSTER_INIT": "cluster-init",
    "K3S_URL": "server",
    "K3S_KUBECONFIG_OUTPUT": "write-kubeconfig",
    "K3S_KUBECONFIG_MODE": "write-kubeconfig-mode",
}
"""The ``K3S_*`` variables that set server flags drkit cares about."""

ALIASES = {"d": "data-dir", "c": "config", "t": "token", "o": "write-kubeconfig"}

BOOL_FLAGS = frozenset({
    "cluster-init", "cluster-reset", "secrets-encryption", "disable-agent", "disable-apiserver",
    "disable-controller-manager", "disable-scheduler", "disable-etcd", "disable-cloud-controller",
    "disable-kube-proxy", "disable-network-policy", "disable-helm-controller", "embedded-registry",
    "etcd-expose-metrics", "etcd-disable-snapshots", "etcd-snapshot-compress", "etcd-s3", "selinux", "rootless",
    "prefer-bundled-bin", "protect-kernel-defaults", "debug", "flannel-ipv6-masq", "egress-selector-mode-disabled",
    "supervisor-metrics", "write-kubeconfig-group",
})
"""Server flags that take no value (``--flag`` alone means true)."""

LIST_FLAGS = frozenset({"disable", "tls-san", "node-label", "node-taint", "kube-apiserver-arg", "kubelet-arg",
                        "etcd-arg", "kube-controller-manager-arg", "kube-scheduler-arg", "kube-proxy-arg"})


def under(root: Path, path: Path) -> Path:
    """*path* (absolute, as on the node) below *root*."""
    return root / path.relative_to("/") if path.is_absolute() else root / path


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a systemd EnvironmentFile (quotes removed, comments
    skipped). A missing or unreadable file is empty."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def exec_start_args(unit_text: str) -> list[str]:
    """The arguments of the unit's last ``ExecStart=`` (continuation lines joined),
    without the program itself; ``[]`` when there is none."""
    lines: list[str] = []
    logical = ""
    for raw in unit_text.splitlines():
        if raw.rstrip().endswith("\\"):
            logical += raw.rstrip()[:-1] + " "
            continue
        lines.append(logical + raw)
        logical = ""
    if logical:
        lines.append(logical)
    found: list[str] | None = None
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("ExecStart="):
            cmd = stripped[len("ExecStart="):].lstrip("-@:+!")
            try:
                words = shlex.split(cmd, comments=False)
            except ValueError:
                words = cmd.split()
            found = words
    if not found:
        return []
    return found[1:]


def parse_server_args(args: list[str]) -> dict[str, Any]:
    """Flags of ``k3s server ARGS`` as config.yaml keys (``--disable x`` twice is a list)."""
    words = list(args)
    if words and words[0] == "server":
        words = words[1:]
    out: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or word in ("-", "--"):
            continue
        name, eq, value = word.lstrip("-").partition("=")
        name = ALIASES.get(name, name)
        if not eq:
            if name in BOOL_FLAGS:
                value = "true"
            elif i < len(words) and not words[i].startswith("-"):
                value = words[i]
                i += 1
            else:
                value = "true"
        if name in LIST_FLAGS:
            old = out.get(name, [])
            out[name] = (old if isinstance(old, list) else [old]) + [value]
        else:
            out[name] = value
    return out


@dataclass
class NodeFlags:
    """The effective settings of a K3s server node and where each came from."""

    root: Path
    settings: dict[str, Any]
    origin: dict[str, str]
    """key -> "env FILE", "config DIR" or "unit FILE"."""
    unit_file: Path
    env_files: list[Path]
    config_dir: Path
    data_dir: Path
    files_found: list[Path] = field(default_factory=list)

    def flag(self, name: str) -> bool:
        return k3s.config_flag(self.settings, name)

    @property
    def secrets_encryption(self) -> bool:
        """On when a flag says so or ``server/cred/encryption-config.json`` exists."""
        return self.flag("secrets-encryption") or (self.data_dir / "server/cred/encryption-config.json").is_file()

    @property
    def node_name(self) -> str:
        return k3s.node_name(self.settings)

    @property
    def datastore_endpoint(self) -> str | None:
        value = self.settings.get("datastore-endpoint")
        return str(value) if value else None

    def where(self, key: str) -> str:
        return self.origin.get(key, "default")


def read_node_flags(
    root: Path = Path("/"),
    *,
    config_dir: Path | None = None,
    data_dir: Path | None = None,
    unit_file: Path | None = None,
    env_files: list[Path] | None = None,
) -> NodeFlags:
    """Merge env files < config.yaml(.d) < unit ``ExecStart`` (see module doc).

    *config_dir*, *data_dir*, *unit_file*, *env_files* are real paths (already under
    *root*) and override what the node's files say. Raises DrkitError only for an
    unparsable config.yaml (K3s would not start with it either)."""
    unit = unit_file or under(root, UNIT_FILE)
    envs = env_files if env_files is not None else [under(root, p) for p in ENV_FILES]
    settings: dict[str, Any] = {}
    origin: dict[str, str] = {}
    found: list[Path] = []
    for env_path in envs:
        env = read_env_file(env_path)
        if env_path.is_file():
            found.append(env_path)
        for var, flag in ENV_TO_FLAG.items():
            if env.get(var):
                settings[flag] = env[var]
                origin[flag] = f"env {env_path}"
    try:
        unit_args = parse_server_args(exec_start_args(unit.read_text()))
        found.append(unit)
    except OSError:
        unit_args = {}
    named_config = unit_args.get("config") or settings.get("config")
    if config_dir is None:
        config_dir = under(root, Path(str(named_config))).parent if named_config else under(root, k3s.DEFAULT_CONFIG_DIR)
    config = k3s.read_k3s_config(config_dir)
    for key, value in config.items():
        settings[key] = value
        origin[key] = f"config {config_dir}"
    for key, value in unit_args.items():
        settings[key] = value
        origin[key] = f"unit {unit}"
    if data_dir is None:
        named = settings.get("data-dir")
        data_dir = under(root, Path(str(named))) if named else under(root, k3s.DEFAULT_DATA_DIR)
    return NodeFlags(root=root, settings=settings, origin=origin, unit_file=unit, env_files=list(envs),
                     config_dir=config_dir, data_dir=data_dir, files_found=found)
