"""``drkit dump``: one file of a snapshot to stdout, or a directory as a tar stream."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import identity_option, open_repository
from drkit.cli.selection import resolve_snapshot
from drkit.errors import UsageError
from drkit.services.browse import dump


@cli.command("dump")
@click.argument("snapshot", metavar="SNAPSHOT|latest")
@click.argument("path", metavar="PATH")
@click.option("-s", "--source", metavar="NAME", help="With 'latest': the source.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write here instead of stdout (the file is created; an existing one is refused).")
@identity_option
@pass_state
def dump_cmd(state: CliState, snapshot: str, path: str, source: str | None, output: Path | None, identity_path: Path | None) -> None:
    """Write a file of a snapshot to stdout; a directory comes out as a tar stream.

    Every byte is verified against its keyed hash before it is written; a damaged
    blob stops the dump with exit 6. Paths are as 'drkit ls' shows them.

    \b
    Examples:
      drkit dump latest -s data /srv/data/config.yaml
      drkit dump 2b9418cf /srv/data > data.tar
      drkit dump latest -s k3s-db state.db -o /root/state.db
    """
    repo = open_repository(state, identity_path)
    with repo.lock_for("dump"):  # a concurrent prune cannot delete what is read
        repo.load_index()
        snap = resolve_snapshot(state, repo, snapshot, source)
        if output is None:
            if sys.stdout.isatty():
                raise UsageError("refusing to write binary data to a terminal", hint="redirect stdout or use -o FILE")
            out = sys.stdout.buffer
            dump(repo, snap, path, out)
            out.flush()
            return
        try:
            fh = open(output, "xb")
        except FileExistsError:
            raise UsageError(f"{output} already exists", hint="choose another -o FILE") from None
        try:
            with fh:
                dump(repo, snap, path, fh)
        except BaseException:
            output.unlink(missing_ok=True)  # never a half-written file under the name asked for
            raise
