"""A real etcd (Debian ``etcd-server``) for tests, on free loopback ports.

:func:`start_etcd` starts ``etcd`` with a temp data dir and waits until it serves;
``tls=True`` generates a CA, a server certificate for 127.0.0.1 and a client
certificate (laid out like K3s's ``server/tls/etcd/``: ``server-ca.crt``,
``client.crt``, ``client.key``) and makes etcd require client certificates.
:func:`etcd_server` is the pytest fixture form. Teardown kills the process.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.programs import require_binary
from tests.servers.lifetime import dying_with_starter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class EtcdServer:
    binary: str
    data_dir: Path
    client_url: str
    peer_url: str
    name: str
    log_path: Path
    tls_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def ca_file(self) -> Path | None:
        return self.tls_dir / "server-ca.crt" if self.tls_dir else None

    @property
    def cert_file(self) -> Path | None:
        return self.tls_dir / "client.crt" if self.tls_dir else None

    @property
    def key_file(self) -> Path | None:
        return self.tls_dir / "client.key" if self.tls_dir else None

    def etcdctl(self, *args: str, input: bytes | None = None) -> bytes:
        cmd = [require_binary("etcdctl"), "--endpoints", self.client_url]
        if self.tls_dir:
            cmd += ["--cacert", str(self.ca_file), "--cert", str(self.cert_file), "--key", str(self.key_file)]
        return subprocess.run(cmd + list(args), check=True, capture_output=True, input=input, timeout=60,
                              env={**os.environ, "ETCDCTL_API": "3"}).stdout

    def all_keys(self) -> dict[bytes, bytes]:
        """Every key and value, read with ``etcdctl get --prefix ''`` (hex-free JSON)."""
        import base64
        import json

        doc = json.loads(self.etcdctl("get", "", "--prefix", "-w", "json"))
        return {base64.b64decode(kv["key"]): base64.b64decode(kv.get("value", "")) for kv in doc.get("kvs", [])}

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _make_tls(dir_: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    dir_.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        os.chmod(path, 0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("etcd-server-ca")).issuer_name(name("etcd-server-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (dir_ / "server-ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    write_key(ca_key, dir_ / "server-ca.key")
    for cn, usage, fname in (("etcd-server", ExtendedKeyUsageOID.SERVER_AUTH, "server-client"),
                             ("etcd-client", ExtendedKeyUsageOID.CLIENT_AUTH, "client")):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   # etcd's own gateway dials etcd with the server certificate: it needs clientAuth too
                   .add_extension(x509.ExtendedKeyUsage(
                       [usage] if cn == "etcd-client" else [usage, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if cn == "etcd-server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        (dir_ / f"{fname}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, dir_ / f"{fname}.key")


def start_etcd(base: Path, *, tls: bool = False, data_dir: Path | None = None, name: str = "default",
               initial_peer_url: str | None = None) -> EtcdServer:
    """Start etcd under *base* (data dir ``base/data`` unless *data_dir*); wait until healthy."""
    binary = require_binary("etcd")
    base.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir or base / "data"
    cport, pport = free_port(), free_port()
    scheme = "https" if tls else "http"
    client_url = f"{scheme}://127.0.0.1:{cport}"
    peer_url = f"http://127.0.0.1:{pport}"
    tls_dir = base / "tls" if tls else None
    cmd = [binary, "--name", name, "--data-dir", str(data_dir),
           "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
           "--listen-peer-urls", peer_url,
           "--initial-advertise-peer-urls", initial_peer_url or peer_url,
           "--initial-cluster", f"{name}={initial_peer_url or peer_url}",
           "--snapshot-count", "10000", "--quota-backend-bytes", str(512 * 1024 * 1024)]
    if tls_dir is not None:
        _make_tls(tls_dir)
        cmd += ["--client-cert-auth", "--trusted-ca-file", str(tls_dir / "server-ca.crt"),
                "--cert-file", str(tls_dir / "server-client.crt"), "--key-file", str(tls_dir / "server-client.key")]
    log_path = base / f"etcd-{cport}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(dying_with_starter(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    server = EtcdServer(binary, data_dir, client_url, peer_url, name, log_path, tls_dir, proc)
    ctx = None
    if tls_dir is not None:
        ctx = ssl.create_default_context(cafile=str(tls_dir / "server-ca.crt"))
        ctx.load_cert_chain(str(tls_dir / "client.crt"), str(tls_dir / "client.key"))
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"etcd exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{client_url}/health", timeout=2, context=ctx) as resp:
                if b'"health":"true"' in resp.read():
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"etcd did not become healthy: {log_path.read_text()[-2000:]}")
        time.sleep(0.1)


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    server = start_etcd(tmp_path / "etcd")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_tls_server(tmp_path: Path) -> Iterator[EtcdServer]:
    server = start_etcd(tmp_path / "etcd-tls", tls=True)
    try:
        yield server
    finally:
        server.stop()
