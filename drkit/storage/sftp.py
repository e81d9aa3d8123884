"""SFTP backend (paramiko): a repository on any host that runs OpenSSH.

``repository.url``: ``sftp://USER@HOST:PORT/ABSOLUTE/PATH`` or ``sftp://USER@HOST/~/PATH``
(relative to the login's home); options under ``repository.sftp`` (:class:`SftpOptions`).
``HOST`` may be a ``~/.ssh/config`` alias: its ``HostName``, ``User``, ``Port``,
``IdentityFile``, ``UserKnownHostsFile`` and ``ProxyCommand`` apply, and explicit
options override them. Keys come from ``key_file``, the config's ``IdentityFile``, the
ssh-agent, and the default ``~/.ssh/id_*`` keys.

Promises, on top of :class:`~drkit.storage.base.Storage`'s:

- The server's host key is checked against known_hosts (``known_hosts_file``, else the
  config's ``UserKnownHostsFile``, else ``~/.ssh/known_hosts``, plus
  ``/etc/ssh/ssh_known_hosts``). An unknown or changed key is a :class:`StorageError` with
  the fingerprint and what to do; it is never accepted silently.
- ``put`` is atomic: bytes go to ``.tmp-NAME.RANDOM`` in the destination folder (created
  0700 with parents as needed), the file is made 0600, written pipelined, fsynced
  (``fsync@openssh.com``), its size checked, then renamed over the target with
  ``posix-rename@openssh.com``. Nothing is renamed before every write, the fsync and the
  size check were answered OK. A failed put removes its temporary (or, if the
  connection died, removes it after the next reconnect); ``list`` never shows temporaries.
- A full destination is :class:`StorageFull` (a failed or short write is checked against
  ``statvfs@openssh.com``); permission problems are :class:`StorageError` with a hint.
- ``get`` sends its read requests back to back, each as long as the server's
  ``limits@openssh.com`` allows (at most 256 KiB; 32 KiB without the extension). It
  returns the range up to the size the open file reported; a file that then turns out
  shorter is a :class:`TransientStorageError` (short read), never fewer bytes.
- A dropped connection is a :class:`TransientStorageError`; the next call reconnects, so
  :class:`~drkit.storage.retry.RetryingStorage` turns drops into retries.
- Thread-safe: one SSH connection, a small pool of SFTP sessions (``max_sessions``); puts
  from several threads run on separate sessions (channels) at once.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import posixpath
import secrets
import socket
import stat as stat_mod
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drkit import sshconnect
from drkit.errors import (
    ConfigError,
    ObjectNotFound,
    StorageError,
    StorageFull,
    TransientStorageError,
)
from drkit.storage.base import ObjectInfo, validate_name

TEMP_PREFIX = ".tmp-"
T = TypeVar("T")

FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
"""Asked for first: AES-GCM needs no separate MAC pass, so paramiko spends about a third
less CPU per byte than with its default aes128-ctr + hmac-sha2-256 (measured on
loopback OpenSSH). A server without them gets paramiko's usual order."""
_MIN_WRITE = 32 * 1024
"""Bytes per write request that every SFTP server takes."""
_MAX_WRITE = 256 * 1024
"""At most this many per request, even where the server allows more."""
_WINDOW = 4 * 1024 * 1024
"""Bytes of one put's writes sent but not yet answered (the channel's window is 2 MiB)."""
_MIN_READ = 32 * 1024
"""Bytes per read request that every SFTP server answers in full."""
_MAX_READ = 256 * 1024
"""At most this many per read request, even where the server allows more."""
_READ_WINDOW = 4 * 1024 * 1024
"""Bytes of one get's read requests sent but not yet answered."""
_ATTR_SIZE = 0x1
_ATTR_PERMISSIONS = 0x4

# paramiko logs a dropped socket at ERROR from its transport thread; without a handler
# Python prints that on stderr. drkit reports (and retries) the drop itself.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


class SftpOptions(BaseModel):
    """``repository.sftp``: every key optional; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")

    key_file: Path | None = None
    """Private key to log in with (unencrypted, or load it into ssh-agent instead)."""
    known_hosts_file: Path | None = None
    port: int | None = Field(None, ge=1, le=65535)
    """Used when the URL has no port (default: ~/.ssh/config's Port, else 22)."""
    connect_timeout: float = Field(15, gt=0)
    io_timeout: float = Field(120, gt=0)
    """A request that gets no answer for this long counts as a dropped connection."""
    ssh_config_file: Path | None = None
    """Default ~/.ssh/config (ignored when missing)."""
    allow_agent: bool = True
    max_sessions: int = Field(4, ge=1, le=32)
    fsync: bool = True
    keepalive: int = Field(30, ge=0)


def parse_options(raw: dict[str, Any] | None) -> SftpOptions:
    """Validate ``repository.sftp``; raises ConfigError naming ``repository.sftp.KEY``."""
    try:
        return SftpOptions.model_validate(raw or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(err["msg"], key=f"repository.sftp.{key}" if key else "repository.sftp") from None


def parse_url(url: str) -> tuple[str | None, str, int | None, str]:
    """``sftp://[USER@]HOST[:PORT]/PATH`` -> (user, host, port, path); raises ConfigError.

    *path* is absolute, or starts with ``~`` for the login's home.
    """
    parsed = urlparse(url)
    if parsed.scheme.lower() != "sftp" or not parsed.hostname:
        raise ConfigError(
            f"not an SFTP URL: {url!r}", key="repository.url", hint="use sftp://USER@HOST:PORT/PATH or sftp://USER@HOST/~/PATH"
        )
    if parsed.password is not None:
        raise ConfigError(
            "passwords in SFTP URLs are not supported",
            key="repository.url",
            hint="log in with a key (repository.sftp.key_file) or the ssh-agent",
        )
    try:
        port = parsed.port
    except ValueError:
        raise ConfigError(f"bad port in {url!r}", key="repository.url") from None
    path = unquote(parsed.path)
    if path.startswith("/~"):
        path = path[1:]
    if not path or path in ("/", "~", "~/"):
        raise ConfigError(
            f"no repository folder in {url!r}", key="repository.url", hint="e.g. sftp://backup@nas/srv/drkit or sftp://backup@nas/~/drkit"
        )
    if path.startswith("~") and not path.startswith("~/"):
        raise ConfigError(f"only ~/ (the login's own home) is supported in {url!r}", key="repository.url")
    if any(p == ".." for p in path.split("/")):
        raise ConfigError(f"'..' is not allowed in {url!r}", key="repository.url")
    user = unquote(parsed.username) if parsed.username else None
    return user, parsed.hostname, port, path.rstrip("/")


def _string(b: bytes) -> bytes:
    """An SFTP string field."""
    return struct.pack(">I", len(b)) + b


_UNSIZED_READ = 16 * 1024 * 1024
"""A ranged get of at most this many bytes is read without asking the object's size
first (the restore's reads are at most 8 MiB)."""


class _Pipeline:
    """Requests on one SFTP session sent back to back, their replies read as they come.

    paramiko's pipelined ``SFTPFile.write`` sends 32 KiB requests (two SSH packets each,
    the second a few bytes long) through several copies, and every hundred requests it
    waits for all replies, emptying the pipe. Here a request is framed once, its data
    goes out from the caller's buffer, and replies are read as they arrive, keeping at
    most *window* bytes unanswered. Replies are matched by request id (a server may
    answer out of order); one to an abandoned request (after an error) is skipped, here
    and by paramiko alike. A failed status raises (OSError, as paramiko's). No paramiko
    request may run on the session while this has replies outstanding: it would skip them.
    """

    def __init__(self, sftp: Any, window: int) -> None:
        self.sftp = sftp
        self.chan = sftp.sock
        self.window = window
        self.unanswered: dict[int, tuple[int, bool]] = {}  # id -> (bytes, reply wanted)
        self.inflight = 0
        self.replies: dict[int, tuple[int, Any]] = {}

    def send(self, kind: int, *fields: bytes, data: memoryview | None = None, want: bool = False) -> int:
        """Send request *kind* made of pre-encoded *fields*, then *data* as a string
        field; returns its id. With *want*, its reply is kept for :meth:`reply`; else it
        must be an OK status (checked when it is read)."""
        sftp = self.sftp
        with sftp._lock:
            num = int(sftp.request_number)
            sftp.request_number += 1
        head = b"".join(fields)
        n = len(data) if data is not None else 0
        size = 1 + 4 + len(head) + (4 + n if data is not None else 0)
        header = struct.pack(">IBI", size, kind, num) + head
        if data is None:
            self.chan.sendall(header)
        else:
            header += struct.pack(">I", n)
            # The header with the first piece as one SSH packet; the rest is not copied.
            first = max(0, min(n, int(self.chan.out_max_packet_size) - 64 - len(header)))
            self.chan.sendall(header + data[:first])
            if first < n:
                self.chan.sendall(data[first:])
        self.unanswered[num] = (n, want)
        self.inflight += n
        return num

    def _read_one(self) -> None:
        from paramiko.message import Message
        from paramiko.sftp import CMD_STATUS, SFTPError

        t, raw = self.sftp._read_packet()
        msg = Message(raw)
        num = msg.get_int()
        entry = self.unanswered.pop(num, None)
        if entry is None:
            return
        n, want = entry
        self.inflight -= n
        if want:
            self.replies[num] = (t, msg)
        elif t == CMD_STATUS:
            self.sftp._convert_status(msg)
        else:
            raise SFTPError(f"expected a status, got message type {t}")

    def throttle(self) -> None:
        """Read replies while more than the window is unanswered, and those already here."""
        while self.inflight > self.window or (self.unanswered and self.chan.recv_ready()):
            self._read_one()

    def finish(self) -> None:
        """Read every outstanding reply (a failed status raises)."""
        while self.unanswered:
            self._read_one()

    def reply(self, num: int) -> tuple[int, Any]:
        """The reply to request *num* (sent with *want*), after :meth:`finish`."""
        return self.replies.pop(num)


def _read_pipelined(sftp: Any, handle: bytes, offset: int, want: int, step: int, window: int = _READ_WINDOW) -> bytes:
    """Bytes [*offset*, *offset* + *want*) of the open file *handle*, fewer only where
    the file ends first (EOF).

    Read requests of at most *step* bytes go out back to back on *sftp*'s session from
    the calling thread, at most *window* bytes asked and unanswered; replies are matched
    by request id (any order) and copied into place as they come. A short reply has its
    rest asked for again. A failed status raises (OSError, as paramiko's); a reply to a
    request abandoned earlier on this session is skipped. paramiko's readv is not used:
    it sends from a helper thread that races the reading one (its prefetch counts as
    done whenever the replies catch up with the requests sent so far, and the rest is
    then fetched one round trip per request and held twice), and it waits for a reply
    that never comes after an EOF status.
    """
    from paramiko.message import Message
    from paramiko.sftp import CMD_DATA, CMD_READ, CMD_STATUS, SFTPError

    buf = bytearray(want)
    view = memoryview(buf)
    pipe = _Pipeline(sftp, window)
    hstr = _string(handle)
    todo = deque((pos, min(step, want - pos)) for pos in range(0, want, step))
    asked: dict[int, tuple[int, int]] = {}  # request id -> (position in buf, bytes asked)
    unanswered = 0
    end = want  # the file ends here, or later
    while todo or asked:
        while todo and (unanswered < window or not asked):
            pos, n = todo.popleft()
            if pos < end:
                num = pipe.send(CMD_READ, hstr, struct.pack(">QI", offset + pos, n), want=True)
                asked[num] = (pos, n)
                unanswered += n
        if not asked:
            break
        t, raw = sftp._read_packet()
        (num,) = struct.unpack_from(">I", raw)
        pipe.unanswered.pop(num, None)
        entry = asked.pop(num, None)
        if entry is None:
            with sftp._lock:  # e.g. the reply to a close not waited for: paramiko forgets it too
                sftp._expecting.pop(num, None)
            continue
        pos, n = entry
        unanswered -= n
        if t == CMD_DATA:
            (got,) = struct.unpack_from(">I", raw, 4)
            if got > n or len(raw) < 8 + got:
                raise SFTPError(f"bad reply to a read request: {got} bytes for {n} asked")
            view[pos : pos + got] = memoryview(raw)[8 : 8 + got]
            if got == 0:
                end = min(end, pos)
            elif got < n:
                todo.appendleft((pos + got, n - got))
        elif t == CMD_STATUS:
            msg = Message(raw)
            msg.get_int()
            try:
                sftp._convert_status(msg)
            except EOFError:
                end = min(end, pos)
            else:
                raise SFTPError("expected data, got an OK status")
        else:
            raise SFTPError(f"expected data, got message type {t}")
    return bytes(view[:end])


class SftpStorage:
    """Objects as files under a folder on an SSH host."""

    def __init__(self, url: str, options: SftpOptions | dict[str, Any] | None = None) -> None:
        self.options = options if isinstance(options, SftpOptions) else parse_options(options)
        url_user, alias, url_port, self._path_spec = parse_url(url)
        cfg = self._ssh_config(alias)
        self.hostname = str(cfg.get("hostname", alias))
        self.port = int(url_port or self.options.port or cfg.get("port", 22))
        self.user = url_user or cfg.get("user") or getpass.getuser()
        self._identity = [os.path.expanduser(p) for p in cfg.get("identityfile", [])]
        self._proxy_command = cfg.get("proxycommand")
        known = self.options.known_hosts_file
        if known is None and cfg.get("userknownhostsfile"):
            known = Path(os.path.expanduser(str(cfg["userknownhostsfile"]).split()[0]))
        self.known_hosts_file = known or Path(os.path.expanduser("~/.ssh/known_hosts"))
        hostpart = self.hostname if ":" not in self.hostname else f"[{self.hostname}]"
        self.url = f"sftp://{self.user}@{hostpart}:{self.port}/{self._path_spec.lstrip('/')}"
        self.where = f"{self.user}@{hostpart}:{self.port}"
        self._endpoint = sshconnect.SshEndpoint(self.user, self.hostname, self.port)

        self._cond = threading.Condition()
        self._client: Any = None
        self._gen = 0
        self._idle: list[Any] = []
        self._sessions = 0
        self._root: str | None = None
        self._dirs: set[str] = set()
        self._orphans: set[str] = set()
        self._fsync_ok = self.options.fsync
        self._write_max: int | None = None
        self._read_max: int | None = None

    # -- connection -------------------------------------------------------------------------

    def _ssh_config(self, alias: str) -> dict[str, Any]:
        import paramiko

        path = self.options.ssh_config_file or Path(os.path.expanduser("~/.ssh/config"))
        if not path.is_file():
            if self.options.ssh_config_file is not None:
                raise ConfigError(f"ssh config file {path} not found", key="repository.sftp.ssh_config_file")
            return {}
        try:
            return dict(paramiko.SSHConfig.from_path(str(path)).lookup(alias))
        except Exception as exc:
            raise ConfigError(f"cannot read ssh config {path}: {exc}", key="repository.sftp.ssh_config_file") from None

    def _connect(self) -> Any:
        """A new authenticated SSHClient; raises StorageError/TransientStorageError."""
        import paramiko

        if self.options.key_file and not self.options.key_file.is_file():
            raise ConfigError(f"key file {self.options.key_file} not found", key="repository.sftp.key_file")
        key_files = [str(self.options.key_file)] if self.options.key_file else self._identity
        try:
            return sshconnect.connect(
                self._endpoint,
                known_hosts=self.known_hosts_file,
                key_files=key_files,
                allow_agent=self.options.allow_agent,
                look_for_keys=not self.options.key_file,
                timeout=self.options.connect_timeout,
                keepalive=self.options.keepalive,
                sock=paramiko.ProxyCommand(self._proxy_command) if self._proxy_command else None,
                key_option="repository.sftp.key_file",
                prefer_ciphers=FAST_CIPHERS,
            )
        except sshconnect.HostUnreachable as exc:  # may go away: retried
            raise TransientStorageError(exc.message, hint=exc.hint) from None
        except sshconnect.SshConnectError as exc:  # host key or login: a person must act
            raise StorageError(exc.message, hint=exc.hint) from None

    def _open_session(self, client: Any) -> Any:
        try:
            sftp = client.open_sftp()
        except Exception as exc:
            raise TransientStorageError(f"cannot open an SFTP session on {self.where}: {exc}") from None
        sftp.get_channel().settimeout(self.options.io_timeout)
        return sftp

    def _acquire(self) -> tuple[Any, int]:
        """An SFTP session of the current connection (reconnecting if needed) and its generation."""
        with self._cond:
            while True:
                if self._client is None or not self._client.get_transport() or not self._client.get_transport().is_active():
                    self._reset_locked()
                    self._client = self._connect()
                    self._gen += 1
                    fresh = True
                else:
                    fresh = False
                if self._idle:
                    sftp = self._idle.pop()
                    if not sftp.get_channel().closed:
                        return sftp, self._gen
                    self._sessions -= 1
                    continue
                if self._sessions < self.options.max_sessions:
                    self._sessions += 1
                    client, gen = self._client, self._gen
                    break
                self._cond.wait(1.0)
        try:
            sftp = self._open_session(client)
        except BaseException:
            with self._cond:
                if gen == self._gen:
                    self._sessions -= 1
                self._cond.notify()
            raise
        if fresh or self._root is None or self._orphans:
            self._after_connect(sftp)
        return sftp, gen

    def _after_connect(self, sftp: Any) -> None:
        if self._root is None:
            spec = self._path_spec
            if spec.startswith("~"):
                home = sftp.normalize(".")
                spec = posixpath.join(home, spec[2:])
            self._root = posixpath.normpath(spec)
        for orphan in list(self._orphans):  # temporaries of puts cut by a dropped connection
            with contextlib.suppress(Exception):
                sftp.remove(orphan)
            self._orphans.discard(orphan)

    def _release(self, sftp: Any, gen: int, healthy: bool) -> None:
        with self._cond:
            if healthy and gen == self._gen and not sftp.get_channel().closed:
                self._idle.append(sftp)
            else:
                with contextlib.suppress(Exception):
                    sftp.close()
                if gen == self._gen:
                    self._sessions -= 1
            self._cond.notify()

    def _drop(self, gen: int) -> None:
        with self._cond:
            if gen == self._gen:
                self._reset_locked()
            self._cond.notify_all()

    def _reset_locked(self) -> None:
        for sftp in self._idle:
            with contextlib.suppress(Exception):
                sftp.close()
        self._idle.clear()
        self._sessions = 0
        self._dirs.clear()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        self._client = None
        self._gen += 1

    def _alive(self, gen: int, sftp: Any) -> bool:
        with self._cond:
            if gen != self._gen or self._client is None:
                return False
            transport = self._client.get_transport()
            return bool(transport and transport.is_active()) and not sftp.get_channel().closed

    def _run(self, op: str, name: str, fn: Callable[[Any], T]) -> T:
        """Run *fn(sftp)* with a pooled session; map errors (see module doc)."""
        import paramiko

        sftp, gen = self._acquire()
        healthy = False
        try:
            result = fn(sftp)
            healthy = True
            return result
        except StorageError:
            healthy = self._alive(gen, sftp)
            raise
        except (OSError, EOFError, paramiko.SSHException, paramiko.sftp.SFTPError) as exc:
            if isinstance(exc, OSError) and self._status_like(exc) and self._alive(gen, sftp):
                healthy = True  # an SFTP status reply: the session is fine
                raise self._status_error(exc, op, name) from None
            self._drop(gen)
            raise TransientStorageError(
                f"connection to {self.where} lost during {op} {name}: {exc or type(exc).__name__}"
            ) from None
        finally:
            self._release(sftp, gen, healthy)

    def _status_error(self, exc: OSError, op: str, name: str) -> StorageError:
        import errno

        if exc.errno == errno.ENOENT:
            return ObjectNotFound(name=name)
        if exc.errno in (errno.EACCES, errno.EPERM):
            return StorageError(
                f"permission denied: {op} {name} in {self.where}:{self._root}",
                hint=f"check that {self.user} may read and write {self._root} on {self.hostname}",
            )
        text = exc.strerror or (exc.args[0] if exc.args else str(exc))
        return StorageError(f"{op} {name} on {self.where} failed: {text}")

    # -- helpers ----------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        validate_name(name)
        assert self._root is not None
        return f"{self._root}/{name}"

    def _mkdirs(self, sftp: Any, folder: str) -> None:
        """mkdir -p *folder* with mode 0700 (cached per connection)."""
        if folder in self._dirs:
            return
        missing: list[str] = []
        cur = folder
        while cur not in ("/", "") and cur not in self._dirs:
            try:
                st = sftp.stat(cur)
            except FileNotFoundError:
                missing.append(cur)
                cur = posixpath.dirname(cur)
                continue
            if not stat_mod.S_ISDIR(st.st_mode or 0):
                raise StorageError(f"{self.where}:{cur} exists and is not a folder")
            break
        for path in reversed(missing):
            try:
                sftp.mkdir(path, 0o700)
            except OSError:
                st = sftp.stat(path)  # raced with another writer? then it exists now
                if not stat_mod.S_ISDIR(st.st_mode or 0):
                    raise
        self._dirs.add(folder)

    def _statvfs_free(self, sftp: Any, path: str) -> int | None:
        """Free bytes for unprivileged users at *path* (statvfs@openssh.com), or None."""
        from paramiko.sftp import CMD_EXTENDED

        try:
            _t, msg = sftp._request(CMD_EXTENDED, "statvfs@openssh.com", path)
            _bsize, frsize, _blocks, _bfree, bavail = (msg.get_int64() for _ in range(5))
        except Exception:
            return None
        return int(frsize * bavail)

    # -- Storage ----------------------------------------------------------------------------

    def put(self, name: str, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        size = len(view)

        from paramiko.sftp import CMD_CLOSE

        def do(sftp: Any) -> None:
            path = self._path(name)
            folder = posixpath.dirname(path)
            tmp = f"{folder}/{TEMP_PREFIX}{posixpath.basename(path)}.{secrets.token_hex(4)}"
            try:
                try:
                    handle = self._create(sftp, tmp, folder)
                    try:
                        written = self._write(sftp, handle, view)
                    finally:
                        sftp._request(CMD_CLOSE, handle)
                except OSError as exc:
                    if not self._status_like(exc):
                        raise
                    self._raise_if_full(sftp, folder, size, f"writing {name}")
                    raise
                if written != size:
                    self._raise_if_full(sftp, folder, size, f"writing {name}")
                    raise StorageError(f"short write of {name} to {self.where}: {written} of {size} bytes")
                sftp.posix_rename(tmp, path)
            except BaseException:
                try:
                    sftp.remove(tmp)
                except FileNotFoundError:
                    pass
                except Exception:
                    self._orphans.add(tmp)
                raise

        self._run("put", name, do)

    def _create(self, sftp: Any, tmp: str, folder: str) -> bytes:
        """Open *tmp* for writing, created 0600 (its folder with parents if missing);
        returns the handle."""
        from paramiko.sftp import CMD_HANDLE, CMD_OPEN, SFTP_FLAG_CREATE, SFTP_FLAG_TRUNC, SFTP_FLAG_WRITE
        from paramiko.sftp_attr import SFTPAttributes

        attrs = SFTPAttributes()
        attrs.st_mode = 0o600
        flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC
        if folder not in self._dirs:
            try:  # the folder usually exists: one round trip, not a stat first
                t, msg = sftp._request(CMD_OPEN, tmp, flags, attrs)
            except FileNotFoundError:
                self._mkdirs(sftp, folder)
                t, msg = sftp._request(CMD_OPEN, tmp, flags, attrs)
            self._dirs.add(folder)
        else:
            t, msg = sftp._request(CMD_OPEN, tmp, flags, attrs)
        if t != CMD_HANDLE:
            raise TransientStorageError(f"unexpected reply to open on {self.where}")
        return bytes(msg.get_binary())

    def _write(self, sftp: Any, handle: bytes, view: memoryview) -> int:
        """Make *handle* 0600, write *view* pipelined, fsync; returns the size the server
        then reports for the file. All requests go out back to back: one round trip
        for all of them (beyond what the window holds back)."""
        from paramiko.sftp import CMD_ATTRS, CMD_EXTENDED, CMD_FSETSTAT, CMD_FSTAT, CMD_WRITE

        step = self._write_size(sftp)  # before the pipeline: paramiko would eat its replies
        pipe = _Pipeline(sftp, _WINDOW)
        hstr = _string(handle)
        pipe.send(CMD_FSETSTAT, hstr, struct.pack(">II", _ATTR_PERMISSIONS, 0o600))
        for offset in range(0, len(view), step):
            pipe.send(CMD_WRITE, hstr, struct.pack(">Q", offset), data=view[offset : offset + step])
            pipe.throttle()
        fsync = pipe.send(CMD_EXTENDED, _string(b"fsync@openssh.com"), hstr, want=True) if self._fsync_ok else None
        fstat = pipe.send(CMD_FSTAT, hstr, want=True)
        pipe.finish()  # every write answered OK, whatever order the server answers in
        if fsync is not None:
            _t, msg = pipe.reply(fsync)
            try:
                sftp._convert_status(msg)
            except OSError as exc:
                if "unsupported" not in str(exc).lower():
                    raise
                self._fsync_ok = False  # server without the extension: rename still atomic
        t, msg = pipe.reply(fstat)
        if t != CMD_ATTRS:
            sftp._convert_status(msg)
            raise TransientStorageError(f"unexpected reply to fstat on {self.where}")
        if not msg.get_int() & _ATTR_SIZE:
            raise TransientStorageError(f"no size in the reply to fstat on {self.where}")
        return int(msg.get_int64())

    def _write_size(self, sftp: Any) -> int:
        """Bytes per write request: what the server's ``limits@openssh.com`` allows, up to
        256 KiB, else 32 KiB (which every SFTP server must take). Asked once."""
        if self._write_max is None:
            self._ask_limits(sftp)
        assert self._write_max is not None
        return self._write_max

    def _read_size(self, sftp: Any) -> int:
        """Bytes per read request: what the server's ``limits@openssh.com`` allows, up to
        256 KiB, else 32 KiB (which every SFTP server answers in full). Asked once."""
        if self._read_max is None:
            self._ask_limits(sftp)
        assert self._read_max is not None
        return self._read_max

    def _ask_limits(self, sftp: Any) -> None:
        """Set the request sizes not known yet from ``limits@openssh.com``, each within
        [32 KiB, 256 KiB]: 32 KiB where the server states no limit (no extension, an error
        status, a zero) or one below 32 KiB. Raises only for a dropped connection."""
        from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY

        read, write = _MIN_READ, _MIN_WRITE
        try:
            t, msg = sftp._request(CMD_EXTENDED, "limits@openssh.com")
            if t == CMD_EXTENDED_REPLY:
                _packet, max_read, max_write, _handles = (msg.get_int64() for _ in range(4))
                if max_read:
                    read = max(_MIN_READ, min(_MAX_READ, max_read))
                if max_write:
                    write = max(_MIN_WRITE, min(_MAX_WRITE, max_write))
        except OSError as exc:
            if not self._status_like(exc):
                raise
            # not offered, or refused: the minimum
        if self._read_max is None:
            self._read_max = read
        if self._write_max is None:
            self._write_max = write

    @staticmethod
    def _status_like(exc: OSError) -> bool:
        return not isinstance(exc, (ConnectionError, socket.timeout))

    def _raise_if_full(self, sftp: Any, folder: str, needed: int, what: str) -> None:
        free = self._statvfs_free(sftp, folder)
        if free is not None and free < max(needed, 1) + 64 * 1024:
            raise StorageFull(f"{what} to {self.where}:{folder}: {free} bytes free, {needed} needed")

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")

        def do(sftp: Any) -> bytes:
            # Two round trips for a range of at most _UNSIZED_READ: the open, then the
            # reads (they stop at the end of the file). Otherwise the size comes first,
            # so no buffer is made larger than the object. The close is not waited for:
            # its reply is taken (and skipped) by the session's next request.
            f = sftp.open(self._path(name), "rb")
            try:
                if length is None or length > _UNSIZED_READ:
                    end = int(f.stat().st_size)
                    want = max(0, (end if length is None else min(end, offset + length)) - offset)
                else:
                    want = length
                data = _read_pipelined(sftp, f.handle, offset, want, self._read_size(sftp)) if want else b""
            except BaseException:
                f.close()
                raise
            f._close(async_=True)
            if (length is None or length > _UNSIZED_READ) and len(data) != want:
                raise TransientStorageError(f"short read of {name} from {self.where}: {len(data)} of {want} bytes")
            return data

        return self._run("get", name, do)

    def stat(self, name: str) -> ObjectInfo:
        return self._run("stat", name, lambda sftp: ObjectInfo(name, int(sftp.stat(self._path(name)).st_size)))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every complete object under *prefix*/ (temporaries and dot files skipped)."""
        base_name = validate_name(prefix.rstrip("/"))

        def do(sftp: Any) -> list[ObjectInfo]:
            out: list[ObjectInfo] = []
            stack = [base_name]
            while stack:
                rel = stack.pop()
                try:
                    entries = sftp.listdir_attr(self._path(rel))
                except FileNotFoundError:
                    continue
                for entry in entries:
                    if entry.filename.startswith("."):
                        continue
                    child = f"{rel}/{entry.filename}"
                    if stat_mod.S_ISDIR(entry.st_mode or 0):
                        stack.append(child)
                    elif stat_mod.S_ISREG(entry.st_mode or 0):
                        mtime = datetime.fromtimestamp(entry.st_mtime, timezone.utc) if entry.st_mtime is not None else None
                        out.append(ObjectInfo(child, int(entry.st_size or 0), mtime))
            return out

        return iter(self._run("list", prefix, do))

    def delete(self, name: str) -> None:
        def do(sftp: Any) -> None:
            try:
                sftp.remove(self._path(name))
            except FileNotFoundError:
                pass

        self._run("delete", name, do)

    def remove_stale_temporaries(self, min_age_seconds: float = 3600) -> int:
        """Delete temporaries (``.tmp-*``) of interrupted puts older than *min_age_seconds*.

        Younger ones may belong to a put in progress and are kept. Returns how many were
        removed. Idempotent.
        """
        import time

        cutoff = time.time() - min_age_seconds

        def do(sftp: Any) -> int:
            assert self._root is not None
            removed = 0
            stack = [self._root]
            while stack:
                folder = stack.pop()
                try:
                    entries = sftp.listdir_attr(folder)
                except FileNotFoundError:
                    continue
                for entry in entries:
                    path = f"{folder}/{entry.filename}"
                    if stat_mod.S_ISDIR(entry.st_mode or 0):
                        stack.append(path)
                    elif entry.filename.startswith(TEMP_PREFIX) and (entry.st_mtime or 0) < cutoff:
                        with contextlib.suppress(FileNotFoundError):
                            sftp.remove(path)
                            removed += 1
            return removed

        return self._run("clean", "temporaries", do)

    def close(self) -> None:
        """Close every session and the connection (a later call reconnects)."""
        with self._cond:
            self._reset_locked()


def open_sftp(url: str, options: dict[str, Any]) -> SftpStorage:
    """Factory for :data:`drkit.storage.SCHEMES` (``options["sftp"]`` is ``repository.sftp``)."""
    return SftpStorage(url, parse_options(options.get("sftp")))


def _register() -> None:
    from drkit.storage import SCHEMES

    SCHEMES["sftp"] = open_sftp


_register()
