"""``drkit backup``: one snapshot per selected source, all in one run."""

from __future__ import annotations

from pathlib import Path

import click

from drkit import metrics
from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import human_size, open_repository, progress_for
from drkit.errors import DrkitError, UsageError
from drkit.repository.repo import Repository
from drkit.services.backup import BackupOptions, BackupRun, run_backup
from drkit.services.seen import check_and_remember
from drkit.sources.base import Source
from drkit.storage.dryrun import DryRunStorage


def read_exclude_files(paths: tuple[Path, ...]) -> list[str]:
    """Patterns from --exclude-file files: one per line, blank lines and '#' comments skipped."""
    out: list[str] = []
    for path in paths:
        try:
            text = path.read_text()
        except OSError as exc:
            raise UsageError(f"--exclude-file {path}: {exc.strerror or exc}") from None
        out += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return out


def with_excludes(sources: list[Source], patterns: list[str]) -> list[Source]:
    """*sources*, those with an ``exclude`` option (files-style) excluding *patterns* too.
    UsageError when patterns are given but no selected source can exclude anything."""
    if not patterns:
        return sources
    out: list[Source] = []
    for src in sources:
        if "exclude" in type(src.options).model_fields:
            options = src.options.model_copy(update={"exclude": [*src.options.model_dump()["exclude"], *patterns]})
            src = type(src)(src.name, options)
        out.append(src)
    if all(a is b for a, b in zip(out, sources, strict=True)):
        raise UsageError("--exclude: none of the selected sources takes exclude patterns",
                         hint="exclude applies to files-style sources (type: files)")
    return out


def _report(state: CliState, run: BackupRun, as_json: bool, dry_run: bool = False) -> None:
    if as_json:
        state.emit_json({"run": run.run_id, "dry_run": dry_run, "snapshots": [o.to_json() for o in run.outcomes],
                         "run_meta": run.run_meta})
        return
    for o in run.outcomes:
        if o.snapshot and dry_run:
            st = o.snapshot.stats
            state.say(
                f"{o.source}: would save {st.get('entries', 0)} entries, {human_size(st.get('size', 0))} total, "
                f"{human_size(st.get('bytes_read', 0))} read, {human_size(st.get('bytes_added', 0))} new "
                f"({human_size(st.get('bytes_stored', 0))} to store); dry run: nothing stored"
            )
        elif o.snapshot:
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
@click.option("-e", "--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="Also exclude this pattern (repeatable; as the config's 'exclude' of files-style sources).")
@click.option("--exclude-file", "exclude_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also exclude the patterns in FILE (one per line; blank lines and '#' comments ignored).")
@click.option("-n", "--dry-run", is_flag=True, help="Read and chunk everything, report what would be stored; store nothing.")
@click.option("--no-cache", is_flag=True,
              help="Read every index file from the repository instead of the local index cache "
                   "($DRKIT_CACHE_DIR, else /var/cache/drkit for root, else ~/.cache/drkit).")
@click.option("--json", "as_json", is_flag=True, help="Print {run, dry_run, snapshots: [{id, source, time, bytes_read, bytes_added, ...}]}.")
@pass_state
def backup_cmd(state: CliState, sources: tuple[str, ...], tags: tuple[str, ...], host: str | None,
               excludes: tuple[str, ...], exclude_files: tuple[Path, ...], dry_run: bool, no_cache: bool,
               as_json: bool) -> None:
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
      drkit backup --dry-run -s data    what would be stored
      drkit backup -s data --exclude '*.iso' --exclude-file /etc/drkit/excludes
    """
    cfg = state.config
    selected = with_excludes(cfg.select_sources(sources), [*excludes, *read_exclude_files(exclude_files)])
    with metrics.track(state, "backup", sources=[s.name for s in selected], enabled=not dry_run) as m:
        for src in selected:
            src.warm_up()  # reads ahead while the key is derived (scrypt lets other threads run)
        repo = open_repository(state)
        if dry_run:
            repo.storage = DryRunStorage(repo.storage)
        options = BackupOptions(
            tags=list(tags),
            workers=cfg.repository.workers,
            index_every_packs=cfg.repository.index_every_packs,
            cache_dir=None if no_cache or dry_run else state.cache_dir,  # a dry run stores no index file
            env=state.env.vars,
        )
        if host or cfg.raw.hostname:
            options.host = host or cfg.raw.hostname or options.host
        try:
            with progress_for(state, not as_json) as progress:
                run = run_backup(repo, selected, options, progress=progress)
        except DrkitError as exc:
            failed_run = exc.outcome
            if isinstance(failed_run, BackupRun):
                metrics.record_backup(m, failed_run, repo)
                _report(state, failed_run, as_json, dry_run)
                if not dry_run:
                    _remember(state, repo, failed_run)
            raise
        metrics.record_backup(m, run, repo)
        _report(state, run, as_json, dry_run)
        if not dry_run:
            _remember(state, repo, run)
