"""A bare node in a temp root with the stand-ins on its PATH, and the lost cluster's data
backed up for real (used by the end-to-end runbook tests)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import yaml

from tests.fixtures.k3s_layout import make_k3s_layout

STANDINS = Path(__file__).resolve().parent / "standins"

READ_ONLY = {
    ("kubectl", "get"), ("helm", "list"), ("systemctl", "is-active"), ("systemctl", "is-enabled"),
    ("dpkg-query", None), ("swapon", None), ("lsmod", None), ("sysctl", "-n"), ("k3s", "--version"),
}


def mutating(calls: list[dict]) -> list[list[str]]:
    """The calls that change something (queries and probes left out), as [tool, *argv]."""
    out = []
    for c in calls:
        argv = c["argv"]
        words, skip = [], False
        for a in argv:
            if skip:
                skip = False
            elif a in ("-n", "--namespace"):
                skip = True
            elif not a.startswith("-"):
                words.append(a)
        first = argv[0] if argv else None
        if (c["tool"], None) in READ_ONLY or (c["tool"], first) in READ_ONLY:
            continue
        if c["tool"] == "kubectl" and words and words[0] == "get":
            continue
        out.append([c["tool"], *argv])
    return out


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def kine_rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return conn.execute("SELECT id, name, value FROM kine ORDER BY id").fetchall()
    finally:
        conn.close()


def make_node(tmp_path: Path) -> dict:
    """A bare 'Ubuntu 24.04' in a temp root, stand-ins on a PATH, and the original cluster's data backed up."""
    root = tmp_path / "root"
    for d in ("etc", "var/tmp"):
        (root / d).mkdir(parents=True)
    (root / "etc/os-release").write_text('NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="24.04"\n')
    (root / "etc/fstab").write_text("UUID=abc / ext4 defaults 0 1\n/swap.img none swap sw 0 0\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in STANDINS.iterdir():
        if tool.is_symlink():
            (bin_dir / tool.name).symlink_to(tool)
    log = tmp_path / "standin-calls.jsonl"
    state = tmp_path / "standin-state.json"
    (bin_dir / "standin.json").write_text(json.dumps({"root": str(root), "log": str(log), "state": str(state),
                                                      "node_name": "node1"}))
    apps = {f"application/argocd/{n}": {
        "kind": "application", "metadata": {"name": n, "namespace": "argocd"},
        "spec": {"syncPolicy": {"automated": {"prune": True, "selfHeal": True}}},
        "status": {"sync": {"status": "OutOfSync"}, "health": {"status": "Missing"}}} for n in ("app1", "app2")}
    pvcs = {"pvc/apps/data": {"kind": "pvc", "metadata": {"name": "data", "namespace": "apps"}, "status": {"phase": "Bound"}}}
    state.write_text(json.dumps({"swap": ["/swap.img file 2G 0B -2"], "objects": {**apps, **pvcs}}))

    # the lost cluster's data, backed up for real
    orig = tmp_path / "orig"
    layout = make_k3s_layout(orig, datastore="sqlite", secrets_encryption=False)
    db = layout.data_dir / "server/db/state.db"
    assert len(kine_rows(db)) >= 100
    (orig / "sealed").mkdir()
    (orig / "sealed" / "kube-system").mkdir()
    (orig / "sealed" / "kube-system" / "sealed-secrets-keyabcde.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "sealed-secrets-keyabcde", "namespace": "kube-system",
                     "labels": {"sealedsecrets.bitnami.com/sealed-secrets-key": "active"}},
        "data": {"tls.crt": "Y3J0", "tls.key": "a2V5"}}))
    (orig / "volumes").mkdir()
    image = os.urandom(2 * 1024 * 1024 + 123)
    (orig / "volumes" / "pvc-data.img").write_bytes(image)
    (tmp_path / "passphrase").write_text("correct horse battery staple\n")
    (tmp_path / "passphrase").chmod(0o600)
    config = tmp_path / "drkit.yaml"
    config.write_text(yaml.safe_dump({
        "repository": {"url": str(tmp_path / "repo"), "password_file": str(tmp_path / "passphrase")},
        "sources": [
            {"name": "k3s-db", "type": "k3s-sqlite", "path": str(db), "config_dir": str(layout.config_dir)},
            {"name": "k3s-node", "type": "k3s-node", "data_dir": str(layout.data_dir), "config_dir": str(layout.config_dir)},
            {"name": "sealed-secrets-keys", "type": "files", "paths": [str(orig / "sealed")]},
            {"name": "longhorn", "type": "files", "paths": [str(orig / "volumes")]},
        ],
    }))
    config.chmod(0o600)
    return {"root": root, "bin": bin_dir, "log": log, "state": state, "orig": orig, "db": db, "image": image,
            "config": config, "tmp": tmp_path}


