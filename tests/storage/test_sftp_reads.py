"""SFTP downloads: read requests of the size the server allows (OpenSSH's
``limits@openssh.com``), 32 KiB where it states none or a smaller one, exact bytes for
whole objects and ranges either way, a file shorter than it said is a short read; and
the read loop against a scripted session (replies out of order, short, EOF, failed)."""

from __future__ import annotations

import os
import struct
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from paramiko.message import Message
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY, CMD_READ

from drkit.errors import TransientStorageError
from drkit.storage import sftp as sftp_mod
from drkit.storage.sftp import SftpStorage, _read_pipelined
from tests.servers.sshd import SshServer, start_sshd
from tests.storage.conftest import sftp_options

KIB = 1024
MIB = 1024 * KIB
OPENSSH_READ = 255 * KIB
"""What OpenSSH answers for max-read-length."""
SIZE = 3 * MIB + 13  # not a multiple of either request size


def ranges(size: int) -> list[tuple[int, int | None]]:
    """(offset, length) pairs around both request sizes and the object's end."""
    out: list[tuple[int, int | None]] = [(0, None), (0, size), (1, None), (size - 1, None), (size, None), (size + 5, 10)]
    for step in (32 * KIB, OPENSSH_READ):
        out += [(step - 1, 2), (step, step), (step + 1, 2 * step - 1), (3 * step - 7, step + 14), (size - step - 3, step + 100)]
    out += [(777, 2 * MIB + 1), (0, 1), (12345, 0)]
    return out


class Reads:
    """Every read request sent on any SFTP session: (file offset, bytes asked)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def lengths(self) -> list[int]:
        with self.lock:
            return [n for _, n in self.sent]

    def requests(self) -> list[tuple[int, int]]:
        with self.lock:
            return list(self.sent)

    def clear(self) -> None:
        with self.lock:
            self.sent.clear()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Reads]:
    seen = Reads()
    original = sftp_mod._Pipeline.send

    def recording(self: Any, kind: int, *fields: bytes, data: memoryview | None = None, want: bool = False) -> int:
        if kind == CMD_READ:
            with seen.lock:
                seen.sent.append(struct.unpack(">QI", fields[-1]))
        return original(self, kind, *fields, data=data, want=want)

    monkeypatch.setattr(sftp_mod._Pipeline, "send", recording)
    yield seen


def expected_requests(size: int, offset: int, length: int | None, step: int) -> list[tuple[int, int]]:
    """The read requests of a get: *step* bytes each, back to back. A whole get asks
    for what is there (its size asked first); a range (no size asked: one round trip
    fewer) asks for the range as given, and where it runs past the end, the rest of
    the request that came back short is asked once more (answered: end of file)."""
    if length is None:
        return [(o, min(step, size - o)) for o in range(offset, size, step)]
    stop = offset + length
    out = [(o, min(step, stop - o)) for o in range(offset, stop, step)]
    return out + [(size, o + n - size) for o, n in out if o < size < o + n]


def check_exact(storage: SftpStorage, data: bytes, reads: Reads, step: int) -> None:
    """Whole and ranged gets return exactly the stored bytes (a range cut short by the
    end of the object), read in the requests :func:`expected_requests` says."""
    size = len(data)
    for offset, length in ranges(size):
        reads.clear()
        end = size if length is None else min(size, offset + length)
        got = storage.get("data/00/p", offset, length)
        assert got == data[offset:end], (offset, length)
        assert reads.requests() == expected_requests(size, offset, length, step), (offset, length)


def test_reads_go_out_in_requests_of_the_servers_limit_and_return_exact_bytes(sshd: SshServer, tmp_path: Path, reads: Reads) -> None:
    storage = SftpStorage(sshd.url(f"~/reads-{tmp_path.name}"), sftp_options(sshd))
    data = os.urandom(SIZE)
    storage.put("data/00/p", data)
    reads.clear()
    assert storage.get("data/00/p") == data
    assert storage._read_max == OPENSSH_READ
    assert max(reads.lengths()) == OPENSSH_READ and len(reads.lengths()) == -(-SIZE // OPENSSH_READ)  # on the wire
    check_exact(storage, data, reads, OPENSSH_READ)
    storage.close()


def test_a_server_without_limits_gets_32k_reads_and_exact_bytes(tmp_path: Path, reads: Reads) -> None:
    server = start_sshd(tmp_path / "nolimits", sftp_args="-P limits")  # OpenSSH refuses the request
    try:
        storage = SftpStorage(server.url("~/r"), sftp_options(server))
        data = os.urandom(SIZE)
        storage.put("data/00/p", data)
        assert storage._read_max == storage._write_max == 32 * KIB
        check_exact(storage, data, reads, 32 * KIB)
        storage.close()
    finally:
        server.stop()


def _limits_reply(read: int) -> tuple[int, Message]:
    msg = Message(struct.pack(">QQQQ", 256 * KIB, read, 255 * KIB, 1024))
    return CMD_EXTENDED_REPLY, msg


@pytest.mark.parametrize(
    "answer, step",
    [
        pytest.param(lambda: _limits_reply(0), 32 * KIB, id="no-read-limit-stated"),
        pytest.param(lambda: _limits_reply(16 * KIB), 32 * KIB, id="below-32k"),
        pytest.param(lambda: _limits_reply(64 * KIB), 64 * KIB, id="64k"),
        pytest.param(lambda: _limits_reply(8 * MIB), 256 * KIB, id="capped-at-256k"),
        pytest.param(OSError("Operation unsupported"), 32 * KIB, id="error-status"),
        pytest.param(lambda: (paramiko.sftp.CMD_STATUS, Message(b"")), 32 * KIB, id="unexpected-reply"),
    ],
)
def test_the_read_size_follows_the_limits_answer_within_bounds(
    sshd: SshServer, tmp_path: Path, reads: Reads, monkeypatch: pytest.MonkeyPatch, answer: Any, step: int
) -> None:
    storage = SftpStorage(sshd.url(f"~/answer-{tmp_path.name}"), sftp_options(sshd))
    data = os.urandom(SIZE)
    storage.put("data/00/p", data)  # asks the real server for the write size
    storage._read_max = None
    asked = []
    original = paramiko.SFTPClient._request

    def answering(self: Any, t: int, *args: Any) -> Any:
        if t == CMD_EXTENDED and args and args[0] == "limits@openssh.com":
            asked.append(1)
            if isinstance(answer, BaseException):
                raise answer
            return answer()
        return original(self, t, *args)

    monkeypatch.setattr(paramiko.SFTPClient, "_request", answering)
    reads.clear()
    assert storage.get("data/00/p") == data
    assert storage._read_max == step
    assert storage._write_max == 255 * KIB  # the write size already known is kept
    if step <= OPENSSH_READ:  # what the server answers in full: every piece one request
        check_exact(storage, data, reads, step)
    else:  # a server that claims more than it sends: short replies, the rest asked again
        for offset, length in ranges(SIZE):
            end = SIZE if length is None else min(SIZE, offset + length)
            assert storage.get("data/00/p", offset, length) == data[offset:end], (offset, length)
        assert max(reads.lengths()) == step and min(reads.lengths()) < step
    assert asked == [1]  # asked once per storage
    storage.close()


def test_a_file_shorter_than_it_said_is_a_short_read(sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = SftpStorage(sshd.url(f"~/short-{tmp_path.name}"), sftp_options(sshd, io_timeout=20))
    data = os.urandom(SIZE)
    storage.put("data/00/p", data)
    original = paramiko.SFTPFile.stat

    def longer(self: Any) -> Any:  # the file is cut between the stat and the reads
        st = original(self)
        st.st_size += 600 * KIB
        return st

    monkeypatch.setattr(paramiko.SFTPFile, "stat", longer)
    with pytest.raises(TransientStorageError, match=f"short read of data/00/p .*: {SIZE} of {SIZE + 600 * KIB} bytes"):
        storage.get("data/00/p")
    # A range asks for no size (as on S3 or a disk, it ends where the object ends).
    assert storage.get("data/00/p", SIZE - 10, 1000) == data[-10:]
    monkeypatch.setattr(paramiko.SFTPFile, "stat", original)
    assert storage.get("data/00/p") == data  # the same session, still in step
    storage.close()


def test_a_range_is_two_round_trips_and_its_close_is_not_waited_for(sshd: SshServer, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A ranged get asks for no size and does not wait for its close (a restore reads
    thousands of ranges); the session stays in step for every request after it."""
    storage = SftpStorage(sshd.url(f"~/trips-{tmp_path.name}"), sftp_options(sshd, max_sessions=1))
    data = os.urandom(SIZE)
    storage.put("data/00/p", data)
    storage.put("data/00/q", data[:1000])
    waited: list[str] = []
    real_stat, real_close = paramiko.SFTPFile.stat, paramiko.SFTPFile._close

    def stat(self: Any) -> Any:
        waited.append("stat")
        return real_stat(self)

    def close(self: Any, async_: bool = False) -> None:
        if not self._closed:  # (not the no-op close of a closed file's __del__)
            waited.append("close" if not async_ else "close (not waited for)")
        real_close(self, async_=async_)

    monkeypatch.setattr(paramiko.SFTPFile, "stat", stat)
    monkeypatch.setattr(paramiko.SFTPFile, "_close", close)
    for _ in range(3):  # one session: each open first takes the reply to the last close
        assert storage.get("data/00/p", 5000, 300_000) == data[5000:305_000]
        assert storage.get("data/00/q", 900, 300) == data[900:1000]
    assert waited == ["close (not waited for)"] * 6
    waited.clear()
    assert storage.get("data/00/p") == data  # a whole object: its size first
    assert waited == ["stat", "close (not waited for)"]
    assert storage.stat("data/00/q").size == 1000
    assert sorted((i.name, i.size) for i in storage.list("data")) == [("data/00/p", SIZE), ("data/00/q", 1000)]
    storage.close()


# -- the read loop against a scripted session ------------------------------------------------


class FileSession:
    """An SFTP session serving one file's *content*: it answers the read requests sent
    so far newest first, at most *cap* bytes each, EOF past the end; *early* replies
    (to requests it never got) come first."""

    def __init__(self, content: bytes, cap: int, early: tuple[tuple[int, bytes], ...] = (), fail_at: int | None = None) -> None:
        self.sock = FakeChannel()
        self._lock = threading.Lock()
        self._expecting: dict[int, Any] = {}  # as paramiko's: replies it still waits for
        self.request_number = 7
        self.content = content
        self.cap = cap
        self.early = deque(early)
        self.fail_at = fail_at
        self.parsed = 0
        self.pending: list[tuple[int, int, int]] = []
        self.asked: list[tuple[int, int]] = []
        self.most_unanswered = 0
        self._convert_status = paramiko.SFTPClient._convert_status.__get__(self)

    def _read_packet(self) -> tuple[int, bytes]:
        if self.early:
            return self.early.popleft()
        sent = bytes(self.sock.sent)
        while self.parsed < len(sent):
            (size,) = struct.unpack_from(">I", sent, self.parsed)
            kind, num, hlen = struct.unpack_from(">BII", sent, self.parsed + 4)
            offset, n = struct.unpack_from(">QI", sent, self.parsed + 13 + hlen)
            assert kind == CMD_READ
            self.pending.append((num, offset, n))
            self.asked.append((offset, n))
            self.parsed += 4 + size
        self.most_unanswered = max(self.most_unanswered, sum(n for _, _, n in self.pending))
        num, offset, n = self.pending.pop()  # newest first: out of order
        if self.fail_at is not None and offset <= self.fail_at < offset + n:
            return 101, struct.pack(">II", num, 3) + _ssh_string(b"denied") + _ssh_string(b"")
        if offset >= len(self.content):
            return 101, struct.pack(">II", num, 1) + _ssh_string(b"End of file") + _ssh_string(b"")
        piece = self.content[offset : offset + min(n, self.cap)]
        return 103, struct.pack(">II", num, len(piece)) + piece


class FakeChannel:
    out_max_packet_size = 1000

    def __init__(self) -> None:
        self.sent = bytearray()

    def sendall(self, data: Any) -> None:
        self.sent += data


def _ssh_string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


CONTENT = os.urandom(100_000)


@pytest.mark.parametrize("cap", [4096, 1000, 333])
def test_read_loop_places_out_of_order_and_short_replies(cap: int) -> None:
    session = FileSession(CONTENT, cap)
    assert _read_pipelined(session, b"h", 0, len(CONTENT), step=4096, window=16384) == CONTENT
    assert _read_pipelined(session, b"h", 777, 50_001, step=4096, window=4096) == CONTENT[777:50_778]
    if cap == 4096:  # full replies: one request per piece, none repeated
        assert sorted(session.asked)[:3] == [(0, 4096), (777, 4096), (4096, 4096)]
        assert sum(n for _, n in session.asked) == len(CONTENT) + 50_001


def test_read_loop_keeps_at_most_the_window_unanswered() -> None:
    session = FileSession(CONTENT, 4096)
    assert _read_pipelined(session, b"h", 0, len(CONTENT), step=4096, window=3 * 4096) == CONTENT
    assert session.most_unanswered == 3 * 4096  # requests go out while less than the window is asked


def test_read_loop_stops_at_eof_and_skips_replies_to_abandoned_requests() -> None:
    stale = (103, struct.pack(">II", 3, 5) + b"WRONG")  # id 3: asked before this read, abandoned
    closed = (101, struct.pack(">II", 5, 0) + _ssh_string(b"") + _ssh_string(b""))  # id 5: a close not waited for
    session = FileSession(CONTENT, 4096, early=(stale, closed))
    session._expecting[5] = type(None)  # paramiko's record of that close
    got = _read_pipelined(session, b"h", 90_000, 30_000, step=4096, window=8192)
    assert got == CONTENT[90_000:]  # shorter: the file ends first; the caller checks the length
    assert all(offset < len(CONTENT) + 8192 for offset, _ in session.asked)  # no requests long past the end
    assert session._expecting == {}  # a reply skipped here is not waited for by paramiko either


def test_read_loop_raises_on_a_failed_status() -> None:
    session = FileSession(CONTENT, 4096, fail_at=50_000)
    with pytest.raises(PermissionError):
        _read_pipelined(session, b"h", 0, len(CONTENT), step=4096, window=16384)
