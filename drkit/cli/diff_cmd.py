"""``drkit diff``: what changed between two snapshots."""

from __future__ import annotations

from pathlib import Path

import click

from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import human_size, identity_option, load_index, open_repository
from drkit.cli.output import json_line
from drkit.cli.selection import resolve_snapshot
from drkit.services.browse import diff_snapshots


@cli.command("diff")
@click.argument("first", metavar="A")
@click.argument("second", metavar="B")
@click.option("-s", "--source", metavar="NAME", help="With 'latest': the source.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines: {message_type: change, path, modifier} per change, then {message_type: statistics, ...}.")
@identity_option
@pass_state
def diff_cmd(state: CliState, first: str, second: str, source: str | None, as_json: bool, identity_path: Path | None) -> None:
    """Show what changed from snapshot A to snapshot B.

    \b
    Each line starts with what happened to the path:
      +  added      -  removed      M  content changed
      U  metadata (mode, owner, mtime) only      T  type changed

    \b
    Examples:
      drkit diff 2b9418cf latest -s data
      drkit diff 2b9418cf 7f00aa12 --json
    """
    repo = open_repository(state, identity_path)
    with repo.lock_for("diff"):  # a concurrent prune cannot delete what is read
        load_index(state, repo)
        a = resolve_snapshot(state, repo, first, source)
        b = resolve_snapshot(state, repo, second, source)
        changes, st = diff_snapshots(repo, a, b)
        if as_json:
            for c in changes:
                json_line({"message_type": "change", "path": c.path, "modifier": c.modifier,
                           "size_before": c.size_before, "size_after": c.size_after})
            json_line({"message_type": "statistics", "source_snapshot": a.id, "target_snapshot": b.id, **st.to_json()})
            return
        state.say(f"comparing snapshot {a.short_id} ({a.source}, {a.time}) to {b.short_id} ({b.source}, {b.time}):")
        for c in changes:
            click.echo(f"{c.modifier:<5}{c.path}")
        state.say(f"added: {st.added} ({human_size(st.bytes_added)}), removed: {st.removed} ({human_size(st.bytes_removed)}), "
                  f"changed: {st.modified}, metadata only: {st.metadata}, type changed: {st.type_changed}")
