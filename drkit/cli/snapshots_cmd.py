"""``drkit snapshots``: list what the repository holds."""

from __future__ import annotations

from pathlib import Path

import click

from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import identity_option, human_size, open_repository
from drkit.cli.selection import checked_source_names
from drkit.services.forget import future_snapshots, future_warning
from drkit.services.seen import check_and_remember


@cli.command("snapshots")
@click.option("-s", "--source", "sources", multiple=True, metavar="NAME", help="Only this source (repeatable).")
@click.option("-t", "--tag", "tags", multiple=True, metavar="TAG", help="Only snapshots with this tag.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {id, source, time, run, tags, ...}.")
@identity_option
@pass_state
def snapshots_cmd(state: CliState, sources: tuple[str, ...], tags: tuple[str, ...], as_json: bool, identity_path: Path | None) -> None:
    """List snapshots, oldest first.

    A snapshot is named by its id; any unique prefix (8 characters are shown) or
    'latest' (per --source) works wherever a snapshot is asked for; it never
    picks an empty snapshot. Snapshots that are not complete are marked:
    [partial] (items were skipped), [empty] (nothing was read), [repaired]
    (rewritten by 'drkit repair' without files whose data was lost).

    \b
    Examples:
      drkit snapshots
      drkit snapshots -s k3s-db --json
      drkit snapshots --tag before-upgrade
    """
    repo = open_repository(state, identity_path)
    damaged: list[str] = []
    snaps = repo.list_snapshots(on_error=lambda name, detail: damaged.append(f"{name}: {detail}"))
    sources = checked_source_names(state, sources, snaps)
    snaps = [s for s in snaps if (not sources or s.source in sources) and (not tags or set(tags) & set(s.tags))]
    if as_json:
        state.emit_json([s.summary() for s in snaps])
    else:
        if not snaps:
            state.say("no snapshots")
        else:
            state.say(f"{'ID':<9} {'TIME (UTC)':<20} {'SOURCE':<16} {'TYPE':<12} {'SIZE':>10}  {'RUN':<9} TAGS")
            for s in snaps:
                state.say(
                    f"{s.short_id:<9} {s.datetime:%Y-%m-%d %H:%M:%S}  {s.source:<16} {s.source_type:<12} "
                    f"{human_size(s.stats.get('size', 0)):>10}  {s.run[:8]:<9} {','.join(s.tags)}"
                    + ("" if s.status == "complete" else f"  [{s.status}]")
                )
            state.say(f"{len(snaps)} snapshot(s)")
    for line in damaged:
        click.echo(f"warning: damaged manifest {line}", err=True)
    for s in future_snapshots(snaps):
        click.echo(future_warning(s), err=True)
    for line in check_and_remember(repo, state.state_dir, record=False):
        click.echo(f"warning: {line} ('drkit verify' checks and then accepts the new state)", err=True)
