"""SFTP uploads: concurrent puts on separate SFTP channels, pipelined write requests of the
size the server allows, a dropped connection mid-put, the cipher asked for first, and the
request pipeline itself (framing, replies out of order, a failed write)."""

from __future__ import annotations

import os
import struct
import threading
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from drkit.errors import TransientStorageError
from drkit.storage import sftp as sftp_mod
from drkit.storage.sftp import FAST_CIPHERS, SftpStorage
from tests.servers.sshd import SshServer, start_sshd
from tests.storage.conftest import sftp_options

KIB = 1024
# Around the request sizes (32 KiB minimum, 255 KiB from OpenSSH's limits) and the
# first piece of a request sent with its header.
SIZES = [0, 1, 32 * KIB - 1, 32 * KIB, 32 * KIB + 1, 255 * KIB - 33, 255 * KIB + 7, 3 * 1024 * KIB + 13]


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_concurrent_puts_run_on_separate_channels_and_read_back_exact(sshd: SshServer, tmp_path: Path) -> None:
    folder = f"conc-{tmp_path.name}"
    storage = SftpStorage(sshd.url(f"~/{folder}"), sftp_options(sshd, max_sessions=4))
    storage.put("config", b"c")
    threads = 4
    barrier = threading.Barrier(threads, timeout=30)
    channels: list[int] = []
    original = storage._write

    def write_after_all_started(sftp: Any, handle: bytes, view: memoryview) -> int:
        channels.append(sftp.get_channel().get_id())
        barrier.wait()  # all four puts are in flight at once, or this times out
        return original(sftp, handle, view)

    storage._write = write_after_all_started  # type: ignore[method-assign]
    payloads = {f"data/{i:02x}/p{i}": os.urandom(SIZES[(i * 3) % len(SIZES)] + i) for i in range(threads)}
    errors: list[BaseException] = []

    def put(name: str, data: bytes) -> None:
        try:
            storage.put(name, data)
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=put, args=item) for item in payloads.items()]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not errors, errors
    assert len(set(channels)) == threads, channels  # one SFTP channel per put in flight
    storage._write = original  # type: ignore[method-assign]

    # More puts than sessions, from more threads: every object byte-exact.
    more = {f"data/{i % 3:02x}/q{i}": os.urandom(SIZES[i % len(SIZES)] + i) for i in range(12)}
    workers = [threading.Thread(target=put, args=item) for item in more.items()]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not errors, errors
    for name, data in {**payloads, **more}.items():
        assert storage.get(name) == data, name
        assert storage.stat(name).size == len(data)
    assert files(sshd.sftp_home / folder) == sorted(["config", *payloads, *more])  # no temporaries
    for name in payloads:
        assert (sshd.sftp_home / folder / name).stat().st_mode & 0o777 == 0o600
    assert storage._sessions <= 4
    storage.close()


def test_write_requests_use_the_servers_limit_or_the_minimum(sshd: SshServer, tmp_path: Path) -> None:
    storage = SftpStorage(sshd.url(f"~/limits-{tmp_path.name}"), sftp_options(sshd))
    storage.put("index/a", b"x")
    assert storage._write_max == 255 * KIB  # what OpenSSH answers to limits@openssh.com
    storage.close()

    # A server without limits@openssh.com gets 32 KiB requests, which every server takes.
    small = SftpStorage(sshd.url(f"~/limits-{tmp_path.name}"), sftp_options(sshd))
    small._write_max = 32 * KIB
    sent: list[int] = []
    original = sftp_mod._Pipeline.send

    def counting(self: Any, kind: int, *fields: bytes, data: memoryview | None = None, want: bool = False) -> int:
        if data is not None:
            sent.append(len(data))
        return original(self, kind, *fields, data=data, want=want)

    sftp_mod._Pipeline.send = counting  # type: ignore[method-assign]
    try:
        for size in SIZES:
            data = os.urandom(size)
            small.put(f"data/00/s{size}", data)
            assert small.get(f"data/00/s{size}") == data
    finally:
        sftp_mod._Pipeline.send = original  # type: ignore[method-assign]
    assert max(sent) == 32 * KIB and sum(sent) == sum(SIZES)
    small.close()


def test_connection_dropped_mid_put_leaves_no_object(sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = f"drop-{tmp_path.name}"
    storage = SftpStorage(sshd.url(f"~/{folder}"), sftp_options(sshd))
    storage.put("data/00/old", b"old")
    writes = 0
    original = sftp_mod._Pipeline.send

    def dropping(self: Any, kind: int, *fields: bytes, data: memoryview | None = None, want: bool = False) -> int:
        nonlocal writes
        if data is not None:
            writes += 1
            if writes == 5:  # the network drops the session with requests in flight
                self.chan.get_transport().close()
        return original(self, kind, *fields, data=data, want=want)

    monkeypatch.setattr(sftp_mod._Pipeline, "send", dropping)
    with pytest.raises(TransientStorageError, match="lost during put data/00/new"):
        storage.put("data/00/new", os.urandom(2 * 1024 * KIB))
    root = sshd.sftp_home / folder
    assert not (root / "data/00/new").exists()  # never under its real name
    monkeypatch.setattr(sftp_mod._Pipeline, "send", original)
    storage.put("data/00/other", b"after")  # reconnects, then removes the cut put's temporary
    assert files(root) == ["data/00/old", "data/00/other"]
    storage.close()


def test_gcm_asked_for_first_and_a_server_without_it_still_works(sshd: SshServer, tmp_path: Path) -> None:
    storage = SftpStorage(sshd.url(f"~/gcm-{tmp_path.name}"), sftp_options(sshd))
    storage.put("index/a", b"1")
    assert storage._client.get_transport().local_cipher == FAST_CIPHERS[0]
    storage.close()

    server = start_sshd(tmp_path / "ctr", extra_config=("Ciphers aes256-ctr",))
    try:
        ctr = SftpStorage(server.url("~/r"), sftp_options(server))
        data = os.urandom(300 * KIB)
        ctr.put("data/00/p", data)
        assert ctr._client.get_transport().local_cipher == "aes256-ctr"
        assert ctr.get("data/00/p") == data
        ctr.close()
    finally:
        server.stop()


# -- the pipeline against a scripted session -----------------------------------------------


class FakeChannel:
    out_max_packet_size = 1000

    def __init__(self) -> None:
        self.sent = bytearray()
        self.calls: list[int] = []

    def sendall(self, data: Any) -> None:
        self.calls.append(len(data))
        self.sent += data

    def recv_ready(self) -> bool:
        return False


class FakeSession:
    """Answers the requests it received with scripted statuses, in a scripted order."""

    def __init__(self) -> None:
        import paramiko

        self.sock = FakeChannel()
        self._lock = threading.Lock()
        self.request_number = 7
        self.replies: deque[tuple[int, bytes]] = deque()
        self._convert_status = paramiko.SFTPClient._convert_status.__get__(self)

    def status(self, num: int, code: int = 0, text: str = "") -> None:
        body = struct.pack(">II", num, code) + struct.pack(">I", len(text)) + text.encode() + struct.pack(">I", 0)
        self.replies.append((101, body))

    def _read_packet(self) -> tuple[int, bytes]:
        return self.replies.popleft()

    def requests(self) -> list[tuple[int, int, bytes]]:
        out, buf = [], bytes(self.sock.sent)
        while buf:
            (size,) = struct.unpack(">I", buf[:4])
            kind, num = struct.unpack(">BI", buf[4:9])
            out.append((kind, num, buf[9 : 4 + size]))
            buf = buf[4 + size :]
        return out


def test_pipeline_frames_requests_and_matches_replies_by_id() -> None:
    session = FakeSession()
    pipe = sftp_mod._Pipeline(session, window=4000)
    data = memoryview(os.urandom(2500))
    handle = sftp_mod._string(b"h1")
    a = pipe.send(6, handle, struct.pack(">Q", 0), data=data)
    b = pipe.send(6, handle, struct.pack(">Q", 2500), data=data[:10])
    c = pipe.send(8, handle, want=True)
    assert (a, b, c) == (7, 8, 9) and session.request_number == 10
    # A request with data: its header and the first piece in one send, the rest after.
    header = 9 + len(handle) + 8 + 4  # length, type, id; handle, offset; data length
    assert session.sock.calls[:2] == [1000 - 64, 2500 - (1000 - 64 - header)]
    reqs = session.requests()
    assert [(k, n) for k, n, _ in reqs] == [(6, 7), (6, 8), (8, 9)]
    assert reqs[0][2] == handle + struct.pack(">Q", 0) + struct.pack(">I", 2500) + bytes(data)
    assert reqs[1][2][-10:] == bytes(data[:10])
    assert pipe.inflight == 2510
    # Replies out of order, and one to a request abandoned earlier: all fine.
    session.status(3)
    session.replies.append((105, struct.pack(">IIQ", 9, 1, 2510)))
    session.status(8)
    session.status(7)
    pipe.finish()
    assert pipe.inflight == 0 and not pipe.unanswered and not session.replies
    t, msg = pipe.reply(c)
    assert t == 105 and msg.get_int() == 1 and msg.get_int64() == 2510


def test_pipeline_raises_on_a_failed_write_and_throttles_to_the_window() -> None:
    session = FakeSession()
    pipe = sftp_mod._Pipeline(session, window=100)
    session.status(7)
    session.status(8, 4, "Failure")
    pipe.send(6, b"", data=memoryview(b"a" * 80))
    pipe.throttle()  # 80 unanswered: under the window, nothing read
    assert pipe.inflight == 80 and len(session.replies) == 2
    pipe.send(6, b"", data=memoryview(b"b" * 80))
    pipe.throttle()  # 160 > 100: reads the first reply (ok)
    assert pipe.inflight == 80 and len(session.replies) == 1
    pipe.send(6, b"", data=memoryview(b"c" * 80))
    with pytest.raises(OSError, match="Failure"):
        pipe.throttle()  # 160 again: the next reply is the failed write


def test_a_write_answered_late_and_failed_is_not_missed() -> None:
    """A server may answer fstat before an earlier write: finish() still checks the write."""
    session = FakeSession()
    pipe = sftp_mod._Pipeline(session, window=10_000)
    w = pipe.send(6, b"", data=memoryview(b"a" * 80))
    f = pipe.send(8, b"", want=True)
    session.replies.append((105, struct.pack(">IIQ", f, 1, 80)))
    session.status(w, 4, "Failure")
    with pytest.raises(OSError, match="Failure"):
        pipe.finish()
