"""The restore target as a tree reached only through directory file descriptors.

Promise: nothing a snapshot says makes a restore create, write, chmod, chown or
touch anything outside the target directory, and no file appears under its real
name before its content is complete.

How (the ``openat`` discipline of tar and rsync):

- every directory is opened relative to its parent's fd with ``O_NOFOLLOW |
  O_DIRECTORY``, so a symlink (or a file) where a directory is expected is refused,
  also one planted by the snapshot itself (an entry ``d`` as a symlink, then ``d/x``);
- file content goes to a temporary created with ``O_CREAT | O_EXCL | O_NOFOLLOW``
  under a name nobody can predict (a random per-restore prefix and a counter;
  entries whose names could collide with it are refused up front), and is renamed
  over the real name (``renameat``), which never follows a link;
- mode, owner and times are set on the open file (``fchmod``/``fchown``/``futimens``),
  a symlink's own times and owner with ``AT_SYMLINK_NOFOLLOW``;
- a file or symlink never replaces a directory (``rename`` refuses with EISDIR).

A restore into a new or empty target is *staged* (:meth:`TargetTree.staged`): it
writes into a hidden directory inside the target (``.drkit-tmp-<random>-partial``,
locked with ``flock`` while in use), where every name is new, so a small file goes
straight to its real name there (created exclusively, removed on any error): no
temporary and no ``rename`` per file (a quarter of the system time of a restore of
many small files).
:meth:`TargetTree.publish` then moves what the staging directory holds into the
target (``renameat2`` with ``RENAME_NOREPLACE``: nothing there is replaced) and
removes it. A restore that stops early publishes too, once every file that may be
incomplete was removed, so the target ends as an unstaged restore leaves it: complete
files only. Only a restore killed outright leaves its staging directory; the next
restore into that target removes it (:func:`remove_stale_stagings`), unless another
restore still holds it.

Owners and the set-user-ID, set-group-ID and sticky bits are restored only when
restoring as root, as GNU tar does (``--same-owner`` and ``--preserve-permissions``
are its defaults for root only): a restore run by an ordinary user never creates a
set-uid file.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from drkit.errors import DrkitError, Refused, RestoreTargetError
from drkit.repository.tree import Entry

log = logging.getLogger("drkit.restore")

TMP_PREFIX = ".drkit-tmp-"
"""Every temporary a restore creates starts with this; entries that do are refused."""
NAME_MAX = 255
STAGING_SUFFIX = "-partial"
"""The end of a staging directory's name (:data:`TMP_PREFIX`, 12 hex digits, this)."""
_STAGING_NAME = re.compile(re.escape(TMP_PREFIX) + r"[0-9a-f]{12}" + re.escape(STAGING_SUFFIX))
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

Parts = tuple[str, ...]

_LINK_TIMES = os.utime in os.supports_dir_fd and os.utime in os.supports_follow_symlinks
"""Whether a symlink's own times can be set (utimensat with AT_SYMLINK_NOFOLLOW; Linux can)."""


def split_path(logical: str) -> Parts:
    """The components of a logical path below the target; Refused for ``..``, a NUL,
    a component longer than 255 bytes, or one that looks like a restore temporary."""
    rel = logical.lstrip("/")
    parts = tuple(p for p in rel.split("/") if p not in ("", "."))
    if "\x00" in logical or any(p == ".." for p in parts):
        raise Refused(f"refusing to restore {logical!r}: the path would escape the target directory")
    for p in parts:
        try:
            encoded = os.fsencode(p)
        except UnicodeEncodeError:
            raise Refused(f"refusing to restore {logical!r}: a name is not a valid byte string") from None
        if len(encoded) > NAME_MAX:
            raise Refused(f"refusing to restore {logical!r}: a name is longer than {NAME_MAX} bytes")
        if p.startswith(TMP_PREFIX):
            raise Refused(f"refusing to restore {logical!r}: {p!r} collides with drkit's restore temporaries")
    return parts


def _shown(parts: Parts) -> str:
    return "/".join(parts) or "."


def _named(shown: str | Parts) -> str:
    return shown if isinstance(shown, str) else _shown(shown)


def is_staging_name(name: str) -> bool:
    """Whether *name* is that of a staging directory (see :meth:`TargetTree.staged`)."""
    return _STAGING_NAME.fullmatch(name) is not None


STALE_WAIT = 5.0
"""Seconds :func:`remove_stale_stagings` waits for a staging directory's lock: the
worker processes of a restore killed outright hold it until they notice, after the
task they are writing (well under a second)."""


UNLOCKABLE = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS})
"""What ``flock`` fails with on a file system that does not lock (some FUSE and network
file systems): a restore there is not staged (see :meth:`TargetTree.staged`)."""


def _lock_within(fd: int, seconds: float) -> bool:
    """Take an exclusive ``flock`` on *fd*, trying for up to *seconds*; whether taken.
    Raises OSError (see :data:`UNLOCKABLE`) where the file system cannot lock."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def remove_tree(path: Path) -> None:
    """Remove directory *path* and everything in it without following a link
    (``shutil.rmtree`` works through fds on Linux and refuses a symlink at the top),
    also where a restore made directories in it read-only: when a removal is not
    allowed, every directory below *path* is made its owner's to list and write
    (directories only, found with ``lstat``), and the removal tried again. Raises
    OSError."""
    try:
        shutil.rmtree(path)
        return
    except PermissionError:
        pass
    for parent, names, _files in os.walk(path):  # (top-down: a directory is made readable before it is listed)
        for name in names:
            below = os.path.join(parent, name)
            if stat.S_ISDIR(os.lstat(below).st_mode):
                os.chmod(below, stat.S_IRWXU)
    shutil.rmtree(path)


def remove_stale_stagings(target: Path) -> list[str]:
    """Remove the staging directories in directory *target* that no restore holds
    (left by a restore killed outright); returns their names. Each is removed without
    following a link (``shutil.rmtree`` works through fds on Linux and refuses a
    symlink). Raises Refused when another restore still holds one after
    :data:`STALE_WAIT` seconds (it is writing into the same target), OSError."""
    removed = []
    target_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in os.listdir(target_fd):
            if not is_staging_name(name):
                continue
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=target_fd)
            except OSError:
                continue  # not a directory (or gone): not a staging directory of ours
            try:
                try:
                    locked = _lock_within(fd, STALE_WAIT)
                except OSError as exc:
                    if exc.errno not in UNLOCKABLE:
                        raise
                    continue  # (a file system without flock: whether it is in use cannot be told; left alone)
                if not locked:
                    raise Refused(f"another restore is writing into this target (its staging directory {name} is "
                                  "in use)", hint="wait for it to finish, or restore into another --target")
                remove_tree(target / name)
                removed.append(name)
            finally:
                os.close(fd)
    finally:
        os.close(target_fd)
    return removed


def _set_mtime(fd: int, e: Entry, shown: str | Parts, name: str = "") -> None:
    """Set *e*'s mtime on the open file *fd*; when it cannot be, warn naming the file:
    *shown* (a path or its parts below the target), or file *name* in directory parts
    *shown* (the name is joined only for the warning)."""
    try:
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
    except OSError as exc:
        where = _named(shown) if not name else _shown((*shown, name))
        log.warning("cannot set mtime of %s: %s", where, exc.strerror)


class TargetTree:
    """Directory fds under one target (a bounded cache), and the write primitives.

    Thread-safe. ``as_root`` decides whether owners and special mode bits are applied.
    Call :meth:`close` when done (it also removes temporaries left by a failure)."""

    def __init__(self, target: Path, *, as_root: bool | None = None, max_open: int = 256,
                 root_fd: int | None = None, prefix: str | None = None, fresh: bool = False) -> None:
        """*root_fd*: the target, already open (the tree takes it over); *prefix*: the
        start of its temporaries' names (default: :data:`TMP_PREFIX` and a random part);
        *fresh*: every name under the root is this restore's own and nobody else sees
        them (a staging directory): :meth:`write_file` writes straight to the real name."""
        self.target = target
        self.fresh = fresh
        self._home: tuple[int, str] | None = None
        """While staged: the target's fd and the staging directory's name in it."""
        self.as_root = os.geteuid() == 0 if as_root is None else as_root
        self._root = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if root_fd is None else root_fd
        self._fds: OrderedDict[Parts, int] = OrderedDict()
        self._pins: dict[Parts, int] = {}
        self._max_open = max_open
        self._lock = threading.Lock()
        if prefix is not None and not (prefix.startswith(TMP_PREFIX) and len(prefix) > len(TMP_PREFIX) + 8):
            raise ValueError(f"a temporaries' prefix must start with {TMP_PREFIX!r} and a random part")
        self._prefix = prefix or TMP_PREFIX + secrets.token_hex(6) + "-"
        self._counter = 0
        self._temps: set[tuple[Parts, str]] = set()
        self._syncer: threading.Thread | None = None
        self._umask = _process_umask()
        self._euid, self._egid = os.geteuid(), os.getegid()
        self._new_files: dict[Parts, tuple[int, bool]] = {}
        """Per open directory: the group a file created in it gets, and whether its
        creation mode is kept exactly (see :meth:`write_file`)."""

    @classmethod
    def staged(cls, target: Path, *, as_root: bool | None = None) -> "TargetTree":
        """A tree for a restore into *target* (an existing directory that holds nothing
        but stale staging directories, which the caller removed) that writes into a new
        staging directory inside it, locked while in use, until :meth:`publish`. Raises
        OSError: with an errno of :data:`UNLOCKABLE` where the file system cannot lock
        the staging directory (which is removed again: restore unstaged there)."""
        home = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        name = f"{TMP_PREFIX}{secrets.token_hex(6)}{STAGING_SUFFIX}"
        try:
            os.mkdir(name, 0o700, dir_fd=home)
        except BaseException:
            os.close(home)
            raise
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=home)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (new: nobody else holds it)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            os.rmdir(name, dir_fd=home)
            os.close(home)
            raise
        tree = cls(target, as_root=as_root, root_fd=fd, fresh=True)
        tree._home = (home, name)
        return tree

    @property
    def staging(self) -> Path | None:
        """The staging directory while the tree writes into one (see :meth:`staged`)."""
        return None if self._home is None else self.target / self._home[1]

    def publish(self) -> None:
        """Move everything the staging directory holds into the target (each top-level
        name with ``RENAME_NOREPLACE``), remove it, and go on with the target as the
        root (cached directory fds stay valid: the directories moved along). Nothing
        may be writing meanwhile. Does nothing when not staged. When a name cannot be
        moved, the others still are, the staging directory stays with what is left, and
        the first error is raised, its hint naming that directory: Refused when the name
        appeared in the target meanwhile (nothing is replaced), else RestoreTargetError."""
        if self._home is None:
            return
        self._wait_for_syncer()  # (it syncs through the root's fd, which changes here)
        home, name = self._home
        staging = self._root
        failed: DrkitError | None = None
        kept = f"what was not moved into place is in {self.target / name}"
        for entry in sorted(os.listdir(staging)):
            try:
                self._move_out(staging, entry, home)
            except FileExistsError:
                failed = failed or Refused(
                    f"{self.target / entry} appeared in the target during the restore; it was not replaced", hint=kept)
            except OSError as exc:
                failed = failed or RestoreTargetError(target=str(self.target), reason=exc.strerror or str(exc),
                                                      hint=f"{kept}; move it yourself, or run the restore again")
        if failed is not None:
            raise failed
        os.rmdir(name, dir_fd=home)
        with self._lock:
            self._home = None
            self._root = home
            self.fresh = False
            self._new_files.pop((), None)  # (the group and mode of a file new at the top: the target's now)
        os.close(staging)  # (drops the lock)

    def _move_out(self, staging: int, name: str, home: int) -> None:
        """Move *name* from the staging directory to the target, keeping a directory's
        mode and mtime: one the process may not write (a read-only mode, not as root)
        is made writable for the move (which rewrites its ``..``), then set back."""
        st = os.stat(name, dir_fd=staging, follow_symlinks=False)
        is_dir = stat.S_ISDIR(st.st_mode)
        locked = is_dir and not os.access(name, os.W_OK, dir_fd=staging, effective_ids=True, follow_symlinks=False)
        if locked:  # (a directory in the staging directory, which only this restore writes)
            os.chmod(name, stat.S_IMODE(st.st_mode) | stat.S_IWUSR, dir_fd=staging)
        moved = False
        try:
            _rename_noreplace(staging, name, home)
            moved = True
        finally:
            if locked:  # (not moved: the name in the target is someone else's, left alone)
                os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=home if moved else staging)
        if is_dir and os.stat(name, dir_fd=home, follow_symlinks=False).st_mtime_ns != st.st_mtime_ns:
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=home, follow_symlinks=False)

    @property
    def root_fd(self) -> int:
        """The target directory's fd (owned by the tree: closed by :meth:`close`)."""
        return self._root

    # -- directories -------------------------------------------------------------

    def _open_locked(self, parts: Parts, create: bool) -> int:
        """The fd of directory *parts*, opened from the deepest cached ancestor down
        (iteratively: any depth), each step without following links; call under lock."""
        if not parts:
            return self._root
        fd = self._fds.get(parts)
        if fd is not None:
            self._fds.move_to_end(parts)
            return fd
        depth = len(parts) - 1
        while depth > 0 and parts[:depth] not in self._fds:
            depth -= 1
        parent = self._fds[parts[:depth]] if depth else self._root
        for i in range(depth, len(parts)):
            here = parts[: i + 1]
            try:
                fd = os.open(here[-1], _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(here[-1], 0o700, dir_fd=parent)
                except FileExistsError:
                    pass
                fd = self._open_dir_at(parent, here)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Refused(f"refusing to restore below {_shown(here)}: it is a symlink or a file, "
                                  "not a directory (it could lead outside the target)") from None
                raise
            self._fds[here] = fd
            parent = fd
        self._evict_locked(keep=parts)
        return parent

    def _open_dir_at(self, parent: int, parts: Parts) -> int:
        try:
            return os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise Refused(f"refusing to restore below {_shown(parts)}: it is a symlink or a file, "
                              "not a directory (it could lead outside the target)") from None
            raise

    def _evict_locked(self, keep: Parts) -> None:
        """Close least recently used, unpinned fds above the bound (never *keep*)."""
        while len(self._fds) > self._max_open:
            for key in self._fds:
                if key != keep and not self._pins.get(key):
                    os.close(self._fds.pop(key))
                    self._new_files.pop(key, None)
                    break
            else:
                return  # everything pinned: stay above the bound rather than fail

    def pin(self, parts: Parts) -> int:
        """The fd of directory *parts* (created 0700 if missing), kept open until
        :meth:`unpin`. Raises Refused when a component is not a directory."""
        with self._lock:
            fd = self._open_locked(parts, True)
            if parts:
                self._pins[parts] = self._pins.get(parts, 0) + 1
            return fd

    def unpin(self, parts: Parts) -> None:
        if not parts:
            return
        with self._lock:
            n = self._pins.get(parts, 0) - 1
            if n > 0:
                self._pins[parts] = n
            else:
                self._pins.pop(parts, None)

    def make_dir(self, parts: Parts, *, replace: bool) -> None:
        """Create directory *parts* (and its parents), 0700 until :meth:`set_dir_meta`.
        An existing non-directory in its place is removed when *replace*, else Refused."""
        if not parts:
            return
        with self._lock:
            parent = self._open_locked(parts[:-1], True)
            name = parts[-1]
            self._new_files.pop(parts, None)
            try:
                os.mkdir(name, 0o700, dir_fd=parent)
            except FileExistsError:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    if not replace:
                        raise Refused(f"refusing to replace {_shown(parts)} by a directory") from None
                    os.unlink(name, dir_fd=parent)
                    os.mkdir(name, 0o700, dir_fd=parent)
            self._open_locked(parts, False)

    def set_dir_meta(self, parts: Parts, e: Entry) -> None:
        """Owner (root only), mode and mtime of directory *parts*; never of the target itself."""
        if not parts:
            return  # a "/" entry must not change the target's mode or owner
        with self._lock:
            fd = self._open_locked(parts, False)
            self._pins[parts] = self._pins.get(parts, 0) + 1
            self._new_files.pop(parts, None)  # its group and mode change now
        try:
            self.apply_meta_fd(fd, e, _shown(parts))
        finally:
            self.unpin(parts)

    # -- files and symlinks --------------------------------------------------------

    def _temp_name(self) -> str:
        with self._lock:
            self._counter += 1
            return f"{self._prefix}{self._counter}"

    def create_temp(self, parent: Parts, size: int) -> tuple[int, str]:
        """A new temporary (0600, exclusive, not through a link) in directory *parent*
        (pinned by the caller), sized *size*; returns (fd, name)."""
        pfd = self.pin(parent)
        try:
            name = self._temp_name()
            fd = os.open(name, _TMP_FLAGS, 0o600, dir_fd=pfd)
            with self._lock:
                self._temps.add((parent, name))
            try:
                if size:
                    os.ftruncate(fd, size)
            except OSError:
                os.close(fd)
                raise
            return fd, name
        finally:
            self.unpin(parent)

    def write_file(self, parent: Parts, name: str, e: Entry, data: bytes | memoryview) -> None:
        """Put file *name* in directory *parent* (pinned by the caller or not) with
        content *data* (all of it) and *e*'s owner, mode and mtime: what
        :meth:`create_temp`, a write, :meth:`apply_meta_fd` and :meth:`commit` do, in
        fewer system calls. The temporary is created with its final mode when the umask
        and the directory leave that mode exact (no default ACL; no special bit; owner
        may write), so no ``fchmod`` follows; the owner is set only when the new file
        does not already have it (as root: the process's user, and the directory's
        group if it is set-group-ID, else the process's). Atomic: only the complete file
        appears under *name*; on any error the temporary is removed. In a fresh tree
        (see :meth:`staged`) a new name is written directly, and removed on any error.
        Raises Refused over a directory, OSError when the target cannot be written."""
        mode = e.mode & (0o7777 if self.as_root else 0o777)
        fresh = self.fresh  # (a fresh tree: nobody else sees it, every name in it is ours: no temporary)
        with self._lock:
            pfd = self._open_locked(parent, True)
            info = self._new_files.get(parent)
            if info is None:
                info = self._new_files[parent] = self._new_file_info(pfd)
            if parent:
                self._pins[parent] = self._pins.get(parent, 0) + 1
            if not fresh:
                self._counter += 1
                tmp = f"{self._prefix}{self._counter}"
        group, exact = info
        preset = exact and mode & 0o200 and not mode & (0o7000 | self._umask)
        created = ""
        try:
            fd = -1
            if fresh:
                try:
                    fd = os.open(name, _TMP_FLAGS, mode if preset else 0o600, dir_fd=pfd)
                    created = tmp = name
                except FileExistsError:
                    tmp = self._temp_name()  # (written before: replaced through a temporary, as in any tree)
            if fd < 0:
                fd = os.open(tmp, _TMP_FLAGS, mode if preset else 0o600, dir_fd=pfd)
                created = tmp
            try:
                written = os.write(fd, data)
                if written < len(data):  # (a short write: rare, but allowed)
                    view = memoryview(data)[written:]
                    while view:
                        view = view[os.write(fd, view):]
                if preset and (not self.as_root or (e.uid, e.gid) == (self._euid, group)):
                    _set_mtime(fd, e, parent, name)  # (all apply_meta_fd would do: owner and mode are right)
                else:
                    self.apply_meta_fd(fd, e, parent + (name,), owner=(self._euid, group), mode_set=bool(preset))
            finally:
                os.close(fd)
            if tmp != name:
                self._rename(pfd, parent, tmp, name)
        except BaseException:
            if created:
                try:
                    os.unlink(created, dir_fd=pfd)
                except FileNotFoundError:
                    pass
            raise
        finally:
            self.unpin(parent)

    def _new_file_info(self, fd: int) -> tuple[int, bool]:
        """For directory *fd*: the group a new file in it gets, and whether a new file
        gets exactly the mode it is created with less the umask (no default ACL)."""
        st = os.fstat(fd)
        group = st.st_gid if st.st_mode & stat.S_ISGID else self._egid
        return group, self._umask != _UNKNOWN_UMASK and not _has_default_acl(fd)

    def apply_meta_fd(self, fd: int, e: Entry, shown: str | Parts, *, owner: tuple[int, int] | None = None,
                      mode_set: bool = False) -> None:
        """Owner (root only; best effort), mode (special bits only as root), mtime, on an
        open fd; *shown* names the file in a warning (a path, or its parts below the
        target). *owner*: the (uid, gid) the file is known to have (no ``fchown`` when
        it is *e*'s); *mode_set*: the file already has its mode (no ``fchmod``)."""
        if self.as_root and (e.uid, e.gid) != owner:
            try:
                os.fchown(fd, e.uid, e.gid)
            except OSError as exc:
                log.warning("cannot set owner of %s: %s", _named(shown), exc.strerror)
        if not mode_set:
            os.fchmod(fd, e.mode & (0o7777 if self.as_root else 0o777))
        _set_mtime(fd, e, shown)

    def commit(self, parent: Parts, tmp: str, name: str) -> None:
        """Rename temporary *tmp* over *name* in *parent* (atomic, never through a link).
        Raises Refused when *name* is a directory."""
        pfd = self.pin(parent)
        try:
            self._rename(pfd, parent, tmp, name)
            with self._lock:
                self._temps.discard((parent, tmp))
        finally:
            self.unpin(parent)

    @staticmethod
    def _rename(pfd: int, parent: Parts, tmp: str, name: str) -> None:
        try:
            os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except OSError as exc:
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise Refused(f"refusing to replace directory {_shown(parent + (name,))} by a file or symlink") from None
            raise

    def discard(self, parent: Parts, tmp: str) -> None:
        """Remove a temporary (missing is fine)."""
        try:
            pfd = self.pin(parent)
        except (OSError, Refused):
            return
        try:
            os.unlink(tmp, dir_fd=pfd)
        except FileNotFoundError:
            pass
        finally:
            self.unpin(parent)
            with self._lock:
                self._temps.discard((parent, tmp))

    def remove_temporaries(self, parent: Parts, prefix: str) -> int:
        """Remove every file of directory *parent* whose name starts with *prefix* (a
        restore temporary's prefix: what a worker that died may have left); returns how
        many. A directory that cannot be reached is left alone."""
        if not prefix.startswith(TMP_PREFIX):
            raise ValueError(f"not a temporaries' prefix: {prefix!r}")
        return self._remove_in(parent, lambda pfd: [name for name in os.listdir(pfd) if name.startswith(prefix)])

    def remove_new_files(self, parent: Parts, names: list[str]) -> int:
        """In a fresh tree: remove files *names* of directory *parent* (what a worker
        that died may have left half-written under its real name: every name there is
        this restore's own); returns how many. Missing ones and a directory that cannot
        be reached are left alone. Raises ValueError in a tree that is not fresh."""
        if not self.fresh:
            raise ValueError("files are removed by name only in a fresh tree")
        return self._remove_in(parent, lambda pfd: names)

    def _remove_in(self, parent: Parts, names_in: Callable[[int], list[str]]) -> int:
        """Unlink the files that *names_in* (given the directory's fd) names in directory
        *parent*; how many. Missing ones, directories, and a directory that cannot be
        reached are left alone."""
        try:
            pfd = self.pin(parent)
        except (OSError, Refused):
            return 0
        removed = 0
        try:
            for name in names_in(pfd):
                try:
                    os.unlink(name, dir_fd=pfd)
                    removed += 1
                except (FileNotFoundError, IsADirectoryError, PermissionError):
                    pass  # (a directory: EISDIR, or EPERM on Linux)
        finally:
            self.unpin(parent)
        return removed

    def symlink(self, parts: Parts, e: Entry) -> None:
        """Create symlink *parts* -> ``e.target`` atomically (a temporary renamed over
        the name), with its own owner (root) and mtime. Refused over a directory."""
        parent, name = parts[:-1], parts[-1]
        pfd = self.pin(parent)
        try:
            tmp = self._temp_name()
            os.symlink(e.target, tmp, dir_fd=pfd)
            with self._lock:
                self._temps.add((parent, tmp))
            if self.as_root:
                try:
                    os.chown(tmp, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
                except OSError as exc:
                    log.warning("cannot set owner of %s: %s", _shown(parts), exc.strerror)
            if not _LINK_TIMES:
                log.warning("cannot set mtime of %s: this platform cannot set a symlink's own times", _shown(parts))
            else:
                try:
                    os.utime(tmp, ns=(e.mtime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)
                except OSError as exc:
                    log.warning("cannot set mtime of %s: %s", _shown(parts), exc.strerror)
            self.commit(parent, tmp, name)
        finally:
            self.unpin(parent)

    # -- the end ---------------------------------------------------------------------

    def start_sync(self) -> None:
        """Start writing what was restored so far to disk, in the background (one
        ``syncfs`` at a time; a call while one runs does nothing), so that the final
        :meth:`sync` has little left to wait for. Errors are left to :meth:`sync`."""
        if self._syncer is not None and self._syncer.is_alive():
            return
        self._syncer = threading.Thread(target=self._sync_once, name="drkit-sync", daemon=True)
        self._syncer.start()

    def _wait_for_syncer(self) -> None:
        if self._syncer is not None:
            self._syncer.join()
            self._syncer = None

    def sync(self) -> None:
        """One sync of the filesystem holding the target (``syncfs``; ``sync`` where it
        is missing), after a background one still running: durability for the whole
        restore without an fsync per file."""
        self._wait_for_syncer()
        self._sync_once()

    def _sync_once(self) -> None:
        syncfs = getattr(_libc(), "syncfs", None)
        if syncfs is None or syncfs(self._root) != 0:
            os.sync()

    def abandon(self) -> None:
        """Remove the staging directory and everything in it, while this tree still
        holds its lock, then close: the target is left as it was before the restore
        (nothing may be writing meanwhile). Only :meth:`close` when not staged. Raises
        OSError (the tree is closed either way)."""
        staging = self.staging
        try:
            if staging is not None:
                self._wait_for_syncer()
                remove_tree(staging)
                with self._lock:
                    self._temps.clear()  # (gone with it)
        finally:
            self.close()

    def close(self) -> None:
        """Remove temporaries still present and close every fd (after a background
        sync still running); a staging directory not published stays. Idempotent."""
        self._wait_for_syncer()
        for parent, tmp in list(self._temps):
            self.discard(parent, tmp)
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._pins.clear()
            self._new_files.clear()
            if self._root >= 0:
                os.close(self._root)
                self._root = -1
            if self._home is not None:
                os.close(self._home[0])
                self._home = None


_UNKNOWN_UMASK = 0o777
"""What :func:`_process_umask` gives when it cannot tell (every creation mode then
gets an ``fchmod``)."""


def _process_umask() -> int:
    """The process's umask, read without changing it (``/proc/self/status``: a umask
    set and put back would race with other threads creating files);
    :data:`_UNKNOWN_UMASK` where it cannot be read."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8) & 0o777
    except (OSError, ValueError, IndexError):
        pass
    return _UNKNOWN_UMASK


def _has_default_acl(fd: int) -> bool:
    """Whether directory *fd* has a default ACL (which, not the umask, shapes the mode
    of a file created in it); True when it cannot be told."""
    getxattr = getattr(os, "getxattr", None)
    if getxattr is None:
        return True
    try:
        return bool(getxattr(fd, "system.posix_acl_default"))
    except OSError as exc:
        return exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)


_RENAME_NOREPLACE = 1


def _rename_noreplace(src_dir: int, name: str, dst_dir: int) -> None:
    """Rename *name* from directory *src_dir* to the same name in *dst_dir*, never over
    an existing name (FileExistsError): ``renameat2(RENAME_NOREPLACE)``; where the C
    library or the file system lacks it, a check for the name, then ``renameat``."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is not None:
        raw = os.fsencode(name)
        if renameat2(src_dir, raw, dst_dir, raw, _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), name)
    if _exists(name, dst_dir):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name)
    os.rename(name, name, src_dir_fd=src_dir, dst_dir_fd=dst_dir)


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL | None:
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return None
    return _LIBC
