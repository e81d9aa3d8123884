"""``drkit copy``: copy snapshots into another repository (3-2-1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from drkit import metrics
from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import human_size, identity_option, open_repository, progress_for
from drkit.config import Environment, RepositoryConfig, load_config
from drkit.errors import DrkitError
from drkit.passwords import Secret, resolve_passphrase
from drkit.repository.repo import Repository
from drkit.services.copy import CopyItem, CopyReport, copy_snapshots
from drkit.storage import open_storage, scheme_of

TO_PREFIX = "DRKIT_TO_PASSWORD"


@dataclass
class Destination:
    """Where ``--to`` points: its repository section and where that came from."""

    repository: RepositoryConfig
    config_path: Path | None


def parse_destination(value: str) -> Destination:
    """A config file (its ``repository:`` section) or a repository URL / path.

    An existing regular file, or a name ending in .yaml/.yml, is a config file
    (ConfigError if it cannot be read or is invalid); anything else is a URL."""
    path = Path(value).expanduser()
    if scheme_of(value) == "" and (path.is_file() or path.suffix in (".yaml", ".yml")):
        from drkit.redact import protect_config

        cfg = load_config(path, Environment())
        protect_config(cfg, Environment())  # its S3/SFTP secrets never reach a log line or an error
        return Destination(cfg.repository, path)
    return Destination(RepositoryConfig.model_validate({"url": value}), None)


def destination_passphrase(state: CliState, dest: Destination) -> Secret:
    """The destination's passphrase: DRKIT_TO_PASSWORD(_FILE|_COMMAND), or the
    destination config's password_file / password_command; exactly one of them.
    Raises PassphraseError."""
    return resolve_passphrase(
        state.env, dest.repository, interactive=state.interactive, prefix=TO_PREFIX, prompt="destination repository passphrase: "
    )


def open_destination(state: CliState, dest: Destination) -> Repository:
    """Open the destination (RepositoryNotFound before asking for a passphrase; WrongKey)."""
    from drkit.storage.observe import wrap_storage

    storage = wrap_storage(open_storage(dest.repository.url, dest.repository.storage_options()))
    Repository.read_config(storage)
    secret = destination_passphrase(state, dest)  # a Secret registers itself for redaction
    return Repository.open(storage, secret.reveal(), compression_level=dest.repository.zstd_level())


def _line(item: CopyItem) -> str:
    s = item.snapshot
    head = f"{s.short_id} {s.source} ({s.time})"
    if item.status == "copied":
        reused = f", {human_size(item.bytes_reused)} reused from the earlier copy" if item.bytes_reused else ""
        return (
            f"copied {head} -> {item.copy_id[:8] if item.copy_id else '?'} in {item.seconds:.1f}s: "
            f"{human_size(item.bytes_read)} read{reused}, {human_size(item.bytes_added)} new "
            f"({human_size(item.bytes_stored)} stored)"
        )
    if item.status == "skipped":
        return f"skipped {head}: {item.reason} ({item.copy_id[:8] if item.copy_id else '?'})"
    return f"FAILED {head}: {item.reason}"


def _summary(state: CliState, report: CopyReport, as_json: bool) -> None:
    if as_json:
        state.emit_json(report.to_json())
        return
    state.say(f"{len(report.copied)} copied, {len(report.skipped)} already there, {len(report.failed)} failed")


@cli.command("copy")
@click.argument("snapshots", nargs=-1, metavar="[SNAPSHOT|latest]...")
@click.option("--to", "to", required=True, metavar="CONFIG_OR_URL", help="Destination: a drkit config file (its repository section) or a repository URL.")
@click.option("-s", "--source", "sources", multiple=True, metavar="NAME", help="Copy only snapshots of this source (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print {from, to, copied, skipped, failed, snapshots: [...]}.")
@identity_option
@pass_state
def copy_cmd(
    state: CliState, snapshots: tuple[str, ...], to: str, sources: tuple[str, ...], as_json: bool, identity_path: Path | None
) -> None:
    """Copy snapshots to another repository (default: every one it lacks).

    The destination keeps its own keys: data is read from this repository
    (verified), re-chunked, deduplicated and encrypted for the destination. Running
    it again copies nothing: snapshots already copied are recognised and skipped.
    The destination must exist ('drkit -c DEST.yaml init').

    The destination passphrase comes from DRKIT_TO_PASSWORD, DRKIT_TO_PASSWORD_FILE
    or DRKIT_TO_PASSWORD_COMMAND, or from the destination config's
    repository.password_file / password_command.

    \b
    Examples:
      drkit copy --to /etc/drkit/offsite.yaml            every missing snapshot
      drkit copy --to /etc/drkit/offsite.yaml -s k3s-db latest
      DRKIT_TO_PASSWORD_FILE=/root/usb.pass drkit copy --to /mnt/usb/drkit
    """
    dest = parse_destination(to)
    src = open_repository(state, identity_path)
    dst = open_destination(state, dest)
    cfg = state.config.repository
    on_item = None if as_json else (lambda item: state.say(_line(item)))
    with metrics.track(state, "copy") as m:
        try:
            with progress_for(state, not as_json) as progress:
                report = copy_snapshots(
                    src,
                    dst,
                    refs=list(snapshots),
                    sources=list(sources),
                    workers=cfg.workers,
                    index_every_packs=dest.repository.index_every_packs,
                    progress=progress,
                    on_item=on_item,
                )
        except DrkitError as exc:
            partial = exc.outcome
            if isinstance(partial, CopyReport):
                _record(m, partial)
                _summary(state, partial, as_json)
            raise
        _record(m, report)
        _summary(state, report, as_json)


def _record(run: metrics.Run, report: CopyReport) -> None:
    """One outcome per source (failed if any of its snapshots was not copied)."""
    by_source: dict[str, list[CopyItem]] = {}
    for item in report.items:
        by_source.setdefault(item.snapshot.source, []).append(item)
    for source, items in by_source.items():
        run.add(source, ok=all(i.status != "failed" for i in items), duration=sum(i.seconds for i in items))
