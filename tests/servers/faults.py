"""Fault injection between a client and a real server, for tests.

- :class:`TcpFaultProxy`: a loopback TCP relay that can cut connections after a number of
  bytes sent by the client (an SSH session dropped mid-upload) or reset new connections.
- :class:`HttpFaultProxy`: a loopback HTTP/1.1 relay (for S3 through moto) that can answer
  a matching request with ``503 SlowDown``, reset the connection, truncate or corrupt the
  response body, instead of (or after) forwarding it.

Both count what they saw so tests can assert that a fault really happened.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _hard_close(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a crashed peer or a middlebox would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class TcpFaultProxy:
    """Relay 127.0.0.1:``port`` to ``target``; inject connection faults on demand."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self._listener.getsockname()[:2]
        self._cut_budget: int | None = None
        self._cut_repeat = False
        self._cut_bytes = 0
        self._reset_next = 0
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        self.accepted = 0
        self.cuts = 0
        self._closed = False
        threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True).start()

    # -- controls -------------------------------------------------------------------------

    def cut_after(self, nbytes: int, *, every_connection: bool = False) -> None:
        """Cut (RST) the connection that carries *nbytes* more client->server bytes.

        Once only, unless *every_connection*: then each connection is cut after *nbytes*.
        """
        with self._lock:
            self._cut_bytes = nbytes
            self._cut_budget = nbytes
            self._cut_repeat = every_connection

    def reset_new_connections(self, count: int) -> None:
        """Reset the next *count* connections as soon as they are accepted."""
        with self._lock:
            self._reset_next = count

    def heal(self) -> None:
        """Stop injecting faults (open connections stay as they are)."""
        with self._lock:
            self._cut_budget = None
            self._reset_next = 0

    def close(self) -> None:
        self._closed = True
        _hard_close(self._listener)
        with self._lock:
            conns, self._conns = self._conns, []
        for a, b in conns:
            _hard_close(a)
            _hard_close(b)

    # -- relay ----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                if self._reset_next > 0:
                    self._reset_next -= 1
                    self.cuts += 1
                    _hard_close(client)
                    continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                _hard_close(client)
                continue
            with self._lock:
                self._conns.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream:
                    with self._lock:
                        cut = False
                        if self._cut_budget is not None:
                            if len(data) >= self._cut_budget:
                                data = data[: self._cut_budget]
                                cut = True
                                self.cuts += 1
                                self._cut_budget = self._cut_bytes if self._cut_repeat else None
                            else:
                                self._cut_budget -= len(data)
                    if cut:
                        if data:
                            dst.sendall(data)
                        break
                dst.sendall(data)
        except OSError:
            pass
        _hard_close(src)
        _hard_close(dst)


@dataclass
class HttpFault:
    """One rule: requests matching *method* and *path* regex get *action*, *times* times.

    Actions: ``slowdown`` (503 SlowDown, S3's throttling reply), ``error500``,
    ``notimplemented`` (501 NotImplemented, a store without the feature), ``reset``
    (RST before any reply), ``truncate`` (forward, then send half the body and RST),
    ``corrupt`` (forward, flip one byte of the response body, keep the length),
    ``corrupt_request`` (flip one byte of the request body, then forward),
    ``deny_missing`` (forward; a 404 for a GET or HEAD of an object becomes 403 AccessDenied, as
    AWS answers a caller whose s3:ListBucket grant does not cover the request, e.g. one
    conditioned on s3:prefix).
    """

    action: str
    method: str = ".*"
    path: str = ".*"
    times: int = 1
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and re.fullmatch(self.method, method) is not None and re.search(self.path, path) is not None


_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault</RequestId></Error>"
)
_INTERNAL = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)
_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message><RequestId>fault</RequestId></Error>"
)
_NOT_IMPLEMENTED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NotImplemented</Code>'
    b"<Message>A header you provided implies functionality that is not implemented.</Message></Error>"
)
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "content-length"}


class HttpFaultProxy:
    """An HTTP/1.1 relay on 127.0.0.1 in front of *target_url*'s host (e.g. moto)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.rules: list[HttpFault] = []
        self.requests: list[tuple[str, str]] = []
        self.uploads: list[tuple[str, dict[str, str], bytes]] = []
        """(path, headers, body) of every request with a body, as received."""
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rule = proxy._take(self.command, self.path)
                if body:
                    with proxy._lock:
                        proxy.uploads.append((self.path, dict(self.headers.items()), body))
                if rule is not None and rule.action == "corrupt_request" and body:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                if rule is not None and rule.action == "reset":
                    self.close_connection = True
                    _hard_close(self.connection)
                    return
                if rule is not None and rule.action in ("slowdown", "error500", "notimplemented"):
                    payload, status = {
                        "slowdown": (_SLOWDOWN, 503),
                        "error500": (_INTERNAL, 500),
                        "notimplemented": (_NOT_IMPLEMENTED, 501),
                    }[rule.action]
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(*proxy.target, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
                finally:
                    conn.close()
                if rule is not None and rule.action == "corrupt" and data:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                object_path = len([p for p in self.path.split("?")[0].split("/") if p]) >= 2
                if (rule is not None and rule.action == "deny_missing" and resp.status == 404
                        and self.command in ("GET", "HEAD") and object_path):
                    self.send_response(403, "Forbidden")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_DENIED)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(_DENIED)
                    return
                self.send_response(resp.status, resp.reason)
                for k, v in out_headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if rule is not None and rule.action == "truncate":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    _hard_close(self.connection)
                    return
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        threading.Thread(target=self._server.serve_forever, name="http-fault-proxy", daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def add(self, action: str, *, method: str = ".*", path: str = ".*", times: int = 1) -> HttpFault:
        """Arm a fault rule (see :class:`HttpFault`); returns it (``.hits`` counts uses)."""
        rule = HttpFault(action, method, path, times)
        with self._lock:
            self.rules.append(rule)
        return rule

    def heal(self) -> None:
        with self._lock:
            self.rules.clear()

    def _take(self, method: str, path: str) -> HttpFault | None:
        with self._lock:
            self.requests.append((method, path))
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.times -= 1
                    rule.hits += 1
                    return rule
        return None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
