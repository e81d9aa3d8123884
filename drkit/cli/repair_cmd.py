"""``drkit repair``: salvage what is intact, drop what is lost, rewrite what referenced it."""

from __future__ import annotations

from pathlib import Path

import click

from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import identity_option, open_repository, progress_for
from drkit.services.repair import RepairReport, default_evidence_root, repair
from drkit.services.seen import check_and_remember

REPAIR_COMMAND = "drkit repair"
"""The command verify's hint quotes."""


@cli.command("repair")
@click.option("--dry-run", is_flag=True, help="Read everything and say what would change; change nothing.")
@click.option("--evidence-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Keep copies of the damaged packs under DIR (default: $XDG_STATE_HOME/drkit/repair).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
@identity_option
@pass_state
def repair_cmd(state: CliState, dry_run: bool, evidence_dir: Path | None, as_json: bool, identity_path: Path | None) -> None:
    """Repair a damaged repository (restic's repair index, packs and snapshots in one).

    Reads every pack. Intact blobs of damaged packs are stored again in new
    packs; the damaged packs are copied to a local evidence directory (its path
    is printed) and removed from the repository; blobs that are lost leave the
    index, so the next backup stores that content afresh; snapshots that used
    them are rewritten without the lost files and marked [repaired]. Afterwards
    'drkit verify --read-data' is clean. Takes an exclusive lock; safe to re-run.

    \b
    Examples:
      drkit repair --dry-run           what is damaged, what would be lost
      drkit repair                     then: drkit backup
      drkit repair --evidence-dir /root/drkit-evidence --json
    """
    repo = open_repository(state, identity_path)
    root = evidence_dir or default_evidence_root(state.env.vars)
    with progress_for(state, not as_json) as progress:
        if progress:
            progress.start_source("repair: reading packs", None)
        report = repair(repo, evidence_root=root, dry_run=dry_run, workers=state.config.repository.workers,
                        on_pack=progress.advance if progress else None)
        if progress:
            progress.end_source()
    if not dry_run and report.snapshots_rewritten:  # this host forgot the old ids itself: not a rollback
        snaps = repo.list_snapshots(on_error=lambda *_: None)
        for line in check_and_remember(repo, state.state_dir, snapshots=snaps,
                                       forgotten=[s["id"] for s in report.snapshots_rewritten]):
            click.echo(f"warning: {line}", err=True)
    if as_json:
        state.emit_json(report.to_json())
        return
    _say(state, report)


def _say(state: CliState, r: RepairReport) -> None:
    would = "would be " if r.dry_run else ""
    if not r.packs_damaged and not r.snapshots_rewritten:
        state.say("no damaged packs, no snapshot refers to lost data: nothing to repair")
        return
    for p in r.packs_damaged:
        where = "missing from storage" if not p["stored"] else p["detail"]
        state.say(f"damaged pack {p['pack'][:16]}: {where} ({p['salvageable']} blob(s) intact, {p['lost']} lost)")
    if r.evidence_dir:
        state.say(f"copies of the damaged packs kept in {r.evidence_dir}")
    if r.kept_under_retention:
        state.say(f"{len(r.kept_under_retention)} object(s) left in place, still under the store's retention "
                  "(no longer indexed; a later 'drkit prune' removes them)")
    for s in r.snapshots_rewritten:
        new = f" as {s['new_id'][:8]}" if s.get("new_id") else ""
        state.say(f"snapshot {s['short_id']} ({s['source']}) {would}rewritten{new} without {len(s['removed'])} file(s) whose data is lost"
                  + (f" and {s['lost_tree_blobs']} lost tree part(s)" if s["lost_tree_blobs"] else ""))
        for path in s["removed"][:10]:
            state.say(f"  lost: {path}")
        if len(s["removed"]) > 10:
            state.say(f"  ... and {len(s['removed']) - 10} more")
    verb = "would salvage" if r.dry_run else "salvaged"
    state.say(f"repair {'plan' if r.dry_run else 'done'}: {verb} {r.blobs_salvaged} blob(s), {r.blobs_lost} blob(s) lost, "
              f"{len(r.packs_damaged)} damaged pack(s) {would}removed")
    if not r.dry_run:
        state.say("next: 'drkit backup' stores the lost content afresh; 'drkit verify --read-data' confirms")
