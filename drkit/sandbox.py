"""Throwaway sample sources for ``drkit drill --sandbox`` (no cluster, no config).

:func:`build_sandbox` lays out, under one temporary directory:

- ``files``: a small tree (text, a multi-chunk binary, an empty file, a symlink,
  nested directories, a non-ASCII name, a private mode);
- ``sqlite``: a K3s-style (kine schema) SQLite database in WAL mode that a writer
  thread keeps inserting into while the backup runs (:meth:`Sandbox.under_load`);
- ``git``: a Git repository with commits on two branches, a lightweight and an
  annotated tag and a note;
- ``etcd``: a real etcd (when the ``etcd`` binary is installed) on free loopback
  ports, with keys written through its v3 HTTP gateway;
- ``volume``: a volume image: an ext4 filesystem made with ``mkfs.ext4 -d`` (a plain
  image file when mkfs.ext4 is missing).

Each sample becomes a source of the sandbox config. Where drkit has a source type
for the thing (``k3s-sqlite``, ``k3s-etcd``, ``git``) and it is installed and usable
here, that type is used; otherwise the artefact is stored with a ``files`` source
and the sample says so in its ``note``. Each sample also carries a check of its own
(:data:`drkit.services.drill.ExtraCheck`) that the drill runs on the restored data
on top of the source's check: SQLite integrity and rows within the backup window,
``git fsck`` and refs equal to the original's, etcd started on the restored
snapshot with every key present, the image's SHA-256 and a read-only ``e2fsck``.

Nothing here touches anything outside the sandbox directory; :meth:`Sandbox.close`
stops the writer thread and etcd (idempotent).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from drkit import proc
from drkit.errors import DrkitError
from drkit.repository.snapshot import Snapshot
from drkit.services.restore import safe_destination
from drkit.sources import available_types
from drkit.sources.base import CheckResult

ExtraCheck = Callable[[Path, Snapshot], CheckResult]
Say = Callable[[str], None]

SQLITE_ROWS = 500
ETCD_KEYS = 50

_KINE_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS kine (
        id INTEGER PRIMARY KEY AUTOINCREMENT, name INTEGER, created INTEGER, deleted INTEGER,
        create_revision INTEGER, prev_revision INTEGER, lease INTEGER, value BLOB, old_value BLOB)""",
    "CREATE INDEX IF NOT EXISTS kine_name_index ON kine (name)",
    "CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex ON kine (name, prev_revision)",
]


@dataclass
class Sample:
    """One sample source of the sandbox."""

    name: str
    kind: str
    """What it stands for: files, sqlite, git, etcd, volume."""
    spec: dict[str, Any]
    """Its item in the config's ``sources:`` list."""
    note: str = ""
    """Why it is stored as it is (e.g. the fallback to a files source)."""
    check: ExtraCheck | None = None


@dataclass
class Sandbox:
    """The sample sources, their config, and what runs alongside them."""

    root: Path
    config_path: Path
    repo_dir: Path
    samples: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _writer: "_SqliteWriter | None" = None
    _before_backup: list[Callable[[], None]] = field(default_factory=list)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def checks(self) -> dict[str, ExtraCheck]:
        return {s.name: s.check for s in self.samples if s.check is not None}

    @contextlib.contextmanager
    def under_load(self) -> Iterator[None]:
        """Run the block (the backup) while the SQLite writer inserts rows; the
        pre-backup steps of fallback samples run first, inside the load."""
        if self._writer is not None:
            self._writer.start()
        try:
            for step in self._before_backup:
                step()
            yield
        finally:
            if self._writer is not None:
                self._writer.stop()

    def after_backup(self) -> None:
        """Stop the live services (etcd): the drill must not need them."""
        self.close()

    def close(self) -> None:
        """Stop everything started (idempotent)."""
        if self._writer is not None:
            self._writer.stop()
        while self._closers:
            with contextlib.suppress(Exception):
                self._closers.pop()()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            h.update(block)
    return h.hexdigest()


def _restored(restored: Path, logical: str) -> Path:
    return safe_destination(restored, logical)


# --- files ---------------------------------------------------------------------------


def _files_sample(root: Path) -> Sample:
    base = root / "files"
    contents = {
        "etc/app/config.yaml": b"replicas: 1\nimage: registry.local/app:1.4.2\n",
        "etc/app/secret.env": b"API_TOKEN=not-a-real-token\n",
        "srv/www/index.html": b"<html><body>drkit sandbox</body></html>\n" * 50,
        "srv/data/blob.bin": os.urandom(2 * 1024 * 1024 + 4321),
        "srv/data/empty": b"",
        "srv/data/deep/a/b/c.txt": b"deep\n",
        "srv/caf\u00e9 \u00fcml\u00e4ut.txt": "non-ASCII name\n".encode(),
    }
    for rel, data in contents.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.chmod(base / "etc/app/secret.env", 0o600)
    (base / "srv/www/current").symlink_to("index.html")
    return Sample("files", "files", {"name": "files", "type": "files", "paths": [str(base)]})


# --- SQLite under write load -----------------------------------------------------------


class _SqliteWriter:
    """A thread that inserts and commits rows until stopped; counts what committed."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.committed_before = 0
        """Highest id committed when the backup started (all of it must be restored)."""
        self.committed_after = 0
        """Highest id committed when the writer stopped (nothing beyond may appear)."""
        self.inserted = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self.error: str | None = None

    def _max_id(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM kine").fetchone()[0])

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.db, timeout=30)
            i = 0
            while not self._stop.is_set():
                i += 1
                conn.execute(
                    "INSERT INTO kine(name, created, deleted, create_revision, prev_revision, lease, value)"
                    " VALUES (?, 1, 0, 0, 0, 0, ?)",
                    (f"/registry/load/{time.monotonic_ns()}-{i}", os.urandom(64) * 8),
                )
                conn.commit()
                self.inserted += 1
                if i == 20:
                    self._started.set()
                time.sleep(0.001)
            self.committed_after = self._max_id(conn)
            conn.close()
        except sqlite3.Error as exc:
            self.error = str(exc)
        finally:
            self._started.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="drkit-sandbox-sqlite-writer", daemon=True)
        self._thread.start()
        self._started.wait(30)
        conn = sqlite3.connect(self.db, timeout=30)
        try:
            self.committed_before = self._max_id(conn)
        finally:
            conn.close()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(30)
        self._thread = None


def _self_signed_ca(common_name: str) -> tuple[bytes, bytes]:
    """A real self-signed EC CA certificate and key (PEM), like K3s's server-ca."""
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


def _write(path: Path, data: str | bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)


def _k3s_node_layout(base: Path) -> tuple[Path, Path, str]:
    """A K3s server's token, TLS, credentials, manifests and config under *base*;
    returns (data dir, config dir, token)."""
    data, conf = base / "var/lib/rancher/k3s", base / "etc/rancher/k3s"
    server = data / "server"
    token = f"K10{hashlib.sha256(os.urandom(32)).hexdigest()}::server:{os.urandom(16).hex()}"
    _write(server / "token", token + "\n", 0o600)
    _write(server / "node-token", token + "\n", 0o600)
    for ca in ("server-ca", "client-ca", "request-header-ca"):
        cert, key = _self_signed_ca(f"k3s-{ca}@sandbox")
        _write(server / "tls" / f"{ca}.crt", cert, 0o644)
        _write(server / "tls" / f"{ca}.key", key, 0o600)
    _write(server / "cred/passwd", f"{os.urandom(16).hex()},node,node,k3s:agent\n", 0o600)
    _write(server / "manifests/sandbox.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: sandbox}\n", 0o600)
    os.chmod(server / "cred", 0o700)
    _write(conf / "config.yaml", 'write-kubeconfig-mode: "0600"\nnode-name: sandbox\nsecrets-encryption: true\n', 0o600)
    return data, conf, token


def _create_kine_db(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    for stmt in _KINE_SCHEMA:
        conn.execute(stmt)
    conn.executemany(
        "INSERT INTO kine(name, created, deleted, create_revision, prev_revision, lease, value) VALUES (?, 1, 0, 0, 0, 0, ?)",
        [(f"/registry/configmaps/default/cm-{i}", f"value-{i}".encode() * 40) for i in range(SQLITE_ROWS)],
    )
    conn.commit()
    conn.close()


def _sqlite_samples(root: Path, box: Sandbox, types: list[str]) -> list[Sample]:
    """The K3s datastore under write load, and (with k3s-sqlite) the node's token and config."""
    out: list[Sample] = []
    node_spec: dict[str, Any] | None = None
    if "k3s-sqlite" in types and "k3s-node" in types:
        data_dir, config_dir, token = _k3s_node_layout(root / "k3s")
        db = data_dir / "server/db/state.db"
        _create_kine_db(db)
        node_spec = {"name": "k3s-node", "type": "k3s-node", "data_dir": str(data_dir), "config_dir": str(config_dir)}
        real: dict[str, Any] = {"name": "k3s-db", "type": "k3s-sqlite", "path": str(db), "config_dir": str(config_dir)}
    else:
        db = root / "sqlite" / "state.db"
        _create_kine_db(db)
        real = {"name": "k3s-db", "type": "k3s-sqlite", "path": str(db)}
    writer = box._writer = _SqliteWriter(db)
    if node_spec is not None and _usable(real, types) and _usable(node_spec, types):
        spec, note, logical = real, "", "state.db"

        def node_check(restored: Path, snap: Snapshot) -> CheckResult:
            path = restored / "data/server/token"
            ok = path.is_file() and path.read_text().strip() == token
            summary = "token equals the node's" if ok else "restored token differs from the node's"
            return CheckResult(ok, summary, problems=[] if ok else [summary])

        out.append(Sample("k3s-node", "k3s-node", node_spec, "", node_check))
    else:
        missing = "k3s-sqlite" if "k3s-sqlite" not in types else "k3s-node (k3s-sqlite needs it in the same run)"
        export = root / "sqlite-export"
        export.mkdir()
        copy = export / "state.db"
        box._before_backup.append(lambda: _stdlib_online_copy(db, copy))
        spec = {"name": "k3s-db", "type": "files", "paths": [str(export)]}
        note = f"{missing} not usable: copied online with SQLite's backup API under write load, stored as files"
        logical = str(copy)

    def check(restored: Path, snap: Snapshot) -> CheckResult:
        path = _restored(restored, logical)
        problems: list[str] = []
        if writer.error:
            problems.append(f"the sandbox writer failed: {writer.error}")
        if not path.is_file():
            return CheckResult(False, f"{logical} not restored", problems=problems + [f"{path} missing"])
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            integrity = "; ".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check(10)"))
            rows, max_id = conn.execute("SELECT count(*), coalesce(max(id), 0) FROM kine").fetchone()
        except sqlite3.DatabaseError as exc:
            return CheckResult(False, f"not a usable SQLite database: {exc}", problems=problems + [str(exc)])
        finally:
            conn.close()
        if integrity != "ok":
            problems.append(f"integrity_check: {integrity}")
        if max_id < writer.committed_before:
            problems.append(f"rows committed before the backup are missing (max id {max_id} < {writer.committed_before})")
        if writer.committed_after and max_id > writer.committed_after:
            problems.append(f"max id {max_id} beyond the last committed row {writer.committed_after}")
        summary = (
            f"integrity ok, {rows} rows (backup taken under load: {writer.committed_before} rows committed before it, "
            f"{writer.inserted} inserted during the run)"
            if not problems else "; ".join(problems)
        )
        return CheckResult(not problems, summary, details={"rows": rows, "max_id": max_id}, problems=problems)

    out.insert(0, Sample("k3s-db", "sqlite", spec, note, check))
    return out


def _stdlib_online_copy(src: Path, dest: Path) -> None:
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
    try:
        target = sqlite3.connect(dest)
        try:
            source.backup(target, pages=-1)
        finally:
            target.close()
    finally:
        source.close()


# --- Git -------------------------------------------------------------------------------


def _git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    base_env = {
        "GIT_AUTHOR_NAME": "drkit sandbox", "GIT_AUTHOR_EMAIL": "sandbox@drkit.invalid",
        "GIT_COMMITTER_NAME": "drkit sandbox", "GIT_COMMITTER_EMAIL": "sandbox@drkit.invalid",
        "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd),
    }
    base_env.update(env or {})
    return proc.run(["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", *args],
                    cwd=cwd, env=base_env, timeout=60).text


def _refs(repo: Path) -> str:
    return _git(repo, "for-each-ref", "--format=%(refname) %(objectname)")


def _git_sample(root: Path, types: list[str]) -> Sample:
    work = root / "git" / "work"
    work.mkdir(parents=True)
    _git(work, "init", "-q")
    for i in range(3):
        (work / "apps").mkdir(exist_ok=True)
        (work / "apps" / f"app-{i}.yaml").write_text(f"apiVersion: argoproj.io/v1alpha1\nkind: Application\nname: app-{i}\n")
        _git(work, "add", "-A")
        _git(work, "commit", "-q", "-m", f"app {i}")
    _git(work, "tag", "v0.1")
    _git(work, "checkout", "-q", "-b", "feature/longhorn")
    (work / "longhorn.yaml").write_text("numberOfReplicas: 1\n")
    _git(work, "add", "-A")
    _git(work, "commit", "-q", "-m", "longhorn settings")
    _git(work, "tag", "-a", "v0.2-rc", "-m", "release candidate")
    _git(work, "notes", "add", "-m", "reviewed in the sandbox")
    _git(work, "checkout", "-q", "main")
    bare = root / "git" / "gitops.git"
    _git(root / "git", "clone", "-q", "--mirror", str(work), str(bare))
    original_refs = _refs(bare)
    real: dict[str, Any] = {"name": "git", "type": "git", "url": str(bare), "cache_dir": str(root / "git" / "cache")}
    if _usable(real, types):
        spec, note = real, ""
    else:
        spec = {"name": "git", "type": "files", "paths": [str(bare)]}
        note = _fallback_note("git", types, "the bare mirror is stored as files")

    def check(restored: Path, snap: Snapshot) -> CheckResult:
        candidates = [_restored(restored, str(bare))] + sorted(p.parent for p in restored.rglob("HEAD") if (p.parent / "objects").is_dir())
        repo = next((c for c in candidates if (c / "objects").is_dir()), None)
        if repo is None:
            return CheckResult(False, "no Git repository restored", problems=["no Git repository under the restored data"])
        problems = []
        try:
            _git(repo, "fsck", "--full", "--no-dangling")
        except DrkitError as exc:
            problems.append(f"git fsck: {exc.message}")
        try:
            refs = _refs(repo)
        except DrkitError as exc:
            refs = ""
            problems.append(f"git for-each-ref: {exc.message}")
        if refs != original_refs:
            problems.append("refs differ from the original repository")
        n = len(original_refs.splitlines())
        summary = f"git fsck clean, {n} refs equal to the original (branches, tags, notes)" if not problems else "; ".join(problems)
        return CheckResult(not problems, summary, details={"refs": n}, problems=problems)

    return Sample("git", "git", spec, note, check)


# --- etcd ------------------------------------------------------------------------------


@dataclass
class _Etcd:
    """A running etcd on loopback (a long-running server: started with subprocess
    directly, since drkit.proc only runs programs to completion)."""

    process: subprocess.Popen[bytes]
    client_url: str
    data_dir: Path
    log: Path

    @classmethod
    def start(cls, data_dir: Path, name: str, *, log: Path, peer_port: int | None = None) -> "_Etcd":
        """Start etcd on free loopback ports and wait until it is healthy; DrkitError if it does not come up."""
        binary = proc.which("etcd")
        last = ""
        for _ in range(3):
            client, peer = free_port(), peer_port or free_port()
            client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
            logf = open(log, "ab")
            p = subprocess.Popen(
                [binary, "--name", name, "--data-dir", str(data_dir),
                 "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                 "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                 "--initial-cluster", f"{name}={peer_url}", "--log-level", "error", "--logger", "zap"],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=proc.child_env(),
            )
            logf.close()
            etcd = cls(p, client_url, data_dir, log)
            if etcd.wait_ready(20):
                return etcd
            etcd.stop()
            lines = log.read_text(errors="replace").strip().splitlines()
            last = lines[-1] if lines else "no output"
        raise DrkitError(f"etcd did not start: {last}", hint=f"see {log}")

    def wait_ready(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.client_url + "/health", timeout=2) as resp:
                    if json.load(resp).get("health") in ("true", True):
                        return True
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.1)
        return False

    def _post(self, path: str, doc: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(self.client_url + path, data=json.dumps(doc).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return dict(json.load(resp))

    def put(self, key: str, value: str) -> None:
        self._post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def count(self, prefix: str) -> int:
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        doc = self._post("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(end), "count_only": True})
        return int(doc.get("count", 0))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _etcd_sample(root: Path, box: Sandbox, types: list[str]) -> Sample | None:
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        box.notes.append("etcd skipped: the etcd/etcdctl binaries are not installed (Debian: etcd-server, etcd-client)")
        return None
    base = root / "etcd"
    base.mkdir()
    etcd = _Etcd.start(base / "data", "sandbox", log=base / "etcd.log")
    box._closers.append(etcd.stop)
    for i in range(ETCD_KEYS):
        etcd.put(f"/sandbox/registry/configmaps/cm-{i:03d}", f"value {i}")
    export = base / "export"
    export.mkdir()
    snapshot_file = export / "etcd-snapshot.db"
    real: dict[str, Any] = {"name": "etcd", "type": "k3s-etcd", "endpoints": [etcd.client_url]}
    node_layout = root / "k3s"
    if node_layout.is_dir():  # keep the source away from the host's /etc/rancher/k3s
        real.update(data_dir=str(node_layout / "var/lib/rancher/k3s"), config_dir=str(node_layout / "etc/rancher/k3s"))
    else:
        real.update(data_dir=str(base / "k3s-data"), config_dir=str(base / "k3s-config"))
    if _usable(real, types):
        return Sample("etcd", "etcd", real)  # k3s-etcd checks the restored snapshot itself

    def save() -> None:
        proc.run(["etcdctl", "--endpoints", etcd.client_url, "snapshot", "save", str(snapshot_file)],
                 env={"ETCDCTL_API": "3"}, timeout=60)

    box._before_backup.append(save)
    spec = {"name": "etcd", "type": "files", "paths": [str(export)]}
    note = _fallback_note("k3s-etcd", types, "snapshot taken with 'etcdctl snapshot save', stored as files")

    def check(restored: Path, snap: Snapshot) -> CheckResult:
        found = sorted(p for p in restored.rglob("*.db") if p.is_file())
        if not found:
            return CheckResult(False, "no etcd snapshot restored", problems=["no *.db file under the restored data"])
        data_dir = restored.parent / f"{restored.name}-etcd-check"
        peer = free_port()
        peer_url = f"http://127.0.0.1:{peer}"
        try:
            proc.run(["etcdctl", "snapshot", "restore", str(found[0]), "--data-dir", str(data_dir), "--name", "drill",
                      "--initial-cluster", f"drill={peer_url}", "--initial-advertise-peer-urls", peer_url],
                     env={"ETCDCTL_API": "3"}, timeout=60)
            throwaway = _Etcd.start(data_dir, "drill", log=restored.parent / f"{restored.name}-etcd-check.log", peer_port=peer)
        except DrkitError as exc:
            return CheckResult(False, f"etcd does not start on the restored snapshot: {exc.message}", problems=[exc.message])
        try:
            keys = throwaway.count("/sandbox/")
        finally:
            throwaway.stop()
            shutil.rmtree(data_dir, ignore_errors=True)
        ok = keys == ETCD_KEYS
        summary = f"a throwaway etcd started on the restored snapshot holds all {keys} keys" if ok else f"{keys} of {ETCD_KEYS} keys"
        return CheckResult(ok, summary, details={"keys": keys}, problems=[] if ok else [summary])

    return Sample("etcd", "etcd", spec, note, check)


# --- volume image ----------------------------------------------------------------------


def _volume_sample(root: Path, box: Sandbox) -> Sample:
    base = root / "volume"
    content = base / "content"
    (content / "pgdata").mkdir(parents=True)
    (content / "pgdata" / "PG_VERSION").write_text("16\n")
    (content / "pgdata" / "base.dat").write_bytes(os.urandom(512 * 1024))
    (content / "hello.txt").write_text("data on a Longhorn-style volume\n")
    export = base / "image"
    export.mkdir()
    image = export / "pvc-sandbox.img"
    mkfs = shutil.which("mkfs.ext4") or ("/usr/sbin/mkfs.ext4" if os.path.exists("/usr/sbin/mkfs.ext4") else None)
    fs = False
    if mkfs:
        proc.run([mkfs, "-F", "-q", "-t", "ext4", "-d", str(content), "-L", "sandbox", str(image), "16M"], timeout=60,
                 env={"E2FSPROGS_FAKE_TIME": "1700000000"})
        fs = True
        note = "longhorn needs a cluster: the volume image (ext4, mkfs.ext4 -d) is stored as files"
    else:
        with open(image, "wb") as f:
            f.truncate(16 * 1024 * 1024)
            f.seek(1024 * 1024)
            f.write(os.urandom(1024 * 1024))
        note = "longhorn needs a cluster and mkfs.ext4 is missing: a raw image file is stored as files"
    digest = _sha256(image)

    def check(restored: Path, snap: Snapshot) -> CheckResult:
        path = _restored(restored, str(image))
        if not path.is_file():
            return CheckResult(False, "image not restored", problems=[f"{path} missing"])
        problems = []
        got = _sha256(path)
        if got != digest:
            problems.append(f"image SHA-256 {got[:16]} differs from the original {digest[:16]}")
        fsck = ""
        if fs:
            e2fsck = shutil.which("e2fsck") or "/usr/sbin/e2fsck"
            try:
                proc.run([e2fsck, "-f", "-n", str(path)], timeout=60)
                fsck = ", read-only e2fsck clean"
            except DrkitError as exc:
                problems.append(f"e2fsck -fn: {exc.message}")
        summary = f"image SHA-256 matches the original{fsck}" if not problems else "; ".join(problems)
        return CheckResult(not problems, summary, details={"sha256": got}, problems=problems)

    return Sample("volume", "volume", {"name": "volume", "type": "files", "paths": [str(export)]}, note, check)


# --- assembly --------------------------------------------------------------------------


def _usable(spec: dict[str, Any], types: list[str]) -> bool:
    """True when the source type is installed and accepts the sandbox's options."""
    if spec["type"] not in types:
        return False
    from drkit.sources import build_source

    try:
        build_source(spec, key="sandbox")
        return True
    except DrkitError:
        return False


def _fallback_note(type_name: str, types: list[str], how: str) -> str:
    why = "not available" if type_name not in types else "does not accept the sandbox's options"
    return f"{type_name} source {why}: {how}"


def build_sandbox(root: Path, *, say: Say = lambda _: None) -> Sandbox:
    """Create the samples and the config under *root* (an empty directory).

    The config (``root/drkit.yaml``) names the repository ``root/repo``, a passphrase
    file ``root/passphrase`` (random, mode 0600), the drill result file
    ``root/drill-result.json`` and a metrics textfile ``root/drkit.prom``.
    Raises DrkitError when a sample cannot be made (a program failed); the caller
    must call :meth:`Sandbox.close` when it gets one (on failure here, everything
    started is stopped before the error propagates)."""
    box = Sandbox(root=root, config_path=root / "drkit.yaml", repo_dir=root / "repo")
    try:
        _build(box, root, say)
    except BaseException:
        box.close()  # no etcd left running when a later sample fails
        raise
    return box


def _build(box: Sandbox, root: Path, say: Say) -> None:
    types = available_types()
    say("creating sample sources")
    box.samples.append(_files_sample(root))
    box.samples.extend(_sqlite_samples(root, box, types))
    if shutil.which("git"):
        box.samples.append(_git_sample(root, types))
    else:
        box.notes.append("git skipped: the git program is not installed")
    etcd = _etcd_sample(root, box, types)
    if etcd is not None:
        box.samples.append(etcd)
    box.samples.append(_volume_sample(root, box))
    passphrase = root / "passphrase"
    passphrase.write_text(base64.b32encode(os.urandom(20)).decode() + "\n")
    os.chmod(passphrase, 0o600)
    doc = {
        "repository": {"url": str(box.repo_dir), "password_file": str(passphrase), "pack_size_mib": 4},
        "sources": [s.spec for s in box.samples],
        "drill": {"result_file": str(root / "drill-result.json")},
        "metrics": {"textfile": str(root / "drkit.prom")},
    }
    box.config_path.write_text("# written by 'drkit drill --sandbox'\n" + yaml.safe_dump(doc, sort_keys=False))
    os.chmod(box.config_path, 0o600)
