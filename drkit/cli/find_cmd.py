"""``drkit find``: which snapshots hold a file."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import click

from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import identity_option, load_index, open_repository
from drkit.cli.selection import checked_source_names
from drkit.services.browse import entry_json, find


@cli.command("find")
@click.argument("patterns", nargs=-1, required=True, metavar="PATTERN...")
@click.option("-s", "--source", "sources", multiple=True, metavar="NAME", help="Only snapshots of this source (repeatable).")
@click.option("-t", "--tag", "tags", multiple=True, metavar="TAG", help="Only snapshots with this tag.")
@click.option("--snapshot", "snapshot_refs", multiple=True, metavar="ID", help="Only this snapshot (repeatable; id prefixes work).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON document: [{snapshot, short_id, source, time, matches: [{path, type, size, ...}]}].")
@identity_option
@pass_state
def find_cmd(state: CliState, patterns: tuple[str, ...], sources: tuple[str, ...], tags: tuple[str, ...],
             snapshot_refs: tuple[str, ...], as_json: bool, identity_path: Path | None) -> None:
    """Find files by name across snapshots, newest snapshot last.

    A PATTERN is a shell glob (*, ?, [abc]) matched against each entry's base name,
    or, when it contains a '/', against its full path (restic's rule). Quote it.

    \b
    Examples:
      drkit find 'state.db*'
      drkit find '/srv/data/*/config.yaml' -s data
      drkit find '*.key' --json
    """
    repo = open_repository(state, identity_path)
    with repo.lock_for("find"):  # a concurrent prune cannot delete what is read
        load_index(state, repo)
        snaps = repo.list_snapshots(on_error=lambda name, detail: click.echo(f"warning: damaged manifest {name}: {detail}", err=True))
        sources = checked_source_names(state, sources, snaps)
        if snapshot_refs:
            wanted = {repo.find_snapshot(ref).id for ref in snapshot_refs}
            snaps = [s for s in snaps if s.id in wanted]
        snaps = [s for s in snaps if (not sources or s.source in sources) and (not tags or set(tags) & set(s.tags))]
        results = list(find(repo, snaps, list(patterns)))
        if as_json:
            state.emit_json([{"snapshot": f.snapshot.id, "short_id": f.snapshot.short_id, "source": f.snapshot.source,
                              "time": f.snapshot.time, "matches": [entry_json(e) for e in f.matches]} for f in results])
            return
        for f in results:
            state.say(f"found in snapshot {f.snapshot.short_id} ({f.snapshot.source}, {f.snapshot.time[:19]}):")
            for e in f.matches:
                when = datetime.fromtimestamp(e.mtime_ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
                click.echo(f"  {f.snapshot.short_id}  {e.path}  ({e.type}, {e.size} B, {when})")
        if not results:
            state.say(f"no match for {', '.join(patterns)} in {len(snaps)} snapshot(s)")
