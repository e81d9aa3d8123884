"""k3s-etcd against a real etcd 3.4: snapshot over the v3 gateway (plain and with
client certificates), trailer check, restore into a fresh data dir and a second etcd
serving every key and value."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from drkit.errors import IntegrityError, Refused, StorageError
from drkit.sources import build_source
from drkit.sources.k3s_common import find_k3s_server
from drkit.sources.k3s_etcd import K3sEtcdSource, check_trailer
from tests.fixtures.k3s_layout import fake_proc
from tests.fixtures.recording import RecordingBackup, RecordingRestore
from tests.servers.etcd import EtcdServer, start_etcd

N_KEYS = 3000


def _fill(server: EtcdServer, n: int = N_KEYS) -> None:
    """Write *n* keys (binary-safe values, some overwritten, some deleted) via etcdctl txn batches."""
    lines = []
    for i in range(n):
        lines.append(f'put /registry/test/key-{i:05d} "value-{i}-{"x" * (i % 50)}"')
    # etcdctl has no batch put: use a txn file of many puts (128 ops per txn, etcd's default limit)
    for start in range(0, len(lines), 120):
        body = "\n" + "\n".join(lines[start:start + 120]) + "\n\n\n"
        server.etcdctl("txn", input=body.encode())
    server.etcdctl("put", "/registry/test/key-00001", "overwritten")
    server.etcdctl("del", "/registry/test/key-00002")


def _source(tmp_path: Path, server: EtcdServer, **extra: object) -> K3sEtcdSource:
    # these tests exercise the HTTP gateway path unless they name another method
    spec: dict[str, object] = {"name": "etcd", "type": "k3s-etcd", "endpoints": [server.client_url],
                               "config_dir": str(tmp_path / "noconf"), "method": "api", **extra}
    if server.tls_dir:
        spec.update(ca_file=str(server.ca_file), cert_file=str(server.cert_file), key_file=str(server.key_file))
    src = build_source(spec, key="s")
    assert isinstance(src, K3sEtcdSource)
    return src


def _backup(tmp_path: Path, src: K3sEtcdSource) -> RecordingBackup:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    ctx = RecordingBackup("etcd", scratch)
    src.backup(ctx)
    return ctx


def test_backup_restore_second_etcd_has_every_key_and_value(tmp_path: Path, etcd_server: EtcdServer) -> None:
    _fill(etcd_server)
    expected = etcd_server.all_keys()
    assert len(expected) == N_KEYS - 1
    src = _source(tmp_path, etcd_server)
    ctx = _backup(tmp_path, src)
    data = ctx.content["etcd-snapshot.db"]
    assert len(data) > 100_000
    assert ctx.meta["keys"] == N_KEYS - 1
    rev = int(subprocess.run(["etcdctl", "--endpoints", etcd_server.client_url, "get", "x", "-w", "json"],
                             capture_output=True, check=True, env={**os.environ, "ETCDCTL_API": "3"})
              .stdout.split(b'"revision":')[1].split(b",")[0])
    assert ctx.meta["revision"] == rev
    assert ctx.run_meta["datastore"] == "etcd" and ctx.run_meta["etcd_revision"] == rev

    target = tmp_path / "restored"
    data_dir = tmp_path / "etcd2-data"
    result = RecordingRestore(ctx, target, options={"data_dir": str(data_dir), "member_name": "restored"})
    res = src.restore(result)
    snap = target / "etcd-snapshot.db"
    assert snap.read_bytes() == data
    assert res.details["cluster_reset_command"] == f"k3s server --cluster-reset --cluster-reset-restore-path={snap}"
    assert any("--cluster-reset" in line for line in res.lines)

    second = start_etcd(tmp_path / "second", data_dir=data_dir, name="restored",
                        initial_peer_url="http://localhost:2380")
    try:
        assert second.all_keys() == expected
    finally:
        second.stop()

    check = src.check_restored(target, ctx.snapshot())
    assert check.ok, check.problems
    assert check.details["keys"] == N_KEYS - 1


def test_client_certificates_over_https(tmp_path: Path, etcd_tls_server: EtcdServer) -> None:
    etcd_tls_server.etcdctl("put", "/registry/a", "b")
    ctx = _backup(tmp_path, _source(tmp_path, etcd_tls_server))
    assert ctx.meta["keys"] == 1
    check_trailer_path = tmp_path / "s.db"
    check_trailer_path.write_bytes(ctx.content["etcd-snapshot.db"])
    check_trailer(check_trailer_path)


def test_k3s_tls_layout_is_the_default(tmp_path: Path, etcd_tls_server: EtcdServer) -> None:
    # certificates where K3s keeps them: <data_dir>/server/tls/etcd/
    data_dir = tmp_path / "k3s"
    tls = data_dir / "server/tls/etcd"
    tls.mkdir(parents=True)
    assert etcd_tls_server.tls_dir is not None
    for name in ("server-ca.crt", "client.crt", "client.key"):
        (tls / name).write_bytes((etcd_tls_server.tls_dir / name).read_bytes())
    src = build_source({"name": "etcd", "type": "k3s-etcd", "endpoints": [etcd_tls_server.client_url],
                        "data_dir": str(data_dir), "config_dir": str(tmp_path / "noconf")}, key="s")
    ctx = _backup(tmp_path, src)  # type: ignore[arg-type]
    assert ctx.meta["keys"] == 0


def test_missing_certificates_and_unreachable_etcd(tmp_path: Path) -> None:
    from drkit.errors import ConfigError

    src = build_source({"name": "etcd", "type": "k3s-etcd", "data_dir": str(tmp_path / "none")}, key="s")
    with pytest.raises(ConfigError, match="needed for https://127.0.0.1:2379"):
        src.backup(RecordingBackup("etcd", tmp_path))
    from tests.servers.etcd import free_port

    src = build_source({"name": "etcd", "type": "k3s-etcd", "method": "api",
                        "endpoints": [f"http://127.0.0.1:{free_port()}"]}, key="s")
    with pytest.raises(StorageError, match="cannot reach etcd"):
        src.backup(RecordingBackup("etcd", tmp_path))
    # etcdctl (the default when installed) fails fast too, naming the other method
    src = build_source({"name": "etcd", "type": "k3s-etcd", "method": "etcdctl",
                        "endpoints": [f"http://127.0.0.1:{free_port()}"]}, key="s")
    with pytest.raises(StorageError) as info:
        src.backup(RecordingBackup("etcd", tmp_path))
    assert "'method: k3s'" in (info.value.hint or "")


def test_corrupted_snapshot_is_refused(tmp_path: Path, etcd_server: EtcdServer) -> None:
    _fill(etcd_server, 300)
    ctx = _backup(tmp_path, _source(tmp_path, etcd_server))
    good = tmp_path / "good.db"
    good.write_bytes(ctx.content["etcd-snapshot.db"])
    assert len(check_trailer(good)) == 64
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / "bad.db"
    bad.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="trailer does not match"):
        check_trailer(bad)
    # the same damage arriving from etcd is refused before anything is stored
    from drkit.sources import k3s_etcd

    src = _source(tmp_path, etcd_server)
    original = k3s_etcd.EtcdClient.snapshot_to

    def damaged(self: k3s_etcd.EtcdClient, dest: Path) -> int:
        n = original(self, dest)
        raw = bytearray(dest.read_bytes())
        raw[4096 + 17] ^= 0xFF
        dest.write_bytes(bytes(raw))
        return n

    k3s_etcd.EtcdClient.snapshot_to = damaged  # type: ignore[method-assign]
    try:
        rec = RecordingBackup("etcd", tmp_path / "scratch")
        with pytest.raises(IntegrityError):
            src.backup(rec)
        assert rec.entries == []
    finally:
        k3s_etcd.EtcdClient.snapshot_to = original  # type: ignore[method-assign]
    # and a damaged restored file fails the drill check
    target = tmp_path / "t"
    target.mkdir()
    (target / "etcd-snapshot.db").write_bytes(bytes(data))
    assert not src.check_restored(target, ctx.snapshot()).ok


def test_in_place_writes_under_k3s_db_and_refuses_while_running(tmp_path: Path, etcd_server: EtcdServer) -> None:
    etcd_server.etcdctl("put", "k", "v")
    data_dir = tmp_path / "k3s"
    src = _source(tmp_path, etcd_server, data_dir=str(data_dir))
    ctx = _backup(tmp_path, src)
    running = fake_proc(tmp_path / "p1", k3s_running=True)
    src.running_check = lambda: find_k3s_server(running)  # type: ignore[method-assign]
    with pytest.raises(Refused):
        src.restore(RecordingRestore(ctx, None, options={"in_place": True}))
    stopped = fake_proc(tmp_path / "p2", k3s_running=False)
    src.running_check = lambda: find_k3s_server(stopped)  # type: ignore[method-assign]
    res = src.restore(RecordingRestore(ctx, None, options={"in_place": True}))
    path = Path(res.details["snapshot_file"])
    assert path.parent == data_dir / "server/db/snapshots"
    assert path.read_bytes() == ctx.content["etcd-snapshot.db"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"--cluster-reset-restore-path={path}" in res.details["cluster_reset_command"]


def test_data_dir_restore_refuses_non_empty_dir(tmp_path: Path, etcd_server: EtcdServer) -> None:
    src = _source(tmp_path, etcd_server)
    ctx = _backup(tmp_path, src)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "member").mkdir()
    with pytest.raises(Refused, match="not empty"):
        src.restore(RecordingRestore(ctx, tmp_path / "t", options={"data_dir": str(busy)}))


def test_run_without_token_source_is_refused(tmp_path: Path) -> None:
    src = build_source({"name": "etcd", "type": "k3s-etcd"}, key="s")
    with pytest.raises(Refused, match="no k3s-node source"):
        src.check_run([src])


def test_method_k3s_runs_etcd_snapshot_save(tmp_path: Path, etcd_server: EtcdServer) -> None:
    from tests.fixtures.k3s_layout import write_standin_k3s

    _fill(etcd_server, 200)
    k3s_bin = write_standin_k3s(tmp_path / "bin", etcd_endpoint=etcd_server.client_url)
    src = _source(tmp_path, etcd_server, method="k3s", k3s_binary=str(k3s_bin))
    ctx = _backup(tmp_path, src)
    assert ctx.meta["method"] == "k3s" and ctx.meta["total_keys"] >= 200
    assert ctx.run_meta["k3s_version"] == "v1.30.4+k3s1"
    snap = tmp_path / "k.db"
    snap.write_bytes(ctx.content["etcd-snapshot.db"])
    check_trailer(snap)
    # a failing k3s is one clear error
    broken = build_source({"name": "etcd", "type": "k3s-etcd", "method": "k3s",
                           "k3s_binary": str(write_standin_k3s(tmp_path / "bin2")), "timeout": 30}, key="s")
    (tmp_path / "scratch2").mkdir()
    with pytest.raises(Exception) as info:
        broken.backup(RecordingBackup("etcd", tmp_path / "scratch2"))
    assert "command failed" in str(info.value) and "etcd datastore is not started" in str(info.value)
    assert "'method: etcdctl'" in (getattr(info.value, "hint", None) or "")


def test_method_etcdctl_over_tls(tmp_path: Path, etcd_tls_server: EtcdServer) -> None:
    _fill(etcd_tls_server, 150)
    src = _source(tmp_path, etcd_tls_server, method="etcdctl")
    ctx = _backup(tmp_path, src)
    assert ctx.meta["method"] == "etcdctl" and ctx.meta["keys"] == 149  # _fill deletes one key
    assert ctx.meta["endpoint"] == etcd_tls_server.client_url


def test_gateway_404_hints_at_other_methods(tmp_path: Path) -> None:
    import http.server
    import threading

    class NoGateway(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"404 page not found")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoGateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        src = build_source({"name": "etcd", "type": "k3s-etcd", "method": "api",
                            "endpoints": [f"http://127.0.0.1:{server.server_address[1]}"]}, key="s")
        with pytest.raises(StorageError, match="HTTP 404") as info:
            src.backup(RecordingBackup("etcd", tmp_path))
        assert info.value.hint and "method: etcdctl" in info.value.hint
    finally:
        server.shutdown()
