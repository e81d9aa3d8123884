"""``drkit ls``: the entries of a snapshot, without restoring it."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import click

from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import identity_option, load_index, open_repository
from drkit.cli.output import json_line
from drkit.cli.selection import resolve_snapshot
from drkit.errors import UsageError
from drkit.services.browse import entry_json, list_entries


@cli.command("ls")
@click.argument("snapshot", metavar="SNAPSHOT|latest")
@click.argument("path", required=False, metavar="[PATH]")
@click.option("-s", "--source", metavar="NAME", help="With 'latest': the source (needed when the repository holds several).")
@click.option("-l", "--long", "long_", is_flag=True, help="Mode, owner, size and mtime too.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines: first the snapshot {struct_type: snapshot, ...}, then one {struct_type: node, path, type, size, ...} per entry.")
@identity_option
@pass_state
def ls_cmd(state: CliState, snapshot: str, path: str | None, source: str | None, long_: bool, as_json: bool,
           identity_path: Path | None) -> None:
    """List the files of a snapshot (all, or PATH and what is below it).

    \b
    Examples:
      drkit ls latest -s data
      drkit ls 2b9418cf /srv/data/db -l
      drkit ls latest -s k3s-db --json | jq -r 'select(.struct_type=="node") | .path'
    """
    repo = open_repository(state, identity_path)
    with repo.lock_for("ls"):  # a concurrent prune cannot delete what is read
        load_index(state, repo)
        snap = resolve_snapshot(state, repo, snapshot, source)
        if as_json:
            json_line({"struct_type": "snapshot", **snap.summary()})
        count = 0
        for e in list_entries(repo, snap, path):
            count += 1
            if as_json:
                json_line({"struct_type": "node", **entry_json(e)})
            elif long_:
                when = datetime.fromtimestamp(e.mtime_ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
                owner = f"{e.user or e.uid}/{e.group or e.gid}"
                shown = f"{e.path} -> {e.target}" if e.target else e.path
                state.say(f"{e.type[0]}{e.mode:04o} {owner:<16} {e.size:>12} {when}  {shown}")
            else:
                click.echo(e.path)
        if path is not None and count == 0:
            raise UsageError(f"{path!r} is not in snapshot {snap.short_id}", hint=f"'drkit ls {snap.short_id}' lists its paths")
