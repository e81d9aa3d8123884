"""``drkit unlock``: remove stale locks."""

from __future__ import annotations

import click

from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import storage_for
from drkit.repository.locks import list_locks, remove_stale_locks
from drkit.repository.repo import Repository


@cli.command("unlock")
@click.option("--remove-all", is_flag=True, help="Remove every lock, also live ones (only when you are sure nothing runs).")
@pass_state
def unlock_cmd(state: CliState, remove_all: bool) -> None:
    """Remove stale locks left by crashed or killed runs.

    A lock is stale when it was taken on this machine (its host id, not the
    hostname) by a process that is gone, or when this host has seen it unchanged for
    longer than its own stale time (30 minutes by default) plus 5 minutes; another
    host's clock is never trusted. Run it again later if a dead lock is not yet stale.
    Live locks are listed and kept unless --remove-all.

    \b
    Examples:
      drkit unlock                stale locks only
      drkit unlock --remove-all   every lock (only when nothing runs)
    """
    storage = storage_for(state)
    Repository.read_config(storage)
    removed = remove_stale_locks(storage, remove_all=remove_all)
    for lk in removed:
        state.say(f"removed lock of {lk.describe()}")
    for lk in list_locks(storage):
        state.say(f"kept live lock of {lk.describe()}")
    if not removed:
        state.say("no stale locks")
