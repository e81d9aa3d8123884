"""``drkit dump``: one file of a snapshot to stdout, or a directory as a tar stream."""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path
from typing import IO, Any, cast

import click

from drkit.atomicio import replacing
from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import identity_option, load_index, open_repository
from drkit.cli.selection import resolve_snapshot
from drkit.errors import UsageError
from drkit.services.browse import dump


@cli.command("dump")
@click.argument("snapshot", metavar="SNAPSHOT|latest")
@click.argument("path", metavar="PATH")
@click.option("-s", "--source", metavar="NAME", help="With 'latest': the source.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write here instead of stdout: created atomically, mode 0600 (an existing file is refused).")
@click.option("--json", "as_json", is_flag=True,
              help="With -o: print one JSON object {snapshot, path, output, kind, bytes, sha256} when done.")
@identity_option
@pass_state
def dump_cmd(state: CliState, snapshot: str, path: str, source: str | None, output: Path | None, as_json: bool,
             identity_path: Path | None) -> None:
    """Write a file of a snapshot to stdout; a directory comes out as a tar stream.

    Every byte is verified against its keyed hash before it is written; a damaged
    blob stops the dump with exit 6. Paths are as 'drkit ls' shows them. With -o the
    output appears under its name only when complete (never half-written).

    \b
    Examples:
      drkit dump latest -s data /srv/data/config.yaml
      drkit dump 2b9418cf /srv/data > data.tar
      drkit dump latest -s k3s-db state.db -o /root/state.db
      drkit dump latest -s data /srv/data -o data.tar --json
    """
    if as_json and output is None:
        raise UsageError("--json needs -o FILE (stdout carries the dumped bytes)",
                         hint="drkit dump SNAPSHOT PATH -o FILE --json")
    repo = open_repository(state, identity_path)
    with repo.lock_for("dump"):  # a concurrent prune cannot delete what is read
        load_index(state, repo)
        snap = resolve_snapshot(state, repo, snapshot, source)
        if output is None:
            if sys.stdout.isatty():
                raise UsageError("refusing to write binary data to a terminal", hint="redirect stdout or use -o FILE")
            out = sys.stdout.buffer
            dump(repo, snap, path, out)
            out.flush()
            return
        if output.exists() or output.is_symlink():
            raise UsageError(f"{output} already exists", hint="choose another -o FILE")
        try:
            with replacing(output, overwrite=False) as fh:
                counted = _Counting(fh)
                kind = dump(repo, snap, path, cast(IO[bytes], counted))  # a write-only stream is all dump uses
        except FileExistsError:
            raise UsageError(f"{output} already exists", hint="choose another -o FILE") from None
        if as_json:
            state.emit_json({"snapshot": snap.id, "path": path, "output": str(output), "kind": kind,
                             "bytes": counted.count, "sha256": counted.sha256.hexdigest()})


class _Counting(io.RawIOBase):
    """A write-only stream that counts and hashes what passes through to *out*."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.count = 0
        self.sha256 = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._out.write(view)
        self.sha256.update(view)
        self.count += len(view)
        return len(view)
