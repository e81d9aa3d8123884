"""K3s sources end to end through the real CLI and repository: real etcd and SQLite,
the token rule, run metadata, restore to a target and a drill-style check."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from drkit.errors import Refused
from drkit.repository.snapshot import Snapshot
from drkit.sources.k3s_etcd import K3sEtcdSource
from tests.fixtures.k3s_layout import make_k3s_layout
from tests.servers.etcd import EtcdServer, start_etcd
from tests.sources.cli_helper import DrkitCli


def test_etcd_and_token_through_the_cli(tmp_path: Path, etcd_server: EtcdServer) -> None:
    body = "\n" + "\n".join(f'put /registry/e2e/k{i:04d} "v{i}"' for i in range(100)) + "\n\n\n"
    for _ in range(5):
        etcd_server.etcdctl("txn", input=body.encode())
    for i in range(1500):
        if i % 100 == 0:
            chunk = "\n" + "\n".join(f'put /registry/bulk/{j:05d} "{"y" * (j % 90)}"' for j in range(i, i + 100))
            etcd_server.etcdctl("txn", input=(chunk + "\n\n\n").encode())
    expected = etcd_server.all_keys()
    layout = make_k3s_layout(tmp_path / "node", datastore="etcd")
    d = DrkitCli.setup(tmp_path / "drkit", [
        {"name": "etcd", "type": "k3s-etcd", "endpoints": [etcd_server.client_url], "data_dir": str(layout.data_dir),
         "config_dir": str(layout.config_dir), "restore_data_dir": True, "member_name": "second"},
        {"name": "node", "type": "k3s-node", "data_dir": str(layout.data_dir), "config_dir": str(layout.config_dir)},
    ])
    # a datastore without its token is refused before anything is stored
    err = d.fails("backup", "-s", "etcd")
    assert isinstance(err, Refused) and err.exit_code == 9 and "no k3s-node source" in err.message
    snaps = d.backup()
    meta = snaps["_run_meta"]
    assert meta["datastore"] == "etcd" and meta["node_name"] == "node1" and meta["secrets_encryption"] is True
    assert meta["etcd_revision"] > 15 and meta["token_saved"] is True

    target = tmp_path / "restore"
    out = d.restore_json("latest", "-s", "etcd", "--target", str(target))
    snap_file = target / "etcd-snapshot.db"
    assert out["details"]["cluster_reset_command"] == \
        f"k3s server --cluster-reset --cluster-reset-restore-path={snap_file}"
    assert any("snapshot taken on K3s" in line for line in out["lines"])
    # restore_data_dir: the restore also built a data dir that a second etcd serves, key for key
    data_dir = target / "etcd-data"
    assert out["details"]["etcd_data_dir"] == str(data_dir)
    second = start_etcd(tmp_path / "second", data_dir=data_dir, name="second", initial_peer_url="http://localhost:2380")
    try:
        assert second.all_keys() == expected
    finally:
        second.stop()
    # the drill check with the snapshot's own metadata
    snap = Snapshot(id="x" * 64, time="", source="etcd", source_type="k3s-etcd", run="", host="", tree=[],
                    meta={"keys": len(expected), "revision": meta["etcd_revision"]})
    src = K3sEtcdSource("etcd", K3sEtcdSource.Options())
    check = src.check_restored(target, snap)
    assert check.ok, check.problems

    node = tmp_path / "node-restore"
    d.ok("restore", "latest", "-s", "node", "--target", str(node))
    assert (node / "data/server/token").read_bytes() == layout.token.read_bytes()
    assert (node / "data/server/tls/etcd/client.key").read_bytes() == \
        (layout.data_dir / "server/tls/etcd/client.key").read_bytes()


def test_sqlite_twice_through_the_cli(tmp_path: Path) -> None:
    layout = make_k3s_layout(tmp_path / "node", rows=4000)
    d = DrkitCli.setup(tmp_path / "drkit", [
        {"name": "db", "type": "k3s-sqlite", "path": str(layout.db), "config_dir": str(layout.config_dir)},
        {"name": "node", "type": "k3s-node", "data_dir": str(layout.data_dir), "config_dir": str(layout.config_dir)},
    ])
    first = d.backup()
    assert first["_run_meta"]["datastore"] == "sqlite" and first["_run_meta"]["sqlite_page_count"] > 10
    conn = sqlite3.connect(layout.db)
    conn.execute("INSERT INTO kine(name, value) VALUES ('/registry/new', x'01')")
    conn.commit()
    conn.close()
    second = d.backup()
    assert second["db"]["id"] != first["db"]["id"] and second["db"]["ok"]
    target = tmp_path / "r"
    d.ok("restore", "latest", "-s", "db", "--target", str(target))
    conn = sqlite3.connect(target / "state.db")
    assert conn.execute("SELECT count(*) FROM kine").fetchone()[0] == 4001
    conn.close()
    # the older snapshot is still there, unchanged
    snaps = d.ok("snapshots", "--json").stdout
    import json

    ids = [s["id"] for s in json.loads(snaps) if s["source"] == "db"]
    older = tmp_path / "r-old"
    d.ok("restore", ids[0], "-s", "db", "--target", str(older))
    conn = sqlite3.connect(older / "state.db")
    assert conn.execute("SELECT count(*) FROM kine").fetchone()[0] == 4000
    conn.close()
