"""``drkit tag``: add, remove or set the tags of snapshots."""

from __future__ import annotations

from pathlib import Path

import click

from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import identity_option, open_repository
from drkit.errors import Refused, UsageError
from drkit.services.seen import check_and_remember
from drkit.services.tag import new_tags, retag


@cli.command("tag")
@click.argument("snapshot_ids", nargs=-1, required=True, metavar="SNAPSHOT...")
@click.option("--add", "add", multiple=True, metavar="TAG", help="Add this tag (repeatable).")
@click.option("--remove", "remove", multiple=True, metavar="TAG", help="Remove this tag (repeatable).")
@click.option("--set", "set_", multiple=True, metavar="TAG", help="Replace all tags by these (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print [{old_id, id, short_id, tags}] as one JSON document.")
@identity_option
@pass_state
def tag_cmd(state: CliState, snapshot_ids: tuple[str, ...], add: tuple[str, ...], remove: tuple[str, ...],
            set_: tuple[str, ...], as_json: bool, identity_path: Path | None) -> None:
    """Change the tags of snapshots.

    A changed snapshot gets a new id (its manifest is sealed with its id); the
    old id is kept in the manifest as 'original'. Tags drive 'forget --keep-tag'
    and '--tag' filters.

    \b
    Examples:
      drkit tag 2b9418cf --add before-upgrade
      drkit tag 2b9418cf 7f00aa12 --remove nightly
      drkit tag 2b9418cf --set keep --json
    """
    if not (add or remove or set_):
        raise UsageError("say what to change: --add TAG, --remove TAG or --set TAG")
    if state.config.repository.append_only:
        raise Refused("this host is configured append-only: it may not rewrite snapshots",
                      hint="change tags from the admin host")
    repo = open_repository(state, identity_path)
    out = []
    with repo.lock_for("tag"):
        for ref in dict.fromkeys(snapshot_ids):
            snap = repo.find_snapshot(ref)
            tags = new_tags(snap.tags, add=list(add), remove=list(remove), set_=list(set_) if set_ else None)
            new = retag(repo, snap, tags)
            out.append({"old_id": snap.id, "id": new.id, "short_id": new.short_id, "tags": new.tags})
            if not as_json:
                what = f"now {new.short_id}" if new.id != snap.id else "unchanged"
                state.say(f"snapshot {snap.short_id} ({snap.source}): tags {','.join(new.tags) or '-'} ({what})")
    changed = [str(o["old_id"]) for o in out if o["old_id"] != o["id"]]
    if changed:  # this host replaced those ids itself: not a rollback
        snaps = repo.list_snapshots(on_error=lambda *_: None)
        for line in check_and_remember(repo, state.state_dir, snapshots=snaps, forgotten=changed):
            click.echo(f"warning: {line}", err=True)
    if as_json:
        state.emit_json(out)
