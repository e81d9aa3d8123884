"""``k3s-etcd``: K3s's embedded etcd (``--cluster-init``), saved as an etcd snapshot.

Since K3s v1.28.3 the embedded etcd's ``127.0.0.1:2379`` speaks gRPC only (TLS with client
certificates); its HTTP gateway moved to ``listen-client-http-urls`` (``127.0.0.1:2382``,
which K3s says not to rely on), and K3s ships no ``etcdctl``. Hence the methods:

- ``auto`` (default): ``etcdctl`` when it is installed, else ``k3s``;
- ``k3s``: ``k3s etcd-snapshot save`` into a private directory, always asking for an
  uncompressed file (``--etcd-snapshot-compress=false``: the command reads config.yaml,
  which may set compression);
- ``etcdctl``: ``etcdctl snapshot save`` over gRPC;
- ``api``: etcd's maintenance API through the v3 HTTP gateway (``POST
  <endpoint>/v3/maintenance/snapshot``, JSON lines ``{"result":{"blob":"<base64>"}}``).

Endpoints default to what K3s wrote into ``<data_dir>/server/db/etcd/config``:
``listen-client-http-urls`` for ``api``, ``listen-client-urls`` for ``etcdctl``, else
``https://127.0.0.1:2379``. On a K3s node the client certificates under
``server/tls/etcd/`` are used (``client.crt``, ``client.key``, CA ``server-ca.crt``);
plain ``http://`` endpoints need none. Every connection, TLS or HTTP/2 failure names a
method that works on current K3s.

Either way the snapshot's integrity trailer (its last 32 bytes are the SHA-256 of
everything before them) is checked before anything is stored; a damaged snapshot
is refused. The revision (from ``etcdutl``/``etcdctl snapshot status``) and the
number of live keys at that revision are recorded.

Restore writes ``etcd-snapshot.db`` and prints the one-shot K3s step that uses it::

    k3s server --cluster-reset --cluster-reset-restore-path=DIR/etcd-snapshot.db

(then start K3s normally, with the token from the same backup run). For plain etcd,
the source option ``restore_data_dir: true`` (or the restore option ``data_dir``) also
builds an etcd data dir with ``etcdutl snapshot restore`` (``etcdctl`` on etcd 3.4). ``--in-place`` puts the
file under ``<data_dir>/server/db/snapshots/`` (refused while K3s runs).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from drkit import proc
from drkit.atomicio import write_atomic_from
from drkit.errors import (
    ConfigError,
    DrkitError,
    IntegrityError,
    Refused,
    StorageError,
    UsageError,
)
from drkit.sources import k3s_common as k3s
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

ARTEFACT = "etcd-snapshot.db"
DEFAULT_ENDPOINT = "https://127.0.0.1:2379"
GATEWAY_HINT = ("K3s >= v1.28.3 serves only gRPC on 127.0.0.1:2379 (its HTTP gateway is not to be relied on): "
                "set 'method: k3s' (k3s etcd-snapshot save) or 'method: etcdctl' (install etcd-client) on the source")
SNAPSHOT_PATH = "/v3/maintenance/snapshot"
TRAILER = 32  # bytes of SHA-256 appended to every etcd snapshot


class K3sEtcdOptions(SourceOptions):
    endpoints: list[str] | None = Field(None, min_length=1)
    """Default: from ``<data_dir>/server/db/etcd/config`` (see module doc), else
    ``https://127.0.0.1:2379``."""
    ca_file: Path | None = None
    """Default: ``<data_dir>/server/tls/etcd/server-ca.crt`` for https endpoints."""
    cert_file: Path | None = None
    """Default: ``<data_dir>/server/tls/etcd/client.crt``."""
    key_file: Path | None = None
    """Default: ``<data_dir>/server/tls/etcd/client.key``."""
    data_dir: Path = k3s.DEFAULT_DATA_DIR
    config_dir: Path = k3s.DEFAULT_CONFIG_DIR
    method: Literal["auto", "api", "etcdctl", "k3s"] = "auto"
    """``auto``: ``etcdctl`` if installed, else ``k3s``; ``api``: the v3 HTTP gateway;
    ``etcdctl``: ``etcdctl snapshot save`` over gRPC; ``k3s``: ``k3s etcd-snapshot save``."""
    k3s_binary: str = "k3s"
    timeout: float = Field(600.0, gt=0)
    """Seconds the snapshot may take."""
    restore_data_dir: bool = False
    """Plain etcd (not K3s): ``restore --target DIR`` also builds ``DIR/etcd-data``,
    a data dir for member ``member_name`` advertising ``peer_url``."""
    member_name: str = Field("default", min_length=1)
    peer_url: str = "http://localhost:2380"

    @model_validator(mode="after")
    def _check(self) -> K3sEtcdOptions:
        for url in self.endpoints or []:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {url!r} must start with http:// or https://")
        return self


@dataclass(frozen=True)
class SnapshotStatus:
    revision: int
    total_keys: int
    hash: int
    total_size: int


# --- integrity -------------------------------------------------------------------------

def check_trailer(path: Path) -> str:
    """Verify an etcd snapshot's SHA-256 trailer; return the hex digest.

    Raises :class:`IntegrityError` if the file is too short or the digest differs.
    """
    size = path.stat().st_size
    if size <= TRAILER:
        raise IntegrityError(name=path.name, detail=f"only {size} bytes: not an etcd snapshot")
    digest = hashlib.sha256()
    remaining = size - TRAILER
    with open(path, "rb") as f:
        while remaining:
            block = f.read(min(remaining, 1 << 20))
            if not block:
                raise IntegrityError(name=path.name, detail="file shrank while being read")
            digest.update(block)
            remaining -= len(block)
        trailer = f.read(TRAILER)
    if digest.digest() != trailer:
        raise IntegrityError(
            name=path.name,
            detail="SHA-256 trailer does not match the content: the snapshot is damaged or truncated",
            hint="take a new snapshot; a damaged one is never stored",
        )
    return digest.hexdigest()


def snapshot_tool() -> tuple[str, dict[str, str]]:
    """``etcdutl`` when installed (etcd >= 3.5), else ``etcdctl`` with ETCDCTL_API=3."""
    found = shutil.which("etcdutl")
    if found:
        return found, {}
    return proc.which("etcdctl", hint="install etcd-client (etcdctl) or etcdutl"), {"ETCDCTL_API": "3"}


def snapshot_status(path: Path) -> SnapshotStatus:
    """Revision, key count (all revisions) and hash of a snapshot file."""
    tool, env = snapshot_tool()
    out = proc.run([tool, "snapshot", "status", str(path), "-w", "json"], env=env, timeout=120).text
    try:
        doc = json.loads(out.strip().splitlines()[-1])
        return SnapshotStatus(int(doc["revision"]), int(doc["totalKey"]), int(doc["hash"]), int(doc["totalSize"]))
    except (ValueError, KeyError, IndexError) as exc:
        raise DrkitError(f"cannot read '{Path(tool).name} snapshot status' output: {exc}") from None


def restore_data_dir(snapshot: Path, data_dir: Path, *, name: str = "default",
                     peer_url: str = "http://localhost:2380") -> None:
    """Build a fresh etcd data dir from *snapshot* (``snapshot restore``).

    Refuses (:class:`Refused`) a *data_dir* that exists and is not empty.
    """
    if data_dir.exists() and any(data_dir.iterdir()):
        raise Refused(f"etcd data dir {data_dir} exists and is not empty",
                      hint="choose a new directory; drkit never overwrites an etcd data dir")
    if data_dir.exists():
        data_dir.rmdir()
    tool, env = snapshot_tool()
    proc.run([tool, "snapshot", "restore", str(snapshot), "--data-dir", str(data_dir), "--name", name,
              "--initial-cluster", f"{name}={peer_url}", "--initial-advertise-peer-urls", peer_url],
             env=env, timeout=600)


def k3s_etcd_urls(data_dir: Path) -> dict[str, list[str]]:
    """``listen-client-urls`` and ``listen-client-http-urls`` from the etcd config K3s
    writes to ``<data_dir>/server/db/etcd/config`` ({} when absent or unreadable)."""
    import yaml

    try:
        doc = yaml.safe_load((k3s.etcd_member_dir(data_dir) / "config").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[str, list[str]] = {}
    if isinstance(doc, dict):
        for key in ("listen-client-urls", "listen-client-http-urls"):
            value = doc.get(key)
            urls = [u.strip() for u in str(value).split(",") if u.strip()] if value else []
            good = [u for u in urls if u.startswith(("http://", "https://"))]
            if good:
                out[key] = good
    return out


# --- talking to etcd --------------------------------------------------------------------

@dataclass(frozen=True)
class EtcdClient:
    """A minimal client of etcd's v3 HTTP gateway (snapshot, range count)."""

    endpoint: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    timeout: float = 600.0

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.endpoint.startswith("https://"):
            return None
        for label, path in (("ca_file", self.ca_file), ("cert_file", self.cert_file), ("key_file", self.key_file)):
            if path is None or not Path(path).is_file():
                raise ConfigError(f"{path} not found (needed for {self.endpoint})", key=label,
                                  hint="on a K3s node these are under server/tls/etcd/; run as root")
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx

    def _post(self, path: str, body: dict[str, Any], timeout: float) -> Any:
        req = urllib.request.Request(self.endpoint.rstrip("/") + path, data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        try:
            return urllib.request.urlopen(req, timeout=timeout, context=self._ssl())
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode("utf-8", "replace").strip()
            hint = GATEWAY_HINT if exc.code in (404, 405) else None
            raise StorageError(message=f"etcd {self.endpoint}{path}: HTTP {exc.code}: {detail}", hint=hint) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (http.client.RemoteDisconnected, http.client.BadStatusLine, ConnectionResetError)):
                reason = f"the connection was closed without an HTTP/1.1 answer ({type(reason).__name__}): " \
                         "a gRPC-only (HTTP/2) etcd port"
            raise StorageError(message=f"cannot reach etcd's HTTP gateway at {self.endpoint}: {reason}",
                               hint=GATEWAY_HINT) from None

    def snapshot_to(self, dest: Path) -> int:
        """Stream a snapshot into *dest*; return its size. The trailer is not checked here."""
        total = 0
        with self._post(SNAPSHOT_PATH, {}, self.timeout) as resp, os.fdopen(k3s.private_file(dest), "wb") as out:
            for line in resp:
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except ValueError:
                    raise DrkitError(f"etcd {self.endpoint} sent a malformed snapshot stream line") from None
                if "error" in doc:
                    err = doc["error"]
                    message = err.get("message") if isinstance(err, dict) else err
                    raise DrkitError(f"etcd snapshot failed: {message}")
                blob = base64.b64decode(doc.get("result", {}).get("blob", ""))
                out.write(blob)
                total += len(blob)
            out.flush()
            os.fsync(out.fileno())
        return total

    def count_keys(self, revision: int | None = None) -> tuple[int, int]:
        """(live key count, header revision), at *revision* if given."""
        body: dict[str, Any] = {"key": "AA==", "range_end": "AA==", "count_only": True}
        if revision:
            body["revision"] = revision
        with self._post("/v3/kv/range", body, 60) as resp:
            doc = json.loads(resp.read())
        if "error" in doc or "code" in doc:
            raise DrkitError(f"etcd range failed: {doc.get('message') or doc.get('error')}")
        return int(doc.get("count", 0)), int(doc.get("header", {}).get("revision", 0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def throwaway_etcd(data_dir: Path, *, name: str = "default", timeout: float = 30.0) -> Iterator[EtcdClient]:
    """Run ``etcd`` on *data_dir* on free loopback ports until the block ends.

    Used by drills to prove that restored data starts. The process is killed on exit,
    also when the block raises. Raises :class:`DrkitError` if etcd does not come up.
    """
    binary = proc.which("etcd", hint="install etcd-server to check etcd snapshots")
    cport, pport = _free_port(), _free_port()
    client, peer = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{pport}"
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [binary, "--name", name, "--data-dir", str(data_dir), "--listen-client-urls", client,
         "--advertise-client-urls", client, "--listen-peer-urls", peer],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=proc.child_env(),
    )
    try:
        etcd = EtcdClient(client, timeout=60)
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                log.seek(0)
                tail = log.read()[-600:].decode("utf-8", "replace").strip().splitlines()[-1:]
                raise DrkitError(f"etcd on {data_dir} exited ({process.returncode}): {' '.join(tail)}")
            try:
                etcd.count_keys()
                break
            except DrkitError:
                if time.monotonic() > deadline:
                    raise DrkitError(f"etcd on {data_dir} did not answer within {timeout:g}s") from None
                time.sleep(0.2)
        yield etcd
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


# --- the source -------------------------------------------------------------------------

class K3sEtcdSource(Source):
    """K3s embedded etcd, as a verified etcd snapshot."""

    type_name = "k3s-etcd"
    restore_options = frozenset({"data_dir", "member_name", "peer_url"})
    Options = K3sEtcdOptions
    options: K3sEtcdOptions

    running_check: k3s.RunningCheck = staticmethod(k3s.find_k3s_server)

    def describe(self) -> str:
        method = self.method()
        how = "k3s etcd-snapshot save" if method == "k3s" else f"{method}: " + ", ".join(self.endpoints(method))
        return f"{self.name} (k3s-etcd: {how})"

    def method(self) -> str:
        """The method this backup uses (``auto``: etcdctl when installed, else k3s)."""
        if self.options.method != "auto":
            return self.options.method
        return "etcdctl" if shutil.which("etcdctl") else "k3s"

    def endpoints(self, method: str) -> list[str]:
        """The configured endpoints, else the ones K3s's etcd config names for *method*."""
        if self.options.endpoints:
            return list(self.options.endpoints)
        urls = k3s_etcd_urls(self.options.data_dir)
        key = "listen-client-http-urls" if method == "api" else "listen-client-urls"
        return urls.get(key) or [DEFAULT_ENDPOINT]

    def check_run(self, run: list[Source]) -> None:
        k3s.require_token_source(self.name, run)

    def client(self, endpoint: str) -> EtcdClient:
        tls = k3s.etcd_tls_dir(self.options.data_dir)
        o = self.options
        return EtcdClient(
            endpoint,
            ca_file=o.ca_file or tls / "server-ca.crt",
            cert_file=o.cert_file or tls / "client.crt",
            key_file=o.key_file or tls / "client.key",
            timeout=o.timeout,
        )

    def backup(self, ctx: BackupContext) -> None:
        """Take a snapshot, check its trailer, store it as ``etcd-snapshot.db``.

        Raises IntegrityError for a damaged snapshot (nothing stored), StorageError when
        etcd cannot be reached, ConfigError for missing certificates."""
        dest = ctx.scratch_dir / ARTEFACT
        started = time.monotonic()
        endpoint = None
        method = self.method()
        if method == "k3s":
            ctx.progress("k3s etcd-snapshot save")
            self._k3s_save(ctx.scratch_dir, dest)
        elif method == "etcdctl":
            ctx.progress("etcdctl snapshot save")
            endpoint = self._etcdctl_save(dest)
        else:
            errors: list[str] = []
            hints: list[str | None] = []
            for url in self.endpoints("api"):
                ctx.progress(f"etcd snapshot from {url}")
                try:
                    self.client(url).snapshot_to(dest)
                    endpoint = url
                    break
                except StorageError as exc:
                    errors.append(str(exc.fields.get("message", exc.message)))
                    hints.append(exc.hint)
            if endpoint is None:
                raise StorageError(message="; ".join(errors), hint=next((h for h in hints if h), None)
                                   or "is K3s running with embedded etcd? check endpoints and certificates")
        os.chmod(dest, 0o600)  # whatever wrote it (etcdctl, k3s), the copy holds every Secret
        sha = check_trailer(dest)
        meta: dict[str, Any] = {"datastore": "etcd", "method": method, "size": dest.stat().st_size,
                                "sha256": sha, "snapshot_seconds": round(time.monotonic() - started, 3)}
        try:
            status = snapshot_status(dest)
            meta.update(revision=status.revision, total_keys=status.total_keys, hash=status.hash)
        except (proc.ProgramNotFound, proc.CommandFailed) as exc:
            meta["status_error"] = exc.message
        if endpoint is not None and "revision" in meta:
            try:
                if method == "etcdctl":
                    meta["keys"] = self._etcdctl_count(endpoint, meta["revision"])
                else:
                    meta["keys"], _ = self.client(endpoint).count_keys(meta["revision"])
            except DrkitError as exc:  # compacted past the revision already: record why
                meta["keys_error"] = exc.message
        if endpoint:
            meta["endpoint"] = endpoint
        ctx.add_file(ARTEFACT, dest)
        ctx.meta.update(meta)
        ctx.run_meta["datastore"] = "etcd"
        if "revision" in meta:
            ctx.run_meta["etcd_revision"] = meta["revision"]
        k3s.node_facts(self.options.config_dir, self.options.k3s_binary, data_dir=self.options.data_dir).record(ctx.run_meta)

    def _etcdctl(self, url: str) -> list[str]:
        """``etcdctl`` with the endpoint and, for https, K3s's client certificates."""
        binary = proc.which("etcdctl", hint="install etcd-client, or set 'method: k3s' on the source")
        client = self.client(url)
        cmd = [binary, "--endpoints", url, "--dial-timeout", "10s"]
        if url.startswith("https://"):
            client._ssl()  # raises ConfigError naming a missing file
            cmd += ["--cacert", str(client.ca_file), "--cert", str(client.cert_file), "--key", str(client.key_file)]
        return cmd

    def _etcdctl_save(self, dest: Path) -> str:
        """``etcdctl snapshot save`` against the first endpoint that works; returns it."""
        errors = []
        for url in self.endpoints("etcdctl"):
            try:
                # 'snapshot save' of etcdctl 3.4 waits forever for an unreachable endpoint: ask first
                proc.run(self._etcdctl(url) + ["--command-timeout", "15s", "endpoint", "status"],
                         env={"ETCDCTL_API": "3"}, timeout=60)
                proc.run(self._etcdctl(url) + ["snapshot", "save", str(dest)], env={"ETCDCTL_API": "3"},
                         timeout=self.options.timeout)
                return url
            except proc.CommandFailed as exc:
                errors.append(exc.message)
                dest.unlink(missing_ok=True)
        raise StorageError(message="; ".join(errors),
                           hint="is K3s running with embedded etcd? check endpoints and certificates; "
                           "'method: k3s' takes the snapshot through K3s itself")

    def _etcdctl_count(self, url: str, revision: int) -> int:
        """Live keys at *revision* (the range's ``count``; ``--limit=1`` keeps the answer small,
        etcdctl 3.4 has no ``--count-only``)."""
        try:
            out = proc.run(self._etcdctl(url) + ["get", "", "--prefix", "--keys-only", "--limit=1", f"--rev={revision}",
                                                 "-w", "json"], env={"ETCDCTL_API": "3"}, timeout=120).text
            return int(json.loads(out.strip().splitlines()[-1]).get("count", 0))
        except (ValueError, IndexError) as exc:
            raise DrkitError(f"cannot read the 'etcdctl get' count: {exc}") from None

    def _k3s_save(self, scratch: Path, dest: Path) -> None:
        outdir = scratch / "k3s-etcd-snapshot"
        outdir.mkdir()
        binary = proc.which(self.options.k3s_binary,
                            hint="method: k3s needs the k3s binary; or set 'method: etcdctl' (install etcd-client)")
        # config.yaml may ask for compressed (.zip) snapshots: a flag on the command line wins
        try:
            proc.run([binary, "etcd-snapshot", "save", "--data-dir", str(self.options.data_dir),
                      "--dir", str(outdir), "--name", "drkit", "--etcd-snapshot-compress=false"],
                     timeout=self.options.timeout)
        except proc.CommandFailed as exc:
            raise StorageError(message=exc.message,
                               hint="is K3s running with embedded etcd (cluster-init)? 'method: etcdctl' "
                               "(install etcd-client) takes the snapshot over gRPC with K3s's client certificates") from None
        files = [p for p in outdir.iterdir() if p.is_file()]
        if len(files) != 1 or files[0].suffix == ".zip":
            raise DrkitError(f"k3s etcd-snapshot save left {[p.name for p in files]} in {outdir}, expected one "
                             "uncompressed snapshot", hint="do not set etcd-snapshot-compress for drkit's runs")
        files[0].rename(dest)

    # --- restore ---------------------------------------------------------------------

    def _entry(self, ctx: RestoreContext) -> Any:
        for entry in ctx.entries():
            if entry.path == ARTEFACT:
                return entry
        raise IntegrityError(name=ARTEFACT, detail="this snapshot has no such entry",
                             hint="was it made by a k3s-etcd source? 'drkit snapshots' shows the type")

    def restore(self, ctx: RestoreContext) -> RestoreResult:
        """Write ``etcd-snapshot.db`` (``--target`` or, ``--in-place``, under the K3s data
        dir), verify its trailer, report the cluster-reset command; option ``data_dir``
        also builds a plain etcd data dir."""
        entry = self._entry(ctx)
        if ctx.options.in_place:
            dest_dir = self.options.data_dir / "server" / "db" / "snapshots"
            snap = getattr(ctx.snapshot, "short_id", "snapshot")
            path = dest_dir / f"drkit-restore-{snap}.db"
            if ctx.dry_run:
                return RestoreResult(lines=[f"would write {path}"])
            k3s.refuse_if_running(self.running_check, "prepare a cluster reset")
            with ctx.open_entry(entry) as stream:
                written = write_atomic_from(path, stream, mode=0o600, verify=check_trailer, parents=True)
            result = RestoreResult(files=1, bytes_written=written)
        else:
            if ctx.target is None:
                raise UsageError(f"source {self.name!r} restores into a directory: give --target DIR (or --in-place)")
            result = ctx.write_entries(ctx.target, include=ctx.include, entries=k3s.private_entries(ctx.entries()))
            path = ctx.target / ARTEFACT
            if ctx.dry_run:
                return result
            check_trailer(path)
        result.lines.append(f"wrote {path} (SHA-256 trailer verified)")
        command = f"k3s server --cluster-reset --cluster-reset-restore-path={path}"
        result.details["snapshot_file"] = str(path)
        result.details["cluster_reset_command"] = command
        result.lines.append("to restore K3s: stop K3s, then run once (with the original server token):")
        result.lines.append(f"  {command}")
        result.lines.append("then start K3s normally (systemctl start k3s)")
        run_meta = getattr(ctx.snapshot, "run_meta", {}) or {}
        result.lines.append(k3s.describe_run(run_meta))
        result.lines += k3s.mismatch_warnings(run_meta, k3s.node_facts(self.options.config_dir, self.options.k3s_binary,
                                                                        data_dir=self.options.data_dir))
        data_dir = ctx.options.extra.get("data_dir")
        if not data_dir and self.options.restore_data_dir and ctx.target is not None:
            data_dir = ctx.target / "etcd-data"
        if data_dir:
            restore_data_dir(path, Path(data_dir),
                             name=ctx.options.extra.get("member_name") or self.options.member_name,
                             peer_url=ctx.options.extra.get("peer_url") or self.options.peer_url)
            result.details["etcd_data_dir"] = str(data_dir)
            result.lines.append(f"plain etcd data dir written to {data_dir}")
        return result

    def check_restored(self, restored: Path, snapshot: Snapshot) -> CheckResult:
        """Trailer check, then start a throwaway etcd on the restored data and count keys."""
        path = restored / ARTEFACT
        if not path.is_file():
            return CheckResult(ok=False, summary=f"{ARTEFACT} missing", problems=[f"{path} does not exist"])
        try:
            check_trailer(path)
        except IntegrityError as exc:
            return CheckResult(ok=False, summary="snapshot damaged", problems=[exc.message])
        meta = getattr(snapshot, "meta", {}) or {}
        problems: list[str] = []
        with tempfile.TemporaryDirectory(prefix="drkit-etcd-check-") as tmp:
            data_dir = Path(tmp) / "data"
            try:
                restore_data_dir(path, data_dir)
                with throwaway_etcd(data_dir) as etcd:
                    keys, revision = etcd.count_keys()
            except DrkitError as exc:
                return CheckResult(ok=False, summary="restored snapshot does not start", problems=[exc.message])
        if "keys" in meta and keys != meta["keys"]:
            problems.append(f"{keys} keys in the restored etcd, snapshot recorded {meta['keys']}")
        if "revision" in meta and revision != meta["revision"]:
            problems.append(f"revision {revision} after restore, snapshot recorded {meta['revision']}")
        summary = f"etcd started on the restored data: {keys} keys at revision {revision}"
        return CheckResult(ok=not problems, summary=summary if not problems else "; ".join(problems),
                           details={"keys": keys, "revision": revision}, problems=problems)
