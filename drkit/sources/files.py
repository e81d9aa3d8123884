"""The ``files`` source: directories and files from the host.

Config keys::

    - name: data
      type: files
      paths: [/srv/data]          # files or directories, absolute
      exclude: ["*.tmp", "/srv/data/cache"]   # optional fnmatch patterns
      include: ["*.yaml"]         # optional: only files matching one of these
      one_file_system: false      # optional: do not cross mount points

A pattern with a ``/`` matches the whole path (``/srv/data/cache`` also excludes
everything below it), otherwise the file name. Regular files, directories and
symlinks are saved with modes, owners and mtimes; other file types (sockets, devices,
FIFOs) are skipped with a note. Unchanged files (same size, mtime, ctime, inode) are
not read again: their chunks are taken from the previous snapshot of this source.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import PurePosixPath

from pydantic import Field, field_validator

from drkit.sources.base import BackupContext, Source, SourceOptions


class FilesOptions(SourceOptions):
    paths: list[str] = Field(min_length=1)
    exclude: list[str] = Field(default_factory=list)
    include: list[str] = Field(default_factory=list)
    one_file_system: bool = False

    @field_validator("paths")
    @classmethod
    def _absolute(cls, paths: list[str]) -> list[str]:
        for p in paths:
            if not p.startswith("/"):
                raise ValueError(f"paths must be absolute, got {p!r}")
        return [os.path.normpath(p) for p in paths]


def matches(path: str, patterns: list[str]) -> bool:
    """fnmatch *path* against patterns: full path (and its parents) for patterns with
    a '/', else the file name."""
    name = path.rsplit("/", 1)[-1]
    for pat in patterns:
        if "/" in pat:
            if fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(path, pat.rstrip("/") + "/*"):
                return True
        elif fnmatch.fnmatchcase(name, pat):
            return True
    return False


class FilesSource(Source):
    type_name = "files"
    Options = FilesOptions
    options: FilesOptions

    def describe(self) -> str:
        return f"{self.name} (files: {', '.join(self.options.paths)})"

    def backup(self, ctx: BackupContext) -> None:
        opts = self.options
        seen: set[str] = set()  # directories already recorded in this run
        ctx.paths.extend(opts.paths)
        for root in opts.paths:
            try:
                st = os.lstat(root)
            except FileNotFoundError:
                ctx.warn(f"{root}: does not exist")
                continue
            except PermissionError:
                ctx.warn(f"{root}: permission denied")
                continue
            self._add_parents(ctx, root, seen)
            self._walk(ctx, root, st, st.st_dev, seen)

    def _add_parents(self, ctx: BackupContext, root: str, seen: set[str]) -> None:
        parents = list(PurePosixPath(root).parents)[:-1]  # without "/"
        for parent in reversed(parents):
            p = str(parent)
            if p in seen:
                continue
            seen.add(p)
            try:
                ctx.add_dir(p, os.lstat(p))
            except OSError:
                ctx.add_dir(p)

    def _walk(self, ctx: BackupContext, path: str, st: os.stat_result, root_dev: int, seen: set[str]) -> None:
        opts = self.options
        if matches(path, opts.exclude):
            return
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            if path in seen:
                return
            seen.add(path)
            ctx.add_dir(path, st)
            if opts.one_file_system and st.st_dev != root_dev:
                return
            try:
                names = sorted(os.listdir(path))
            except OSError as exc:
                ctx.warn(f"{path}: {exc.strerror}")
                return
            for name in names:
                child = path.rstrip("/") + "/" + name
                try:
                    child_st = os.lstat(child)
                except OSError as exc:
                    ctx.warn(f"{child}: {exc.strerror}")
                    continue
                self._walk(ctx, child, child_st, root_dev, seen)
        elif stat.S_ISREG(mode):
            if opts.include and not matches(path, opts.include):
                return
            ctx.progress(path)
            try:
                ctx.add_file(path, path, st)
            except OSError as exc:
                ctx.warn(f"{path}: {exc.strerror or exc}")
        elif stat.S_ISLNK(mode):
            if opts.include and not matches(path, opts.include):
                return
            try:
                ctx.add_symlink(path, os.readlink(path), st)
            except OSError as exc:
                ctx.warn(f"{path}: {exc.strerror}")
        else:
            ctx.warn(f"{path}: skipped (not a regular file, directory or symlink)")
