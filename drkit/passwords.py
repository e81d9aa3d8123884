"""Where the repository passphrase comes from (never argv, never logged).

Exactly one of these may be set; two is an error (borg's rule, so a stale variable
cannot silently win)::

    DRKIT_PASSWORD            the passphrase itself
    DRKIT_PASSWORD_FILE       a file whose first line is the passphrase
    DRKIT_PASSWORD_COMMAND    a command (run without a shell) that prints it
    repository.password_file / repository.password_command   the same, in the config

With none set and a terminal attached, drkit asks for it. New passphrases (``drkit key
add``) come from ``DRKIT_NEW_PASSWORD`` / ``DRKIT_NEW_PASSWORD_FILE`` or a prompt.
"""

from __future__ import annotations

import functools
import getpass
import shlex
import sys
from pathlib import Path
from typing import Callable

from drkit.config import Environment, RepositoryConfig
from drkit.errors import PassphraseError
from drkit.redact import check_private_file


class Secret:
    """A secret string that never shows itself in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        from drkit.redact import register

        self._value = value
        register(value)  # from now on it is masked in every log line and error

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def _read_file(path: Path, what: str) -> str:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PassphraseError(f"{what}: {path} does not exist", hint=f"create it (chmod 600 {path})") from None
    except OSError as exc:
        raise PassphraseError(f"{what}: cannot read {path}: {exc.strerror}") from None
    check_private_file(path, what)
    line = text.splitlines()[0] if text else ""
    if not line:
        raise PassphraseError(f"{what}: {path} is empty")
    return line


def _run_command(command: str, what: str) -> str:
    from drkit.errors import DrkitError
    from drkit.proc import run

    try:
        result = run(shlex.split(command), timeout=60, hint=f"check {what}")
    except PassphraseError:
        raise
    except DrkitError as exc:  # a failing command is a passphrase problem, not a bug (exit 2, not 1)
        raise PassphraseError(f"{what} failed: {exc.message}", hint=f"run the command by hand to see why; check {what}") from None
    except ValueError as exc:  # shlex: unbalanced quotes
        raise PassphraseError(f"{what}: cannot parse the command: {exc}") from None
    line = result.text.splitlines()[0] if result.text else ""
    if not line:
        raise PassphraseError(f"{what}: the command printed nothing")
    return line


def resolve_passphrase(
    env: Environment,
    repo: RepositoryConfig | None,
    *,
    interactive: bool,
    confirm: bool = False,
    prefix: str = "DRKIT_PASSWORD",
    prompt: str = "repository passphrase: ",
) -> Secret:
    """Return the passphrase from exactly one configured place, or a prompt.

    The places are ``{prefix}``, ``{prefix}_FILE``, ``{prefix}_COMMAND`` in *env*, and
    *repo*'s ``password_file`` / ``password_command`` when a repository config is given.

    Raises PassphraseError when two places are set, a file/command fails, or nothing
    is set and there is no terminal to ask on."""
    # (where, how to read it) for every place that is set
    candidates: list[tuple[str, Callable[[], str]]] = []
    readers: list[tuple[str, Callable[[str], str]]] = [
        (prefix, str),
        (f"{prefix}_FILE", lambda v: _read_file(Path(v), f"{prefix}_FILE")),
        (f"{prefix}_COMMAND", lambda v: _run_command(v, f"{prefix}_COMMAND")),
    ]
    for name, read in readers:
        value = env.get(name)
        if value:
            candidates.append((name, functools.partial(read, value)))
    if repo is not None:
        if repo.password_file:
            path = Path(repo.password_file)
            candidates.append(("repository.password_file", lambda: _read_file(path, "repository.password_file")))
        if repo.password_command:
            command = repo.password_command
            candidates.append(("repository.password_command", lambda: _run_command(command, "repository.password_command")))
    if len(candidates) > 1:
        raise PassphraseError(
            "the passphrase is set in more than one place: " + " and ".join(c[0] for c in candidates),
            hint="keep exactly one of them",
        )
    if candidates:
        return Secret(candidates[0][1]())
    if not interactive or not sys.stdin.isatty():
        places = f"{prefix}, {prefix}_FILE or {prefix}_COMMAND"
        if repo is not None:
            places = f"{prefix}, {prefix}_FILE, {prefix}_COMMAND, repository.password_file or repository.password_command"
        raise PassphraseError(f"no passphrase given (set {prefix}, {prefix}_FILE or {prefix}_COMMAND)",
                              hint=f"set exactly one of {places}")
    value = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != value:
        raise PassphraseError("the two passphrases differ")
    if not value:
        raise PassphraseError("empty passphrase")
    return Secret(value)

