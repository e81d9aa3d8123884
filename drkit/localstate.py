"""What this machine keeps for itself, outside any repository: its host id, and what it
last saw of each repository.

The state directory is ``$DRKIT_STATE_DIR``, else ``/var/lib/drkit`` for root, else
``$XDG_STATE_HOME/drkit`` (``~/.local/state/drkit``). The CLI resolves it once
(:func:`state_dir`) and passes it down; library code never reads the environment.

- ``host-id``: 32 random hex digits, made on first use (mode 0600). Locks name their
  holder by it, not by the hostname: containers and clones share hostnames, never this
  file (do not copy it between machines, or share it between containers).
- ``repos/<repository id>.json``: what the last command saw (see :class:`RepoMemory`),
  so that a snapshot or an index file that disappears from storage, or storage rolled
  back to an older state, is noticed (issue #15, case 6).

Promises: every write is atomic (temporary file, fsync, rename); a state directory that
cannot be written is warned about once and otherwise ignored, never an error.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from drkit.atomicio import write_atomic

log = logging.getLogger("drkit.state")

HOST_ID_FILE = "host-id"


def state_dir(env: Mapping[str, str], *, uid: int | None = None) -> Path:
    """The state directory for this environment (see the module docstring)."""
    return _machine_dir(env, "DRKIT_STATE_DIR", "/var/lib/drkit", "XDG_STATE_HOME", ".local/state", uid)


def cache_dir(env: Mapping[str, str], *, uid: int | None = None) -> Path:
    """Where this machine keeps what can be rebuilt from a repository (the index cache,
    :mod:`drkit.repository.indexcache`): ``$DRKIT_CACHE_DIR``, else ``/var/cache/drkit``
    for root, else ``$XDG_CACHE_HOME/drkit`` (``~/.cache/drkit``). Deleting it only costs
    the next run's speed."""
    return _machine_dir(env, "DRKIT_CACHE_DIR", "/var/cache/drkit", "XDG_CACHE_HOME", ".cache", uid)


def _machine_dir(env: Mapping[str, str], variable: str, for_root: str, xdg_variable: str, under_home: str,
                 uid: int | None) -> Path:
    """``$variable``, else *for_root* when running as root, else ``$xdg_variable/drkit``
    (default ``~/under_home/drkit``)."""
    explicit = env.get(variable)
    if explicit:
        return Path(explicit)
    if (os.getuid() if uid is None else uid) == 0:
        return Path(for_root)
    base = env.get(xdg_variable) or str(Path(env.get("HOME") or "~").expanduser() / under_home)
    return Path(base) / "drkit"


def write_state_file(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write a state file atomically (:func:`drkit.atomicio.write_atomic`, mode 0600),
    creating the state directories 0700 first. Raises OSError (FileExistsError when
    *overwrite* is false and *path* exists); *path* is then untouched."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data, overwrite=overwrite)


def host_id(directory: Path) -> str:
    """This machine's id, made (randomly) and stored on first use. Raises OSError when
    the directory can be neither read nor written."""
    path = directory / HOST_ID_FILE
    missing = False
    try:
        text = path.read_text().strip()
        if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
            return text
    except FileNotFoundError:
        missing = True
    new = secrets.token_hex(16)
    try:
        # A missing id is created exclusively, so first runs at once agree on one id.
        write_state_file(path, (new + "\n").encode(), overwrite=not missing)
    except FileExistsError:
        return path.read_text().strip()  # another process made it first
    return new


@dataclass
class RepoMemory:
    """What this machine last saw of one repository.

    ``newest``: per source, the id and time of the newest snapshot seen; ``index_files``:
    the index files in use; ``version``: the highest format version seen."""

    newest: dict[str, dict[str, str]] = field(default_factory=dict)
    index_files: list[str] = field(default_factory=list)
    version: int = 0
    forgotten: list[str] = field(default_factory=list)
    """Snapshots this machine removed itself (so their absence is not news)."""

    @classmethod
    def load(cls, directory: Path, repo_id: str) -> "RepoMemory":
        try:
            doc: dict[str, Any] = json.loads((directory / "repos" / f"{repo_id}.json").read_text())
            return cls(
                newest={str(k): {"id": str(v["id"]), "time": str(v["time"])} for k, v in dict(doc.get("newest", {})).items()},
                index_files=[str(i) for i in doc.get("index_files", [])],
                version=int(doc.get("version", 0)),
                forgotten=[str(i) for i in doc.get("forgotten", [])][-1000:],
            )
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable local state for repository %s: %s", repo_id[:8], exc)
            return cls()

    def save(self, directory: Path, repo_id: str) -> None:
        doc = {"newest": self.newest, "index_files": sorted(self.index_files), "version": self.version, "forgotten": self.forgotten[-1000:]}
        try:
            write_state_file(directory / "repos" / f"{repo_id}.json", json.dumps(doc, indent=1, sort_keys=True).encode())
        except OSError as exc:
            log.warning("could not record what was seen of repository %s in %s: %s", repo_id[:8], directory, exc)
