"""``drkit upgrade-format``: make a version-1 or version-2 repository version 3."""

from __future__ import annotations

from pathlib import Path

from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import identity_option, load_identity_for, open_repository, passphrase
from drkit.errors import Refused


@cli.command("upgrade-format")
@identity_option
@pass_state
def upgrade_format_cmd(state: CliState, identity_path: Path | None) -> None:
    """Upgrade a repository to format version 3 (docs/format.md).

    Version 3 stores the chunks of many small files in groups, sealed and verified
    once each (a first backup of many small files uses about a quarter less CPU, and
    the repository is smaller). Version 2,
    which a version-1 repository gets too, authenticates the config and the key slots
    with the repository key, refuses a config rolled back to an older version, and
    binds each new pack's trailer to the pack. Nothing is re-encrypted: stored packs
    stay as they are and are read as before. Takes an exclusive lock. drkit releases
    that read only older versions cannot open the repository afterwards. Passphrase
    slots other than the one used here keep their version until re-added ('drkit key
    add', then 'drkit key remove' the old one).

    \b
    Examples:
      drkit upgrade-format
      drkit upgrade-format --identity /root/drkit-identity.json   (recipient mode)
    """
    if state.config.repository.append_only:
        raise Refused("this host is configured append-only: it may not rewrite the config or key slots",
                      hint="run upgrade-format from the admin host")
    repo = open_repository(state, identity_path)
    before = repo.version
    secret = None if load_identity_for(state, identity_path) is not None else passphrase(state).reveal()
    with repo.lock_for("upgrade-format"):
        left = repo.upgrade_format(secret)
    if before >= repo.version:
        state.say(f"repository {repo.config['id'][:8]} is already format version {before}")
    else:
        state.say(f"repository {repo.config['id'][:8]} upgraded from format version {before} to {repo.version}")
    for key_id in left:
        state.say(f"key slot {key_id[:8]} is still version 1: re-add its passphrase ('drkit key add') and remove it")
