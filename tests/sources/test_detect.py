"""drkit config detect / check: on a K3s node laid out as for real, with and without
the (FAKE) Kubernetes API, and end to end: detect --write, init, backup, restore."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import yaml

from drkit.config import parse_config
from drkit.detect import detect, render_config
from drkit.errors import ConfigError, DrkitError, Refused
from tests.cli import CliResult, invoke
from tests.fakes.kube_api import FakeKube
from tests.fixtures.k3s_layout import fake_proc, make_k3s_layout


def _ok(*args: str, env: dict[str, str] | None = None) -> CliResult:
    result = invoke(*args, env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _sources(text: str) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in yaml.safe_load(text)["sources"]}


def test_sqlite_node_without_kube(tmp_path: Path) -> None:
    layout = make_k3s_layout(tmp_path / "node")
    fake_proc(tmp_path / "node", k3s_running=True)
    det = detect(root=layout.root)
    assert det.datastore == "sqlite" and det.datastore_path == layout.db
    assert det.k3s_installed and det.k3s_running and det.secrets_encryption and det.node_name == "node1"
    assert det.components["argocd"].installed is True  # HelmChart in server/manifests
    assert det.components["longhorn"].installed is None and det.kube_error
    text = render_config(det)
    sources = _sources(text)
    under = layout.root
    assert sources["k3s-node"] == {"name": "k3s-node", "type": "k3s-node", "data_dir": str(layout.data_dir),
                                   "config_dir": str(layout.config_dir),
                                   # under --root the unit and env files are named, so the source reads those
                                   "unit_file": str(under / "etc/systemd/system/k3s.service"),
                                   "unit_env_file": str(under / "etc/systemd/system/k3s.service.env"),
                                   "default_env_file": str(under / "etc/default/k3s"),
                                   "sysconfig_env_file": str(under / "etc/sysconfig/k3s"),
                                   "node_password_file": str(under / "etc/rancher/node/password")}
    assert sources["k3s-db"]["type"] == "k3s-sqlite" and sources["k3s-db"]["path"] == str(layout.db)
    # without an API to ask, Kubernetes sources are written commented out, with the reason
    assert set(sources) == {"k3s-node", "k3s-db"}
    assert "# - name: argocd" in text and "# - name: longhorn" in text and "no kubeconfig at" in text
    cfg = parse_config(yaml.safe_load(text))
    assert [s.type_name for s in cfg.sources] == ["k3s-node", "k3s-sqlite"]


def test_etcd_node(tmp_path: Path) -> None:
    layout = make_k3s_layout(tmp_path / "node", datastore="etcd", secrets_encryption=False)
    det = detect(root=layout.root, use_kube=False)
    assert det.datastore == "etcd" and not det.secrets_encryption
    sources = _sources(render_config(det))
    assert sources["k3s-etcd"]["type"] == "k3s-etcd" and sources["k3s-etcd"]["data_dir"] == str(layout.data_dir)
    assert "k3s-db" not in sources


def test_external_datastore_and_not_a_node(tmp_path: Path) -> None:
    layout = make_k3s_layout(tmp_path / "node")
    (layout.config_dir / "config.yaml.d" / "90-db.yaml").write_text("datastore-endpoint: postgres://db:5432/k3s\n")
    det = detect(root=layout.root, use_kube=False)
    assert det.datastore == "external" and any("external datastore" in n for n in det.notes)
    assert set(_sources(render_config(det))) == {"k3s-node"}
    empty = detect(root=tmp_path / "empty", use_kube=False)
    assert not empty.k3s_installed and empty.datastore is None
    text = render_config(empty)
    assert yaml.safe_load(text)["sources"] == []
    parse_config(yaml.safe_load(text))


def _seed_cluster(fake: FakeKube) -> None:
    for ns in ("kube-system", "argocd", "longhorn-system"):
        if fake.get("Namespace", None, ns) is None:
            fake.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    fake.seed({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": "sealed-secrets-keyabcde", "namespace": "kube-system",
                            "labels": {"sealedsecrets.bitnami.com/sealed-secrets-key": "active"}},
               "data": {"tls.crt": base64.b64encode(b"crt").decode(), "tls.key": base64.b64encode(b"key").decode()}})
    fake.seed({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "argocd-cm", "namespace": "argocd"},
               "data": {"url": "https://argocd.example.test"}})
    fake.seed({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "repo-gitops", "namespace": "argocd",
                            "labels": {"argocd.argoproj.io/secret-type": "repository"}},
               "data": {"url": base64.b64encode(b"https://git.example.test/platform/gitops.git").decode(),
                        "password": base64.b64encode(b"hunter2-token").decode()}})


def test_components_from_the_fake_kube_api(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    _seed_cluster(fake)
    layout = make_k3s_layout(tmp_path / "node")
    det = detect(root=layout.root, kubeconfig=kubeconfig)
    assert det.kube_error is None
    c = det.components
    assert (c["sealed-secrets"].installed, c["sealed-secrets"].namespace) == (True, "kube-system")
    assert (c["argocd"].installed, c["argocd"].namespace) == (True, "argocd")
    assert c["longhorn"].installed is True and c["cert-manager"].installed is False
    assert det.git_repos == ["https://git.example.test/platform/gitops.git"]
    text = render_config(det)
    assert "hunter2-token" not in text
    sources = _sources(text)
    assert sources["k8s-secrets"]["presets"] == ["sealed-secrets"]
    assert sources["k8s-secrets"]["kubeconfig"] == str(kubeconfig)
    assert sources["argocd"]["namespace"] == "argocd" and sources["longhorn"]["type"] == "longhorn"
    assert "#   url: https://git.example.test/platform/gitops.git" in text
    cfg = parse_config(yaml.safe_load(text))
    assert {s.type_name for s in cfg.sources} == {"k3s-node", "k3s-sqlite", "k8s-secrets", "argocd", "longhorn"}


def test_unreachable_kube_api_comments_sources_out(tmp_path: Path) -> None:
    from tests.servers.etcd import free_port

    layout = make_k3s_layout(tmp_path / "node")
    (layout.config_dir / "k3s.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "default",
        "clusters": [{"name": "default", "cluster": {"server": f"https://127.0.0.1:{free_port()}",
                                                     "insecure-skip-tls-verify": True}}],
        "users": [{"name": "default", "user": {"token": "t"}}],
        "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}]}))
    det = detect(root=layout.root)
    assert det.kubeconfig == layout.config_dir / "k3s.yaml"
    assert det.kube_error and "cannot reach" in det.kube_error
    sources = _sources(render_config(det))
    assert set(sources) == {"k3s-node", "k3s-db"}


def test_cli_detect_write_init_backup_restore(tmp_path: Path) -> None:
    layout = make_k3s_layout(tmp_path / "node", rows=500)
    config = tmp_path / "etc-drkit" / "drkit.yaml"
    repo = tmp_path / "repo"
    out = _ok("config", "detect", "--root", str(layout.root), "--no-kube")
    assert "type: k3s-sqlite" in out.output
    doc = json.loads(_ok("config", "detect", "--root", str(layout.root), "--no-kube", "--json").output)
    assert doc["datastore"] == "sqlite" and doc["datastore_path"] == str(layout.db)
    assert doc["components"]["argocd"]["installed"] is True and "type: k3s-node" in doc["config"]
    _ok("config", "detect", "--write", "--path", str(config), "--root", str(layout.root), "--no-kube",
        "--repository", str(repo))
    assert (config.stat().st_mode & 0o777) == 0o600
    passphrase = config.parent / "passphrase"
    assert len(passphrase.read_text().strip()) >= 40 and (passphrase.stat().st_mode & 0o777) == 0o600
    again = invoke("config", "detect", "--write", "--path", str(config), "--root", str(layout.root), "--no-kube")
    assert isinstance(again.exception, Refused) and again.exception.exit_code == 9
    assert "config OK" in _ok("-c", str(config), "config", "check").output

    _ok("-c", str(config), "init")
    backup = _ok("-c", str(config), "backup", "--json")
    snaps = {s["source"]: s for s in json.loads(backup.stdout)["snapshots"]}
    assert set(snaps) == {"k3s-node", "k3s-db"}

    target = tmp_path / "restored-db"
    _ok("-c", str(config), "restore", "latest", "--source", "k3s-db", "--target", str(target))
    conn = sqlite3.connect(target / "state.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM kine").fetchone()[0] == 500
    conn.close()
    node_target = tmp_path / "restored-node"
    _ok("-c", str(config), "restore", "latest", "--source", "k3s-node", "--target", str(node_target))
    assert (node_target / "data/server/token").read_bytes() == layout.token.read_bytes()
    assert ((node_target / "data/server/tls/server-ca.key").stat().st_mode & 0o777) == 0o600
    assert (node_target / "config/registries.yaml").read_bytes() == (layout.config_dir / "registries.yaml").read_bytes()


def test_cli_config_check_refuses_datastore_without_token(tmp_path: Path) -> None:
    layout = make_k3s_layout(tmp_path / "node")
    config = tmp_path / "drkit.yaml"
    config.write_text(yaml.safe_dump({"repository": {"url": str(tmp_path / "repo")},
                                      "sources": [{"name": "db", "type": "k3s-sqlite", "path": str(layout.db)}]}))
    result = invoke("-c", str(config), "config", "check")
    assert isinstance(result.exception, ConfigError) and result.exception.exit_code == 2
    assert "no k3s-node source" in result.exception.message
    config.write_text("repository: {url: /x}\nsources: [{name: g, type: git}]\n")
    bad = invoke("-c", str(config), "config", "check")
    assert isinstance(bad.exception, DrkitError) and "sources[0].url" in bad.exception.message
