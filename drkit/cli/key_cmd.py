"""``drkit key add|list|remove``: manage passphrase key slots."""

from __future__ import annotations

from pathlib import Path

import click

from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import open_repository
from drkit.passwords import resolve_passphrase


@cli.group("key")
def key_group() -> None:
    """Manage the passphrases that open the repository.

    Each passphrase wraps the same master key in its own slot, so adding or
    removing one never re-encrypts data. To rotate: 'key add' the new one, then
    open with it and 'key remove' the old slot.
    """


@key_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_state
def key_list(state: CliState, as_json: bool) -> None:
    """List key slots (the one that opened the repository is marked *).

    \b
    Examples:
      drkit key list
      drkit key list --json
    """
    repo = open_repository(state)
    keys = repo.list_keys()
    if as_json:
        state.emit_json(keys)
        return
    state.say(f"  {'ID':<9} {'KIND':<11} {'CREATED':<20} {'USER@HOST':<30} LABEL")
    for k in keys:
        mark = "*" if k["current"] else " "
        who = f"{k['user']}@{k['host']}" if k.get("user") else ""
        state.say(f"{mark} {k['id'][:8]:<9} {k['kind']:<11} {str(k['created'])[:19]:<20} {who:<30} {k['label']}")


@key_group.command("add")
@click.option("--label", default="", help="A note to recognise the slot by (e.g. 'offsite admin').")
@pass_state
def key_add(state: CliState, label: str) -> None:
    """Add a passphrase (from DRKIT_NEW_PASSWORD / _FILE / _COMMAND, or asked twice).

    \b
    Examples:
      DRKIT_NEW_PASSWORD_FILE=/root/new-pass drkit key add --label backup-2
      drkit key add   (asks twice on a terminal)
    """
    repo = open_repository(state)
    new = resolve_passphrase(state.env, None, interactive=state.interactive, confirm=True,
                             prefix="DRKIT_NEW_PASSWORD", prompt="new passphrase: ")
    key_id = repo.add_key(new.reveal(), label)
    state.say(f"added key slot {key_id[:8]}")


@key_group.command("remove")
@click.argument("key_id")
@pass_state
def key_remove(state: CliState, key_id: str) -> None:
    """Remove a key slot by id (prefix). The slot in use cannot be removed.

    \b
    Examples:
      drkit key remove 3f2a91c0
    """
    repo = open_repository(state)
    removed = repo.remove_key(key_id)
    state.say(f"removed key slot {removed[:8]}")


@key_group.command("generate-identity")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True, metavar="FILE", help="Where to write the identity (0600; never overwritten).")
@click.option("--protect", is_flag=True, help="Encrypt the file with a passphrase (DRKIT_IDENTITY_PASSWORD[_FILE|_COMMAND] or a prompt).")
@pass_state
def key_generate_identity(state: CliState, output: Path, protect: bool) -> None:
    """Create an X25519 identity for recipient mode and print its recipient.

    Keep FILE on the admin host (or offline), never on the node being backed up.
    Give the printed recipient to 'drkit init --recipient' on the backup host.

    \b
    Examples:
      drkit key generate-identity --output /root/drkit-identity.json
      drkit key generate-identity --output id.json --protect
    """
    from drkit.repository.identity import generate_identity, write_identity

    secret = None
    if protect:
        secret = resolve_passphrase(state.env, None, interactive=state.interactive, confirm=True,
                                    prefix="DRKIT_IDENTITY_PASSWORD", prompt="identity passphrase: ").reveal()
    identity = generate_identity()
    write_identity(output, identity, secret)
    click.echo(identity.recipient)
    if not state.quiet:
        click.echo(f"identity written to {output} (keep it off the backup host)", err=True)
