"""K3s flags that live outside config.yaml: the systemd unit's ExecStart (installs via
INSTALL_K3S_EXEC) and the env files (K3S_*). detect must find what they say, the config
it writes must make the sources find it too (under --root), and k3s-node backs the
files up and restores them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from click.testing import CliRunner

from drkit.cli import cli
from drkit.detect import detect, render_config
from drkit.sources import build_source, k3s_flags
from drkit.sources.k3s_common import token_fingerprint
from tests.fixtures.k3s_layout import TOKEN, make_k3s_layout
from tests.fixtures.recording import RecordingBackup, RecordingRestore

# what install.sh writes for: INSTALL_K3S_EXEC="server --data-dir /srv/k3s --secrets-encryption --node-name edge-7"
UNIT = """[Unit]
Description=Lightweight Kubernetes
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-/etc/systemd/system/k3s.service.env
KillMode=process
ExecStartPre=/bin/sh -xc '! /usr/bin/systemctl is-enabled --quiet nm-cloud-setup.service 2>/dev/null'
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStart=/usr/local/bin/k3s \\
    server \\
\t'--data-dir' \\
\t'/srv/k3s' \\
\t'--secrets-encryption' \\
\t'--node-name' \\
\t'edge-7' \\
\t'--disable=traefik' \\

[Install]
WantedBy=multi-user.target
"""


def _node_with_unit(tmp_path: Path, unit: str = UNIT, *, datastore: str = "sqlite") -> tuple[Path, Path]:
    """A node whose data dir is /srv/k3s, named only in the unit; config.yaml says nothing about it."""
    layout = make_k3s_layout(tmp_path / "node", datastore=datastore, secrets_encryption=False)
    root = layout.root
    data = root / "srv/k3s"
    data.parent.mkdir(parents=True)
    shutil.move(str(layout.data_dir), data)
    (layout.config_dir / "config.yaml").write_text("write-kubeconfig-mode: '0600'\n")
    (layout.config_dir / "config.yaml.d/50-hardening.yaml").unlink()
    unit_path = root / "etc/systemd/system/k3s.service"
    unit_path.parent.mkdir(parents=True)
    unit_path.write_text(unit)
    (root / "etc/systemd/system/k3s.service.env").write_text(f"K3S_TOKEN='{TOKEN}'\n")
    (root / "etc/rancher/node").mkdir(parents=True)
    (root / "etc/rancher/node/password").write_text("0123456789abcdef0123456789abcdef\n")
    tmpl = data / "agent/etc/containerd/config.toml.tmpl"
    tmpl.parent.mkdir(parents=True)
    tmpl.write_text('{{ template "base" . }}\n[plugins."io.containerd.grpc.v1.cri".registry]\n')
    return root, data


def test_exec_start_and_env_files_are_parsed() -> None:
    args = k3s_flags.exec_start_args(UNIT)
    assert args == ["server", "--data-dir", "/srv/k3s", "--secrets-encryption", "--node-name", "edge-7",
                    "--disable=traefik"]
    flags = k3s_flags.parse_server_args(args + ["--disable", "servicelb", "-t", "x", "--cluster-init"])
    assert flags == {"data-dir": "/srv/k3s", "secrets-encryption": "true", "node-name": "edge-7",
                     "disable": ["traefik", "servicelb"], "token": "x", "cluster-init": "true"}
    assert k3s_flags.exec_start_args("[Service]\nType=notify\n") == []


def test_detect_finds_data_dir_encryption_and_node_name_in_the_unit(tmp_path: Path) -> None:
    root, data = _node_with_unit(tmp_path)
    det = detect(root=root, use_kube=False)
    assert det.data_dir == data and det.k3s_installed
    assert det.datastore == "sqlite" and det.datastore_path == data / "server/db/state.db"
    assert det.secrets_encryption is True and det.node_name == "edge-7"
    unit = root / "etc/systemd/system/k3s.service"
    assert f"data-dir is set in {unit} (not in config.yaml)" in det.notes
    # the config detect writes makes the sources find the same node
    sources = {s["name"]: s for s in yaml.safe_load(render_config(det))["sources"]}
    assert sources["k3s-node"]["data_dir"] == str(data) and sources["k3s-node"]["unit_file"] == str(unit)
    assert sources["k3s-db"]["path"] == str(data / "server/db/state.db")
    # and without the unit, the same files say "not a K3s server node"
    unit.unlink()
    assert not detect(root=root, use_kube=False).k3s_installed


def test_encryption_config_file_means_encryption_on(tmp_path: Path) -> None:
    root, data = _node_with_unit(tmp_path, UNIT.replace("\t'--secrets-encryption' \\\n", ""))
    assert detect(root=root, use_kube=False).secrets_encryption is False
    (data / "server/cred/encryption-config.json").write_text('{"kind":"EncryptionConfiguration"}\n')
    assert detect(root=root, use_kube=False).secrets_encryption is True


def test_external_datastore_in_the_env_file(tmp_path: Path) -> None:
    root, _ = _node_with_unit(tmp_path)
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/k3s").write_text('# written by hand\nK3S_DATASTORE_ENDPOINT="postgres://k3s:pw@db:5432/k3s"\n')
    det = detect(root=root, use_kube=False)
    assert det.datastore == "external"
    assert f"datastore-endpoint is set in {root / 'etc/default/k3s'} (not in config.yaml)" in det.notes
    assert set(s["name"] for s in yaml.safe_load(render_config(det))["sources"]) == {"k3s-node"}


def test_cluster_init_in_the_unit_means_etcd(tmp_path: Path) -> None:
    root, data = _node_with_unit(tmp_path, UNIT.replace("'--node-name'", "'--cluster-init' '--node-name'"))
    (data / "server/db/state.db").unlink()
    det = detect(root=root, use_kube=False)
    assert det.datastore == "etcd" and det.datastore_path == data / "server/db/etcd"
    sources = {s["name"]: s for s in yaml.safe_load(render_config(det))["sources"]}
    assert sources["k3s-etcd"]["data_dir"] == str(data)


def test_k3s_node_backs_up_unit_env_password_and_containerd_template(tmp_path: Path) -> None:
    root, data = _node_with_unit(tmp_path)
    det = detect(root=root, use_kube=False)
    cfg = next(s for s in yaml.safe_load(render_config(det))["sources"] if s["name"] == "k3s-node")
    src = build_source(cfg, key="s")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ctx = RecordingBackup("k3s-node", scratch)
    src.backup(ctx)
    unit = root / "etc/systemd/system/k3s.service"
    assert ctx.content["system/k3s.service"] == unit.read_bytes()
    assert ctx.content["system/k3s.service.env"] == (root / "etc/systemd/system/k3s.service.env").read_bytes()
    assert ctx.content["system/node-password"] == (root / "etc/rancher/node/password").read_bytes()
    assert ctx.content["data/agent/etc/containerd/config.toml.tmpl"].startswith(b'{{ template "base" . }}')
    assert ctx.run_meta["secrets_encryption"] is True and ctx.run_meta["node_name"] == "edge-7"
    assert ctx.run_meta["data_dir"] == str(data)
    assert ctx.run_meta["token_sha256"] == token_fingerprint(TOKEN) == token_fingerprint("5e3fa1b2c3d4e5f6")
    assert TOKEN not in json.dumps(ctx.run_meta) + json.dumps(ctx.meta)

    # in place on a rebuilt node: the unit and env files land where the options say
    unit.unlink()
    (root / "etc/systemd/system/k3s.service.env").unlink()
    restore = RecordingRestore(ctx, None, options={"in_place": True})
    src.running_check = lambda: None  # type: ignore[method-assign]
    src.restore(restore)
    assert unit.read_text() == UNIT
    assert (root / "etc/systemd/system/k3s.service.env").read_text() == f"K3S_TOKEN='{TOKEN}'\n"


def test_cli_detect_write_then_backup_finds_the_unit_only_data_dir(tmp_path: Path) -> None:
    root, data = _node_with_unit(tmp_path)
    config = tmp_path / "etc-drkit" / "drkit.yaml"
    runner = CliRunner()
    r = runner.invoke(cli, ["config", "detect", "--write", "--path", str(config), "--root", str(root), "--no-kube",
                            "--repository", str(tmp_path / "repo")], env={})
    assert r.exit_code == 0, r.output
    assert runner.invoke(cli, ["-c", str(config), "init"], env={}).exit_code == 0
    b = runner.invoke(cli, ["-c", str(config), "backup", "--json"], env={})
    assert b.exit_code == 0, b.output
    run_meta = json.loads(b.stdout)["run_meta"]
    assert run_meta["node_name"] == "edge-7" and run_meta["secrets_encryption"] is True
    assert run_meta["datastore"] == "sqlite" and run_meta["data_dir"] == str(data)


def test_a_node_without_unit_files_still_has_the_system_dir(tmp_path: Path) -> None:
    layout = make_k3s_layout(tmp_path / "node")
    none = tmp_path / "nothing"
    src = build_source({"name": "n", "type": "k3s-node", "data_dir": str(layout.data_dir),
                        "config_dir": str(layout.config_dir), "unit_file": str(none / "k3s.service"),
                        "unit_env_file": str(none / "env"), "default_env_file": str(none / "d"),
                        "sysconfig_env_file": str(none / "s"), "node_password_file": str(none / "p")}, key="s")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ctx = RecordingBackup("n", scratch)
    src.backup(ctx)
    system = [e for e in ctx.entries if e.path.split("/")[0] == "system"]
    assert [(e.path, e.type) for e in system] == [("system", "dir")]  # the runbooks upload DIR/system as is
    assert ctx.meta["system_files"] == {}
