"""Errors a user can act on, each with a documented exit code.

Every error drkit raises on purpose derives from :class:`DrkitError`. The class
docstring's first line is the message template (borg's habit); ``hint`` says what to
do next. The CLI prints ``error: <message>`` and ``hint: <hint>`` on stderr and exits
with ``exit_code``; a traceback only appears with ``--debug``.

Exit codes (documented in README.md, stable across releases):

====  =====================================================
 0    success
 1    unexpected internal error (a bug: please report it)
 2    usage or configuration error
 3    repository missing (nothing at the configured URL)
 4    repository locked by another process
 5    wrong passphrase or key
 6    damage found (verify, restore of a damaged object)
 7    partial failure (some sources or files failed, others succeeded)
 8    storage unreachable or failing (network, permissions, full disk)
 9    refused to act (would overwrite, escape the target, K3s is running)
10    already exists (init on an existing repository)
130   interrupted (SIGINT/SIGTERM)
====  =====================================================
"""

from __future__ import annotations

import errno

from typing import Any, ClassVar

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_NO_REPOSITORY = 3
EXIT_LOCKED = 4
EXIT_WRONG_KEY = 5
EXIT_DAMAGE = 6
EXIT_PARTIAL = 7
EXIT_STORAGE = 8
EXIT_REFUSED = 9
EXIT_EXISTS = 10
EXIT_INTERRUPTED = 130


class DrkitError(Exception):
    """{message}"""

    exit_code: ClassVar[int] = EXIT_INTERNAL
    default_hint: ClassVar[str | None] = None

    outcome: object = None
    """What the command had done when it failed (a BackupRun, a CopyReport, a RestoreResult),
    set by the service that raises, so that the CLI can report the part that worked. The
    reader checks its type (``isinstance``); None when nothing was done."""

    def __init__(self, *args: Any, hint: str | None = None, **fields: Any) -> None:
        self.fields = fields
        self.args_ = args
        self.hint = hint if hint is not None else self.default_hint
        super().__init__(self.message)

    @property
    def message(self) -> str:
        template = (self.__doc__ or "{message}").strip().splitlines()[0]
        fields = dict(self.fields)
        if self.args_:
            fields.setdefault("message", " ".join(str(a) for a in self.args_))
        try:
            return template.format(**fields)
        except (KeyError, IndexError):
            return str(fields.get("message", template))

    def __str__(self) -> str:
        return self.message


class UsageError(DrkitError):
    """{message}"""

    exit_code = EXIT_USAGE


class MissingExtra(UsageError):
    """{what} needs the Python package {module}, which is not installed"""


class ConfigError(UsageError):
    """config error: {message}"""

    default_hint = "see config/drkit.example.yaml for an annotated example"

    def __init__(self, message: str, *, key: str | None = None, hint: str | None = None) -> None:
        self.key = key
        text = f"{key}: {message}" if key else message
        super().__init__(hint=hint, message=text)


class PassphraseError(UsageError):
    """{message}"""

    default_hint = (
        "set exactly one of DRKIT_PASSWORD, DRKIT_PASSWORD_FILE, DRKIT_PASSWORD_COMMAND, "
        "repository.password_file or repository.password_command"
    )


class RepositoryNotFound(DrkitError):
    """no drkit repository at {url}"""

    exit_code = EXIT_NO_REPOSITORY
    default_hint = "check repository.url, or create one with 'drkit init'"


class RepositoryExists(DrkitError):
    """a repository already exists at {url}"""

    exit_code = EXIT_EXISTS
    default_hint = "use it as it is, or point repository.url at an empty location"


class RepositoryLocked(DrkitError):
    """repository is locked {how} by {holder}"""

    exit_code = EXIT_LOCKED
    default_hint = (
        "wait for that run to finish; if it is dead, 'drkit unlock' removes stale locks"
    )


class LockLost(DrkitError):
    """the repository lock can no longer be trusted ({detail}); stopped before writing more"""

    exit_code = EXIT_LOCKED
    default_hint = (
        "another host may have taken the lock for stale meanwhile; check the storage connection, "
        "then run again (what was written so far is safe and is reused)"
    )


class WrongKey(DrkitError):
    """{message}"""

    exit_code = EXIT_WRONG_KEY

    def __init__(self, message: str = "wrong passphrase: no key slot of this repository opens with it", *, hint: str | None = None) -> None:
        super().__init__(hint=hint, message=message)

    default_hint = "check DRKIT_PASSWORD / the password file; 'drkit key list' shows the slots"


class IdentityRequired(DrkitError):
    """this repository's content is sealed to a recipient: reading it needs the identity"""

    exit_code = EXIT_WRONG_KEY
    default_hint = (
        "run this on the admin host with --identity FILE (or DRKIT_IDENTITY_FILE); "
        "a backup host holds only the recipient and can write backups, not read them"
    )


class IntegrityError(DrkitError):
    """damaged object {name}: {detail}"""

    exit_code = EXIT_DAMAGE
    default_hint = "run 'drkit verify --read-data' to see every damaged object and the snapshots it affects, then 'drkit repair'"


class DamageFound(DrkitError):
    """{count} problem(s) found in the repository"""

    exit_code = EXIT_DAMAGE
    default_hint = (
        "run 'drkit repair': it salvages what is intact, removes the damaged packs (keeping a local copy) "
        "and rewrites the affected snapshots without the lost files; then 'drkit backup'"
    )


class UnsafeToPrune(DrkitError):
    """prune refused: {detail}"""

    exit_code = EXIT_DAMAGE
    default_hint = (
        "nothing was deleted; run 'drkit verify' to see what is wrong, 'drkit rebuild-index' to index "
        "the packs from their own trailers, then prune again"
    )


class PartialFailure(DrkitError):
    """{message}"""

    exit_code = EXIT_PARTIAL


class NothingRead(DrkitError):
    """source {source!r} read nothing: {detail}"""

    exit_code = EXIT_PARTIAL
    default_hint = "check the source's paths (a typo? a disk not mounted?); no snapshot was stored for it"


class StorageError(DrkitError):
    """storage error: {message}"""

    exit_code = EXIT_STORAGE


class StorageFull(StorageError):
    """storage is full: {message}"""

    default_hint = "free space on the destination (or run 'drkit forget --prune'), then run again; nothing was half-written"


class ObjectNotFound(StorageError):
    """object {name} does not exist"""


class TransientStorageError(StorageError):
    """storage error: {message}

    A failure that may go away on its own (dropped connection, throttling, a 5xx, a
    checksum mismatch in transit): :class:`drkit.storage.retry.RetryingStorage` retries it.
    """


class RestoreTargetError(DrkitError):
    """cannot write the restore target {target}: {reason}"""

    exit_code = EXIT_STORAGE

    @classmethod
    def from_os(cls, exc: OSError, target: object) -> "RestoreTargetError":
        """The error for *exc*, raised while writing under *target*, with a hint for its errno."""
        code = exc.errno
        if code in (errno.ENOSPC, errno.EDQUOT):
            hint = "free space on the target's file system (or restore to another --target), then run again"
        elif code == errno.EROFS:
            hint = "the target is on a read-only file system: choose another --target, or remount it read-write"
        elif code in (errno.EACCES, errno.EPERM):
            hint = "run as a user that may write there (root to restore owners), or choose another --target"
        elif code in (errno.ENOENT, errno.ENOTDIR):
            hint = "the target changed while restoring (was part of it removed or replaced?): run the restore again"
        else:
            hint = "check the target's disk and file system (dmesg), or restore to another --target"
        reason = exc.strerror or str(exc)
        return cls(target=str(target), reason=reason, hint=hint + "; files not finished were removed, finished ones stay")


class Refused(DrkitError):
    """{message}"""

    exit_code = EXIT_REFUSED


class SnapshotNotFound(UsageError):
    """no snapshot matches {ref!r}{scope}"""

    default_hint = "'drkit snapshots' lists them"


class Interrupted(DrkitError):
    """interrupted"""

    exit_code = EXIT_INTERRUPTED
