"""Helpers shared by commands: open the repository, render sizes and progress."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import click

from drkit.cli.app import CliState
from drkit.passwords import Secret, resolve_passphrase
from drkit.redact import check_private_file
from drkit.repository.repo import Repository
from drkit.progress import ProgressSink
from drkit.storage import open_storage
from drkit.storage.base import Storage
from drkit.units import format_size

if TYPE_CHECKING:
    from rich.progress import TaskID

    from drkit.repository.identity import Identity


def storage_for(state: CliState) -> Storage:
    """The configured storage, with retries and logging around it."""
    from drkit.storage.observe import wrap_storage

    configure_host(state)
    repo_cfg = state.config.repository
    storage: Storage = wrap_storage(open_storage(repo_cfg.url, repo_cfg.storage_options()))
    if repo_cfg.append_only:
        from drkit.storage.appendonly import AppendOnlyStorage

        storage = AppendOnlyStorage(storage)
    return storage


def configure_host(state: CliState) -> None:
    """Give this process's locks the machine's host id from the state directory (made on
    first use); warn, and use a per-process id, when it cannot be read or written."""
    import logging

    from drkit import localstate
    from drkit.repository import locks

    directory = localstate.state_dir(state.env.vars)
    try:
        locks.configure(localstate.host_id(directory), directory)
    except OSError as exc:
        logging.getLogger("drkit").warning(
            "state directory %s unusable (%s): locks name this process only; set DRKIT_STATE_DIR", directory, exc
        )
        locks.configure(None)


def passphrase(state: CliState, *, confirm: bool = False) -> Secret:
    return resolve_passphrase(state.env, state.config.repository, interactive=state.interactive, confirm=confirm)


def identity_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--identity FILE``: the X25519 identity of a recipient-mode repository."""
    return click.option(
        "--identity",
        "identity_path",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE",
        help="Identity file that opens a recipient-mode repository (default: $DRKIT_IDENTITY_FILE).",
    )(f)


def load_identity_for(state: CliState, path: Path | None) -> "Identity | None":
    """The identity from --identity or DRKIT_IDENTITY_FILE, or None. Its own
    passphrase (if protected) comes from DRKIT_IDENTITY_PASSWORD[_FILE|_COMMAND]."""
    from drkit.repository.identity import load_identity

    if path is None and state.env.get("DRKIT_IDENTITY_FILE"):
        path = Path(state.env.get("DRKIT_IDENTITY_FILE") or "")
    if path is None:
        return None
    check_private_file(path, "identity file")
    return load_identity(
        path,
        lambda: resolve_passphrase(
            state.env, None, interactive=state.interactive, prefix="DRKIT_IDENTITY_PASSWORD", prompt="identity passphrase: "
        ).reveal(),
    )


def open_repository(state: CliState, identity_path: Path | None = None) -> Repository:
    """Open the configured repository with the identity (if given) or the passphrase.
    Raises RepositoryNotFound / WrongKey."""
    storage = storage_for(state)
    Repository.read_config(storage)  # a missing repository is reported before asking for a passphrase
    level = state.config.repository.zstd_level()
    identity = load_identity_for(state, identity_path)
    if identity is not None:
        repo = Repository.open(storage, None, identity=identity, compression_level=level)
    else:
        repo = Repository.open(storage, passphrase(state).reveal(), compression_level=level)
    repo.lock_retry = timedelta(seconds=state.retry_lock)
    return repo


def load_index(state: CliState, repo: Repository) -> None:
    """Load *repo*'s index for a command that only reads the repository (ls, find, dump,
    diff, stats): from this machine's index cache, reading only the index files stored
    since it was written (none after a backup; see :mod:`drkit.repository.indexcache`),
    and bring the cache up to date."""
    repo.load_index(cache=repo.index_cache(state.cache_dir))


human_size = format_size
"""Sizes as people read them (see :func:`drkit.units.format_size`)."""


class RichProgress(ProgressSink):
    """A rich progress display on stderr (only used on a terminal)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.fields[source]}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}", style="dim"),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> "RichProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start_source(self, name: str, total: int | None) -> None:
        self._task = self._progress.add_task("", total=total, source=name, detail="")

    def set_total(self, total: int) -> None:
        """Called from the counting thread: rich's Progress is thread-safe."""
        task = self._task
        if task is not None:
            self._progress.update(task, total=total)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)

    def text(self, text: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, detail=text[-50:])

    def end_source(self) -> None:
        if self._task is not None:
            self._progress.update(self._task, detail="done")
            self._task = None


@contextmanager
def progress_for(state: CliState, enabled: bool = True) -> Iterator[ProgressSink | None]:
    """A progress sink on a terminal, else None."""
    if not enabled or not state.interactive:
        yield None
        return
    with RichProgress() as p:
        yield p
