"""``drkit forget`` (retention) and ``drkit prune`` (free space)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from drkit import metrics
from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import human_size, identity_option, open_repository
from drkit.cli.selection import checked_source_names
from drkit.errors import Refused, UsageError
from drkit.repository.repo import Repository
from drkit.services.forget import Policy, apply_policy
from drkit.units import parse_keep_within
from drkit.services.prune import PrunePlan, PruneReport, prune
from drkit.services.seen import check_and_remember
from drkit.storage.base import retention_of


def _protected(state: CliState) -> bool:
    repo_cfg = state.config.repository
    return repo_cfg.append_only or bool((repo_cfg.s3 or {}).get("object_lock"))


def _refuse_on_append_only(state: CliState, dry_run: bool) -> None:
    if state.config.repository.append_only and not dry_run:
        raise Refused(
            "this host is configured append-only: it may not forget or prune",
            hint="run forget/prune from the admin host, with a config without repository.append_only",
        )


def _say_prune(state: CliState, r: PruneReport) -> None:
    if r.dry_run:
        state.say(
            f"prune (dry run): would delete {r.packs_deleted} pack(s), repack {r.packs_repacked}, remove {r.orphans_deleted} "
            f"orphan(s); would free {human_size(r.bytes_freed)}"
        )
    else:
        state.say(
            f"prune: {r.packs_deleted} pack(s) deleted, {r.packs_repacked} repacked, {r.orphans_deleted} orphan(s) removed; "
            f"freed {human_size(r.bytes_freed)}"
        )
    if r.orphans_kept_young or r.orphans_kept_listed:
        state.say(
            f"prune: kept {r.orphans_kept_young + r.orphans_kept_listed} unindexed pack(s) "
            "(written within the last day, or still listed by an old index file; a later prune decides)"
        )
    if r.kept_locked or r.retention_extended:
        # Object Lock: what is still retained stays (a later prune removes it); live data
        # has its retention extended (see drkit/services/prune.py).
        state.say(
            f"prune: {r.kept_locked} object(s) kept because still under retention; "
            f"retention {'would be ' if r.dry_run else ''}extended on {r.retention_extended} referenced object(s)"
        )


@cli.command("forget")
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT...]")
@click.option("-s", "--source", "sources", multiple=True, metavar="NAME", help="Only these sources.")
@click.option("--tag", "filter_tags", multiple=True, metavar="TAG", help="Only snapshots with this tag (repeatable: any of them).")
@click.option("--host", "filter_hosts", multiple=True, metavar="HOST", help="Only snapshots taken on this host (repeatable).")
@click.option("--keep-last", type=int, default=0, metavar="N", help="Keep the N newest snapshots.")
@click.option("--keep-hourly", type=int, default=0, metavar="N", help="Keep the newest of each of the last N hours.")
@click.option("--keep-daily", type=int, default=0, metavar="N", help="... of the last N days.")
@click.option("--keep-weekly", type=int, default=0, metavar="N", help="... of the last N ISO weeks.")
@click.option("--keep-monthly", type=int, default=0, metavar="N", help="... of the last N months.")
@click.option("--keep-yearly", type=int, default=0, metavar="N", help="... of the last N years.")
@click.option("--keep-within", metavar="DURATION", help="Keep all within DURATION of now (e.g. 7d, 2w3d, 12h, 6M; M is months, m minutes).")
@click.option("--keep-tag", "keep_tags", multiple=True, metavar="TAG", help="Keep snapshots with this tag.")
@click.option("--prune", "do_prune", is_flag=True, help="Run prune afterwards to free the space.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print decisions as JSON.")
@identity_option
@pass_state
def forget_cmd(
    state: CliState,
    snapshot_ids: tuple[str, ...],
    sources: tuple[str, ...],
    filter_tags: tuple[str, ...],
    filter_hosts: tuple[str, ...],
    keep_last: int,
    keep_hourly: int,
    keep_daily: int,
    keep_weekly: int,
    keep_monthly: int,
    keep_yearly: int,
    keep_within: str | None,
    keep_tags: tuple[str, ...],
    do_prune: bool,
    dry_run: bool,
    as_json: bool,
    identity_path: Path | None,
) -> None:
    """Remove snapshots by a keep-policy (per source), or by id.

    Only manifests are removed; the data goes with 'drkit prune' (or --prune).
    A snapshot is kept when any rule keeps it.

    \b
    Examples:
      drkit forget --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --prune
      drkit forget --keep-within 30d --dry-run
      drkit forget 2b9418cf
      drkit forget --host old-node --keep-last 1
      drkit forget --tag nightly --keep-daily 7
    """
    try:
        policy = Policy(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly,
                        parse_keep_within(keep_within) if keep_within else None, list(keep_tags))
    except ValueError as exc:
        raise UsageError(f"--keep-within: {exc}") from None
    _refuse_on_append_only(state, dry_run)
    if policy.count_based() and _protected(state):
        click.echo(
            "warning: count-based rules (--keep-last/-hourly/-daily/...) on an append-only or object-locked repository "
            "can be gamed: a compromised host can push real snapshots out by adding fake ones; prefer --keep-within",
            err=True,
        )
    if policy.empty() and not snapshot_ids:
        raise UsageError("no policy and no snapshot given: refusing to forget everything", hint="e.g. --keep-daily 7 --keep-weekly 4")
    with metrics.track(state, "forget", enabled=not dry_run) as m:
        repo = open_repository(state, identity_path)
        removed, report = _forget(state, repo, snapshot_ids, sources, policy, do_prune, dry_run, as_json,
                                  tags=filter_tags, hosts=filter_hosts)
        if not dry_run:
            metrics.record_repository_state(m, repo)
            for line in check_and_remember(repo, state.state_dir, forgotten=[str(r["id"]) for r in removed]):
                click.echo(f"warning: {line}", err=True)
    if as_json:
        state.emit_json({"removed": removed, "dry_run": dry_run, "prune": report.to_json() if report else None})
    else:
        state.say(f"{'would remove' if dry_run else 'removed'} {len(removed)} snapshot(s)")
        if report:
            _say_prune(state, report)


def _plan_printer(state: CliState, dry_run: bool, as_json: bool) -> Callable[[PrunePlan], None] | None:
    """With --dry-run (and not --json), print the plan prune made."""
    if not dry_run or as_json:
        return None

    def show(plan: PrunePlan) -> None:
        for line in plan.lines():
            state.say(line)

    return show


def _forget(state: CliState, repo: Repository, snapshot_ids: tuple[str, ...], sources: tuple[str, ...],
            policy: Policy, do_prune: bool, dry_run: bool, as_json: bool, *, tags: tuple[str, ...] = (),
            hosts: tuple[str, ...] = ()) -> tuple[list[dict[str, object]], PruneReport | None]:
    removed: list[dict[str, object]] = []
    with repo.lock_for("forget"):
        if snapshot_ids:
            targets = [repo.find_snapshot(ref) for ref in snapshot_ids]
            decisions = [(s, False, ["explicit"]) for s in targets]
        else:
            snaps = repo.list_snapshots()
            sources = checked_source_names(state, sources, snaps)
            snaps = [s for s in snaps if (not sources or s.source in sources) and (not tags or set(tags) & set(s.tags))
                     and (not hosts or s.host in hosts)]
            decisions = [(d.snapshot, d.keep, d.reasons) for d in apply_policy(snaps, policy)]
        for snap, keep, reasons in decisions:
            if "future-dated" in reasons:
                click.echo(
                    f"warning: future-dated snapshot {snap.short_id} ({snap.time[:19]}, source {snap.source}, host {snap.host}) "
                    "is kept and never counts for retention; check that host's clock, or who wrote it",
                    err=True,
                )
            if not as_json:
                state.say(f"{'keep  ' if keep else 'remove'} {snap.short_id} {snap.time[:19]} {snap.source:<16} {','.join(reasons)}")
            if not keep:
                removed.append({"id": snap.id, "source": snap.source, "time": snap.time})
                if not dry_run:
                    repo.delete_snapshot(snap.id)
    report = None
    # With Object Lock, prune also extends the retention of live data: run it even when
    # nothing was forgotten, so a scheduled 'forget --prune' keeps the protection going.
    if do_prune and (removed or retention_of(repo.storage) is not None):
        report = prune(repo, dry_run=dry_run, on_plan=_plan_printer(state, dry_run, as_json))
    return removed, report


@cli.command("prune")
@click.option("--repack-threshold", type=click.FloatRange(0.01, 1.0), default=0.5, show_default=True, help="Repack a pack when at least this share of it is unused.")
@click.option("--dry-run", is_flag=True, help="Print the plan (what would be deleted, repacked, kept); change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@identity_option
@pass_state
def prune_cmd(state: CliState, repack_threshold: float, dry_run: bool, as_json: bool, identity_path: Path | None) -> None:
    """Delete data no snapshot references; repack mostly-empty packs.

    Takes an exclusive lock: backups wait (they fail with exit 4) until it ends.
    Safe to interrupt: every snapshot stays restorable at every step. Refuses (exit 6,
    nothing deleted) when a blob a snapshot uses is in no index: run 'drkit
    rebuild-index' first. Packs no index lists are kept for a day (a backup on another
    host may be writing them).

    \b
    Examples:
      drkit prune --dry-run
      drkit prune
      drkit prune --repack-threshold 0.2 --json
    """
    _refuse_on_append_only(state, dry_run)
    with metrics.track(state, "prune", enabled=not dry_run) as m:
        repo = open_repository(state, identity_path)
        report = prune(repo, repack_threshold=repack_threshold, dry_run=dry_run, workers=state.config.repository.workers,
                       on_plan=_plan_printer(state, dry_run, as_json))
        if not dry_run:
            metrics.record_repository_state(m, repo)
            for line in check_and_remember(repo, state.state_dir):
                click.echo(f"warning: {line}", err=True)
    if as_json:
        state.emit_json(report.to_json())
    else:
        _say_prune(state, report)
