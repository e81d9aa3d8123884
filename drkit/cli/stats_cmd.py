"""``drkit stats``: how much is backed up, and how much it takes."""

from __future__ import annotations

from pathlib import Path

import click

from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import human_size, identity_option, load_index, open_repository
from drkit.cli.selection import checked_source_names
from drkit.services.browse import stats


@cli.command("stats")
@click.option("-s", "--source", "sources", multiple=True, metavar="NAME", help="Only this source (repeatable).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON document: {sources: {NAME: {snapshots, files, raw, deduplicated, stored, blobs}}, total: {...}}.")
@identity_option
@pass_state
def stats_cmd(state: CliState, sources: tuple[str, ...], as_json: bool, identity_path: Path | None) -> None:
    """Sizes per source and in total.

    \b
      raw           what restoring every snapshot would write (sum of file sizes)
      deduplicated  the distinct data those snapshots use, uncompressed
      stored        what that data takes in the repository (compressed, encrypted)

    \b
    Examples:
      drkit stats
      drkit stats -s k3s-db --json
    """
    repo = open_repository(state, identity_path)
    with repo.lock_for("stats"):  # a concurrent prune cannot delete what is read
        load_index(state, repo)
        snaps = repo.list_snapshots(on_error=lambda name, detail: click.echo(f"warning: damaged manifest {name}: {detail}", err=True))
        sources = checked_source_names(state, sources, snaps)
        snaps = [s for s in snaps if not sources or s.source in sources]
        per, total = stats(repo, snaps)
        if as_json:
            state.emit_json({"sources": {k: v.to_json() for k, v in sorted(per.items())}, "total": total.to_json()})
            return
        state.say(f"{'SOURCE':<20} {'SNAPSHOTS':>9} {'FILES':>9} {'RAW':>11} {'DEDUPLICATED':>13} {'STORED':>11}")
        for name, s in sorted(per.items()):
            state.say(f"{name:<20} {s.snapshots:>9} {s.files:>9} {human_size(s.raw):>11} {human_size(s.deduplicated):>13} {human_size(s.stored):>11}")
        state.say(f"{'total':<20} {total.snapshots:>9} {total.files:>9} {human_size(total.raw):>11} "
                  f"{human_size(total.deduplicated):>13} {human_size(total.stored):>11}")
