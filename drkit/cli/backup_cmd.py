"""``drkit backup``: one snapshot per selected source, all in one run."""

from __future__ import annotations

import click

from drkit import metrics
from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import human_size, open_repository, progress_for
from drkit.errors import DrkitError
from drkit.repository.repo import Repository
from drkit.services.backup import BackupOptions, BackupRun, run_backup
from drkit.services.seen import check_and_remember


def _report(state: CliState, run: BackupRun, as_json: bool) -> None:
    if as_json:
        state.emit_json({"run": run.run_id, "snapshots": [o.to_json() for o in run.outcomes], "run_meta": run.run_meta})
        return
    for o in run.outcomes:
        if o.snapshot:
            st = o.snapshot.stats
            state.say(
                f"{o.source}: snapshot {o.snapshot.short_id} saved in {o.seconds:.1f}s: "
                f"{st.get('entries', 0)} entries, {human_size(st.get('size', 0))} total, "
                f"{human_size(st.get('bytes_read', 0))} read, {human_size(st.get('bytes_added', 0))} new "
                f"({human_size(st.get('bytes_stored', 0))} stored)"
            )
            for w in o.warnings:
                state.say(f"  warning: {w}")
            for n in o.notes:
                state.say(f"  note: {n}")
        if o.error:
            state.say(f"{o.source}: FAILED: {o.error.message}")
            if o.error.hint:
                state.say(f"  hint: {o.error.hint}")


def _remember(state: CliState, repo: Repository, run: BackupRun) -> None:
    """Warn if storage lost what this host saw before; remember this run's snapshots."""
    for line in check_and_remember(repo, state.state_dir, written=run.snapshots):
        click.echo(f"warning: {line}", err=True)


@cli.command("backup")
@click.option("-s", "--source", "sources", multiple=True, metavar="NAME", help="Back up only this source (repeatable). Default: all.")
@click.option("-t", "--tag", "tags", multiple=True, metavar="TAG", help="Tag the snapshots (repeatable).")
@click.option("--host", help="Record this host name instead of the machine's (or config 'hostname').")
@click.option("--json", "as_json", is_flag=True, help="Print {run, snapshots: [{id, source, time, bytes_read, bytes_added, ...}]}.")
@pass_state
def backup_cmd(state: CliState, sources: tuple[str, ...], tags: tuple[str, ...], host: str | None, as_json: bool) -> None:
    """Snapshot the configured sources into the repository.

    Each source gets its own snapshot; all snapshots of one run share a run id.
    Only new data is stored: unchanged files are not even read again, and chunks
    already in the repository are not uploaded twice. A run interrupted at any
    point leaves earlier snapshots intact, and the next run reuses what it uploaded.

    Longhorn sources in 'mode: native' make Longhorn's own backups to its backup
    target: those are NOT encrypted by drkit (only their URL is recorded here).
    The default 'mode: drkit' stores volume data encrypted in this repository.

    \b
    Examples:
      drkit backup                      every source
      drkit backup -s k3s-db -s token   two sources, one run
      drkit backup --tag before-upgrade --json
    """
    cfg = state.config
    selected = cfg.select_sources(sources)
    with metrics.track(state, "backup", sources=[s.name for s in selected]) as m:
        repo = open_repository(state)
        options = BackupOptions(
            tags=list(tags),
            workers=cfg.repository.workers,
            index_every_packs=cfg.repository.index_every_packs,
            env=state.env.vars,
        )
        if host or cfg.raw.hostname:
            options.host = host or cfg.raw.hostname or options.host
        try:
            with progress_for(state, not as_json) as progress:
                run = run_backup(repo, selected, options, progress=progress)
        except DrkitError as exc:
            failed_run = getattr(exc, "run", None)
            if failed_run is not None:
                metrics.record_backup(m, failed_run, repo)
                _report(state, failed_run, as_json)
                _remember(state, repo, failed_run)
            raise
        metrics.record_backup(m, run, repo)
        _report(state, run, as_json)
        _remember(state, repo, run)
