"""``drkit restore``: parse the command line, call :func:`drkit.services.restore.run_restore`,
present the outcome."""

from __future__ import annotations

from pathlib import Path

import click

from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import identity_option, human_size, open_repository, progress_for
from drkit.errors import UsageError
from drkit.services.restore import RestoreOptions, RestoreOutcome, run_restore


def parse_options(items: tuple[str, ...]) -> dict[str, object]:
    """KEY=VALUE pairs; 'true'/'false' become booleans, digits integers."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--option {item!r}: use KEY=VALUE")
        low = value.lower()
        out[key] = True if low in ("true", "yes", "on") else False if low in ("false", "no", "off") else int(value) if value.isdigit() else value
    return out


@cli.command("restore")
@click.argument("snapshot", metavar="SNAPSHOT|latest|run:RUN")
@click.option("-s", "--source", metavar="NAME", help="The source whose snapshot this is (needed with 'latest' when several are configured, and with run:RUN).")
@click.option("--target", type=click.Path(file_okay=False, path_type=Path), metavar="DIR", help="Restore under this directory (original paths below it).")
@click.option("-i", "--include", "include", multiple=True, metavar="PATTERN", help="Restore only matching paths (fnmatch on the full path; a directory includes its contents).")
@click.option("--dry-run", is_flag=True, help="Show what would be restored; write nothing.")
@click.option("--force", is_flag=True, help="Allow a non-empty target (files are replaced atomically).")
@click.option("--in-place", is_flag=True, help="Put the data back on this node (sources that support it: K3s datastore, node files, Kubernetes objects).")
@click.option("--volume", "volumes", multiple=True, metavar="PVC", help="Longhorn, local-path: restore only these PVCs (namespace/name or name).")
@click.option("--namespace", "namespace", metavar="NEW", help="local-path, Longhorn: restore as new claims (new PVs and volumes) in this namespace.")
@click.option("--claim", "claim", metavar="NEW", help="Longhorn: restore the one selected volume (--volume) as a claim of this name.")
@click.option("--push-to", metavar="URL", help="Git: mirror-push the restored repository to this remote.")
@click.option("-o", "--option", "extra", multiple=True, metavar="KEY=VALUE",
              help="A source-specific restore option, e.g. -o pause_sync=false (argocd); see docs/sources/.")
@click.option("--no-cache", is_flag=True,
              help="Read every index file from the repository instead of the local index cache "
                   "($DRKIT_CACHE_DIR, else /var/cache/drkit for root, else ~/.cache/drkit).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@identity_option
@pass_state
def restore_cmd(
    state: CliState,
    snapshot: str,
    source: str | None,
    target: Path | None,
    include: tuple[str, ...],
    dry_run: bool,
    force: bool,
    in_place: bool,
    volumes: tuple[str, ...],
    namespace: str | None,
    claim: str | None,
    push_to: str | None,
    no_cache: bool,
    as_json: bool,
    identity_path: Path | None,
    extra: tuple[str, ...],
) -> None:
    """Restore a snapshot of one source.

    Every chunk is verified against its keyed hash before it is written; a file
    whose data is damaged is not left behind, and the restore fails naming it.
    Files come back under DIR with their full original path (restic's convention):
    /srv/data/x is restored as DIR/srv/data/x. Without --force the target must be
    empty. Nothing is written outside DIR, whatever the snapshot says (paths that
    would escape, or lead through a symlink, are refused: exit 9). Owners and
    set-uid/set-gid/sticky bits are restored only when run as root, as tar does.
    Ctrl-C stops within a second, leaving only complete files. A restore into a
    new or empty DIR writes into a hidden DIR/.drkit-tmp-...-partial directory and
    moves the tree into place when done (or, stopped early, its complete files);
    one that was killed leaves that directory, and the next restore into DIR
    removes it. The index comes
    from this machine's index cache when a backup or restore left one (only the
    index files stored since are read: none are downloaded again); --no-cache
    reads every index file.

    An id alone names its source (-s is then optional); 'latest' needs -s unless
    only one source is configured, and never picks an empty snapshot.

    \b
    Examples:
      drkit restore latest -s data --target /tmp/restore
      drkit restore 2b9418cf --target /tmp/r
      drkit restore 2b9418cf -s data --target /tmp/r --include '/srv/data/db/*'
      drkit restore latest -s k3s-db --target /root/restore   (then run the runbook)
      drkit restore run:3f2a9c1e -s k3s-node --target /root/node   (that run's snapshot of k3s-node)
    """
    if source is not None:
        state.config.source(source)  # an unknown name is a usage error before anything else
    elif snapshot.startswith("run:"):
        raise UsageError("'run:RUN' needs --source NAME: a run holds one snapshot per source",
                         hint=state.config.known_sources_hint())
    elif snapshot == "latest":
        if len(state.config.sources) != 1:
            raise UsageError("'latest' needs --source NAME when several sources are configured",
                             hint=state.config.known_sources_hint())
        source = state.config.sources[0].name
    options = RestoreOptions(
        target=target, include=include, force=force, dry_run=dry_run, in_place=in_place,
        volumes=volumes, namespace=namespace, claim=claim, push_to=push_to, extra=parse_options(extra),
        cache_dir=None if no_cache or dry_run else state.cache_dir,  # a dry run writes nothing, not even the cache
    )
    if target is None and not (in_place or push_to or namespace or claim):
        raise UsageError("say where to restore: --target DIR (or --in-place / --namespace / --push-to where the source "
                         "supports it)")
    repo = open_repository(state, identity_path)
    if source is None:  # an id alone names its source
        snap = repo.find_snapshot(snapshot)
        source, snapshot = snap.source, snap.id
    src = state.config.source(source)
    unknown = sorted(set(options.extra) - src.restore_options)
    if unknown:
        raise UsageError(
            f"-o {unknown[0]}: source {source!r} ({src.type_name}) has no such restore option",
            hint=("it takes: " + ", ".join(sorted(src.restore_options))) if src.restore_options
            else f"{src.type_name} sources take no -o options (see docs/sources/)",
        )
    with progress_for(state, not as_json) as progress:
        outcome = run_restore(repo, src, snapshot, options, env=state.env.vars, progress=progress,
                              on_line=None if as_json else state.say)
    _present(state, outcome, as_json)


def _present(state: CliState, outcome: RestoreOutcome, as_json: bool) -> None:
    snap, result, opts = outcome.snapshot, outcome.result, outcome.options
    if as_json:
        state.emit_json(
            {
                "snapshot": snap.id,
                "source": outcome.source,
                "target": str(opts.target) if opts.target else None,
                "dry_run": opts.dry_run,
                "files": result.files,
                "dirs": result.dirs,
                "symlinks": result.symlinks,
                "bytes": result.bytes_written,
                "seconds": round(outcome.seconds, 3),
                "lines": outcome.lines + result.lines,
                "details": result.details,
            }
        )
        return
    for line in result.lines:
        state.say(line)
    verb = "would restore" if opts.dry_run else "restored"
    state.say(
        f"{verb} snapshot {snap.short_id} of {outcome.source} ({snap.time}): {result.files} files, {result.dirs} dirs, "
        f"{result.symlinks} symlinks, {human_size(result.bytes_written)} in {outcome.seconds:.1f}s"
    )
