"""``drkit init``: create the repository named in the config."""

from __future__ import annotations

import click

from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import passphrase, storage_for
from drkit.repository.identity import read_recipient
from drkit.repository.repo import Repository


@cli.command("init")
@click.option("--recipient", metavar="RECIPIENT|FILE", help="Recipient mode: seal all content to this public key (see 'drkit key generate-identity').")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def init_cmd(state: CliState, recipient: str | None, as_json: bool) -> None:
    """Create a new, empty repository at repository.url.

    Refuses when a repository already exists there (exit 10). The passphrase is
    read from DRKIT_PASSWORD / _FILE / _COMMAND or asked twice on a terminal. Keep it
    somewhere safe off this node: without it the backups cannot be read.

    With --recipient the repository is write-only for this host: the passphrase
    here opens only what is needed to deduplicate and write new backups; data,
    manifests and file lists are sealed to the recipient, and only the matching
    identity (kept off the node) can restore, verify contents or prune.
    See docs/recipient-mode.md for the threat model.

    \b
    Examples:
      drkit init
      drkit init --recipient /root/drkit-identity.pub --json   (recipient mode)
    """
    storage = storage_for(state)
    if Repository.exists(storage):
        from drkit.errors import RepositoryExists

        raise RepositoryExists(url=storage.url)
    recipient_key = read_recipient(recipient) if recipient else None
    secret = passphrase(state, confirm=True)
    cfg = state.config.repository
    repo = Repository.init(
        storage,
        secret.reveal(),
        compression_level=cfg.zstd_level(),
        pack_size=cfg.pack_size_mib * 1024 * 1024,
        recipient=recipient_key,
    )
    if as_json:
        state.emit_json({"repository": storage.url, "id": repo.config["id"], "key": repo.key_id, "key_mode": repo.config["key_mode"]})
    else:
        state.say(f"created repository {repo.config['id'][:8]} at {storage.url} ({repo.config['key_mode']} mode)")
        state.say("keep the passphrase safe and off this node: without it no backup can be restored")
