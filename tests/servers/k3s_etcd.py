"""A STAND-IN for current K3s's embedded etcd listeners (K3s >= v1.28.3), in front of a
real etcd (Debian ``etcd-server``; 3.4 cannot split its listeners itself).

K3s >= v1.28.3 starts etcd with ``listen-client-urls: https://127.0.0.1:2379`` serving
gRPC only and the HTTP gateway on ``listen-client-http-urls: https://127.0.0.1:2382``
(k3s-io/k3s#8402), both TLS with client certificates, and writes that etcd config to
``<data dir>/server/db/etcd/config``. This fixture imitates both listeners:

- ``grpc_url``: TLS, client certificate required, ALPN ``h2``; a connection whose first
  bytes are not the HTTP/2 client preface is closed at once (as a gRPC-only server
  does with an HTTP/1.1 request); HTTP/2 connections are relayed to the real etcd,
  which speaks gRPC over cleartext HTTP/2 on its own client port;
- ``http_url``: TLS, client certificate required, relayed as is (the HTTP gateway).

The data dir is laid out as K3s does: ``server/tls/etcd/{server-ca.crt, client.crt,
client.key}`` and ``server/db/etcd/config``.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers.etcd import EtcdServer, _make_tls, start_etcd

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@dataclass
class _Listener:
    upstream: tuple[str, int]
    context: ssl.SSLContext
    grpc_only: bool
    sock: socket.socket = field(init=False)
    closed_non_h2: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True, name="k3s-etcd-standin").start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()  # no client certificate, wrong CA ...: the handshake fails
            return
        try:
            first = b""
            if self.grpc_only:
                conn.settimeout(10)
                while len(first) < len(H2_PREFACE):
                    chunk = conn.recv(len(H2_PREFACE) - len(first))
                    if not chunk:
                        break
                    first += chunk
                    if not H2_PREFACE.startswith(first):
                        break
                if first != H2_PREFACE:
                    self.closed_non_h2 += 1
                    conn.close()
                    return
                conn.settimeout(None)
            up = socket.create_connection(self.upstream, timeout=10)
            up.settimeout(None)
            if first:
                up.sendall(first)
        except OSError:
            conn.close()
            return
        threading.Thread(target=_pump, args=(up, conn), daemon=True).start()
        _pump(conn, up)

    def close(self) -> None:
        self.sock.close()


@dataclass
class K3sEtcd:
    """The stand-in's listeners, its real etcd and a K3s-like data dir."""

    etcd: EtcdServer
    data_dir: Path
    grpc: _Listener
    http: _Listener

    @property
    def grpc_url(self) -> str:
        return f"https://127.0.0.1:{self.grpc.port}"

    @property
    def http_url(self) -> str:
        return f"https://127.0.0.1:{self.http.port}"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "server/tls/etcd"

    def write_etcd_config(self) -> Path:
        """``server/db/etcd/config`` as K3s writes it (only the keys that matter here)."""
        path = self.data_dir / "server/db/etcd/config"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "name: node1-2f1b3c\n"
            f"listen-client-urls: {self.grpc_url}\n"
            f"listen-client-http-urls: {self.http_url}\n"
            f"advertise-client-urls: {self.grpc_url}\n"
            "client-transport-security:\n"
            f"  cert-file: {self.tls_dir / 'server-client.crt'}\n"
            f"  client-cert-auth: true\n"
            f"  trusted-ca-file: {self.tls_dir / 'server-ca.crt'}\n"
        )
        return path

    def stop(self) -> None:
        self.grpc.close()
        self.http.close()
        self.etcd.stop()


def start_k3s_etcd(base: Path) -> K3sEtcd:
    etcd = start_etcd(base / "etcd")
    data_dir = base / "k3s"
    tls = data_dir / "server/tls/etcd"
    _make_tls(tls)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tls / "server-client.crt"), str(tls / "server-client.key"))
    ctx.load_verify_locations(str(tls / "server-ca.crt"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    grpc_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    grpc_ctx.load_cert_chain(str(tls / "server-client.crt"), str(tls / "server-client.key"))
    grpc_ctx.load_verify_locations(str(tls / "server-ca.crt"))
    grpc_ctx.verify_mode = ssl.CERT_REQUIRED
    grpc_ctx.set_alpn_protocols(["h2"])
    host, port = etcd.client_url.removeprefix("http://").split(":")
    upstream = (host, int(port))
    return K3sEtcd(etcd, data_dir, _Listener(upstream, grpc_ctx, True), _Listener(upstream, ctx, False))


@pytest.fixture
def k3s_etcd(tmp_path: Path) -> Iterator[K3sEtcd]:
    """A real etcd behind K3s-like gRPC-only (TLS, client certs) and HTTP-gateway listeners."""
    server = start_k3s_etcd(tmp_path / "k3s-etcd")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp_path / "k3s-etcd" / "etcd" / "data", ignore_errors=True)
