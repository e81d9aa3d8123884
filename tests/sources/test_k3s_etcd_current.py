"""k3s-etcd on current K3s (>= v1.28.3): 2379 speaks gRPC only (TLS, client certificates,
non-HTTP/2 connections closed), the HTTP gateway is on listen-client-http-urls. The
stand-in (tests/servers/k3s_etcd.py) puts those listeners in front of a real etcd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from drkit.cli import cli
from drkit.errors import StorageError
from drkit.sources import build_source
from drkit.sources.k3s_etcd import K3sEtcdSource, check_trailer
from tests.conftest import require_binary
from tests.fixtures.k3s_layout import make_k3s_layout, write_standin_k3s
from tests.fixtures.recording import RecordingBackup
from tests.servers.etcd import EtcdServer, etcd_server  # noqa: F401
from tests.servers.k3s_etcd import K3sEtcd, k3s_etcd  # noqa: F401


def _fill(server: K3sEtcd, n: int = 40) -> None:
    for i in range(n):
        server.etcd.etcdctl("put", f"/registry/configmaps/default/cm-{i}", f"value-{i}")


def _source(server: K3sEtcd, tmp_path: Path, **extra: object) -> K3sEtcdSource:
    src = build_source({"name": "etcd", "type": "k3s-etcd", "data_dir": str(server.data_dir),
                        "config_dir": str(tmp_path / "noconf"), **extra}, key="s")
    assert isinstance(src, K3sEtcdSource)
    return src


def _backup(src: K3sEtcdSource, tmp_path: Path) -> RecordingBackup:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    ctx = RecordingBackup("etcd", scratch)
    src.backup(ctx)
    return ctx


def test_default_method_works_on_the_grpc_only_port(tmp_path: Path, k3s_etcd: K3sEtcd) -> None:  # noqa: F811
    require_binary("etcdctl")
    _fill(k3s_etcd)
    k3s_etcd.write_etcd_config()
    src = _source(k3s_etcd, tmp_path)  # no method, no endpoints: what a detected config says
    assert src.method() == "etcdctl" and src.endpoints("etcdctl") == [k3s_etcd.grpc_url]
    ctx = _backup(src, tmp_path)
    assert ctx.meta["method"] == "etcdctl" and ctx.meta["endpoint"] == k3s_etcd.grpc_url
    assert ctx.meta.get("keys") == 40, ctx.meta  # counted over gRPC too
    snap = tmp_path / "s.db"
    snap.write_bytes(ctx.content["etcd-snapshot.db"])
    check_trailer(snap)


def test_api_on_the_grpc_only_port_names_the_methods_that_work(tmp_path: Path, k3s_etcd: K3sEtcd) -> None:  # noqa: F811
    src = _source(k3s_etcd, tmp_path, method="api", endpoints=[k3s_etcd.grpc_url], timeout=20)
    with pytest.raises(StorageError) as info:
        _backup(src, tmp_path)
    assert k3s_etcd.grpc.closed_non_h2 >= 1  # the HTTP/1.1 request reached it and was cut off
    assert "gRPC-only" in info.value.message
    assert "'method: k3s'" in (info.value.hint or "") and "'method: etcdctl'" in (info.value.hint or "")
    # no client certificate at all: a TLS failure, with the same hint
    bare = _source(k3s_etcd, tmp_path, method="api", endpoints=[k3s_etcd.grpc_url], timeout=20,
                   cert_file=str(tmp_path / "missing.crt"))
    with pytest.raises(Exception) as missing:
        _backup(bare, tmp_path)
    assert "missing.crt" in str(missing.value)


def test_api_reads_the_http_gateway_from_k3s_etcd_config(tmp_path: Path, k3s_etcd: K3sEtcd) -> None:  # noqa: F811
    _fill(k3s_etcd, 25)
    k3s_etcd.write_etcd_config()
    src = _source(k3s_etcd, tmp_path, method="api")
    assert src.endpoints("api") == [k3s_etcd.http_url]
    ctx = _backup(src, tmp_path)
    assert ctx.meta["method"] == "api" and ctx.meta["endpoint"] == k3s_etcd.http_url and ctx.meta["keys"] == 25


def test_k3s_method_asks_for_an_uncompressed_snapshot(tmp_path: Path, etcd_server: EtcdServer) -> None:  # noqa: F811
    etcd_server.etcdctl("put", "k", "v")
    # a node whose config.yaml says etcd-snapshot-compress: true
    k3s_bin = write_standin_k3s(tmp_path / "bin", etcd_endpoint=etcd_server.client_url, compress_by_config=True)
    src = build_source({"name": "etcd", "type": "k3s-etcd", "method": "k3s", "k3s_binary": str(k3s_bin),
                        "config_dir": str(tmp_path / "noconf")}, key="s")
    ctx = _backup(src, tmp_path)  # type: ignore[arg-type]
    snap = tmp_path / "s.db"
    snap.write_bytes(ctx.content["etcd-snapshot.db"])
    check_trailer(snap)


def test_the_hint_is_shown_when_several_sources_run(tmp_path: Path, k3s_etcd: K3sEtcd) -> None:  # noqa: F811
    layout = make_k3s_layout(tmp_path / "node", datastore="etcd")
    config = tmp_path / "drkit.yaml"
    (tmp_path / "pass").write_text("a passphrase for this test\n")
    config.write_text(yaml.safe_dump({
        "repository": {"url": str(tmp_path / "repo"), "password_file": str(tmp_path / "pass")},
        "sources": [
            {"name": "k3s-node", "type": "k3s-node", "data_dir": str(layout.data_dir),
             "config_dir": str(layout.config_dir)},
            {"name": "k3s-etcd", "type": "k3s-etcd", "method": "api", "endpoints": [k3s_etcd.grpc_url],
             "data_dir": str(k3s_etcd.data_dir), "config_dir": str(layout.config_dir), "timeout": 20},
        ]}))
    config.chmod(0o600)
    runner = CliRunner()
    assert runner.invoke(cli, ["-c", str(config), "init"], env={}).exit_code == 0
    r = runner.invoke(cli, ["-c", str(config), "backup"], env={})
    assert r.exit_code != 0
    assert "k3s-etcd: FAILED: storage error: cannot reach etcd's HTTP gateway" in r.output
    assert "  hint: K3s >= v1.28.3 serves only gRPC on 127.0.0.1:2379" in r.output
    j = runner.invoke(cli, ["-c", str(config), "backup", "--json"], env={})
    failed = next(s for s in json.loads(j.stdout)["snapshots"] if s["source"] == "k3s-etcd")
    assert "'method: etcdctl'" in failed["hint"]
