"""``drkit verify`` and ``drkit rebuild-index``."""

from __future__ import annotations

from pathlib import Path

import click

from drkit import metrics
from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import identity_option, open_repository, progress_for
from drkit.errors import DamageFound, UsageError
from drkit.services.rebuild_index import rebuild_index
from drkit.services.verify import verify_repository
from drkit.units import parse_fraction


@cli.command("verify")
@click.option("--read-data", is_flag=True, help="Download and check every pack (slow, thorough).")
@click.option("--read-data-subset", metavar="PCT", help="Check a random part of the packs: '10%', '1/8' or '0.1'.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@identity_option
@pass_state
def verify_cmd(state: CliState, read_data: bool, read_data_subset: str | None, as_json: bool, identity_path: Path | None) -> None:
    """Check that the repository is sound; exit 0 if it is, 6 if damage is found.

    \b
    Levels:
      (default)            structure: index, manifests, trees, every referenced
                           blob indexed, every pack present with the right size
      --read-data-subset   also download a random share of the packs and check
                           every byte (SHA-256 name, decryption, compression, ids)
      --read-data          the same for all packs

    Each problem names the damaged object and the snapshots it affects.

    \b
    Examples:
      drkit verify
      drkit verify --read-data-subset 10%
      drkit verify --read-data --json
    """
    subset = None
    if read_data_subset:
        try:
            subset = parse_fraction(read_data_subset)
        except ValueError as exc:
            raise UsageError(f"--read-data-subset: {exc}") from None
    with metrics.track(state, "verify") as m:
        m.labels["level"] = "full" if read_data else ("subset" if subset is not None else "structure")
        repo = open_repository(state, identity_path)
        with progress_for(state, not as_json and (read_data or subset is not None)) as progress:
            if progress:
                progress.start_source("verify", None)
            report = verify_repository(
                repo, read_data=read_data or subset is not None, subset=subset, on_pack=progress.advance if progress else None,
                state_dir=state.state_dir,
            )
            if progress:
                progress.end_source()
        m.values.update(verify_ok=float(report.ok), verify_damaged_objects=float(len(report.problems)))
        m.ok = report.ok
    if as_json:
        state.emit_json(report.to_json())
    else:
        level = "full read" if read_data else (f"read {read_data_subset} of the packs" if subset else "structure")
        state.say(f"checked {report.snapshots} snapshots, {report.packs} packs, {report.blobs} blobs ({level}; {report.packs_read} packs read)")
        if report.orphan_packs:
            state.say(f"{len(report.orphan_packs)} unreferenced pack(s) (from interrupted backups; 'drkit prune' removes them)")
        for p in report.problems:
            click.echo(f"damaged: {p.line()}", err=True)
        for line in report.rollback:
            click.echo(f"rolled back: {line}", err=True)
        for snap_id in report.future_snapshots:
            click.echo(f"warning: snapshot {snap_id[:8]} is dated in the future: retention never counts it ('drkit snapshots' shows it)", err=True)
        if not report.content_checked:
            state.say("content not checked: this host holds only the recipient (use --identity FILE on the admin host)")
        if report.ok:
            state.say("no problems found")
    if not report.ok:
        raise DamageFound(count=len(report.problems) + len(report.rollback))


@cli.command("rebuild-index")
@pass_state
def rebuild_index_cmd(state: CliState) -> None:
    """Rebuild the index from the packs' own trailers.

    Use it when verify reports a damaged or missing index file. Damaged packs are
    left out and listed. Takes an exclusive lock (no backup may run meanwhile).

    \b
    Examples:
      drkit rebuild-index
      drkit rebuild-index && drkit verify
    """
    repo = open_repository(state)
    report = rebuild_index(repo)
    state.say(f"indexed {report.blobs} blobs in {report.packs} packs; replaced {report.removed_index_files} index file(s)")
    for line in report.damaged:
        click.echo(f"damaged pack left out: {line}", err=True)
    if report.damaged:
        raise DamageFound(count=len(report.damaged))
