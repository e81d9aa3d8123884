"""The one home for running external programs (git, etcdctl, k3s, sqlite3 ...).

Every subprocess drkit starts goes through :func:`run` (or :func:`popen` for
streaming), so that all of them

- have a timeout (no hung backup waits forever);
- never put a secret in an error message or a log line: every string given in
  ``redact=`` is replaced by ``***`` in the command line and in the stderr tail
  that a :class:`CommandFailed` carries;
- fail with a one-line :class:`~drkit.errors.DrkitError` (command, exit status and
  the last lines of stderr) instead of a ``CalledProcessError`` traceback.

Secrets belong in ``env=`` or ``input=``, never in ``cmd``; ``redact=`` is the
second line of defence for values that a program echoes back on stderr.

Children get a scrubbed environment: only :data:`BASE_ENV` (path, home, locale,
time zone, temp dir, CA bundles, proxies, the SSH agent socket) from drkit's own,
plus what the caller passes in ``env=`` for that child. The passphrase
(``DRKIT_PASSWORD``...), cloud keys and tokens in drkit's environment never reach a
child. ``inherit_env=True`` passes everything: only for the operator's own commands
(runbook steps, which may run ``drkit`` themselves).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from drkit.errors import DrkitError, UsageError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0
"""Seconds a command may run unless the caller says otherwise."""

STDERR_TAIL_LINES = 5


class CommandFailed(DrkitError):
    """{message}"""

    def __init__(
        self,
        message: str,
        *,
        cmd: str,
        returncode: int | None,
        stderr_tail: str,
        hint: str | None = None,
    ) -> None:
        self.cmd = cmd
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        super().__init__(hint=hint, message=message)


class CommandTimeout(CommandFailed):
    """{message}"""


class ProgramNotFound(UsageError):
    """{message}"""


@dataclass(frozen=True)
class Result:
    """What a finished command produced."""

    cmd: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        """stdout decoded as UTF-8 (undecodable bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")

    @property
    def err_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")


def redact_text(text: str, secrets: Sequence[str | bytes | None]) -> str:
    """Return *text* with every non-empty secret replaced by ``***``."""
    for secret in secrets:
        if not secret:
            continue
        value = secret.decode("utf-8", "replace") if isinstance(secret, bytes) else str(secret)
        if value:
            text = text.replace(value, "***")
    return text


def format_cmd(cmd: Sequence[str | os.PathLike[str]], secrets: Sequence[str | bytes | None] = ()) -> str:
    """The command line as a shell would show it, with secrets redacted."""
    return redact_text(shlex.join(str(c) for c in cmd), secrets)


def _tail(data: bytes | str | None, secrets: Sequence[str | bytes | None]) -> str:
    if not data:
        return ""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return redact_text(" | ".join(lines[-STDERR_TAIL_LINES:]), secrets)


def which(program: str, *, hint: str | None = None) -> str:
    """Return the full path of *program*; raise :class:`ProgramNotFound` if missing."""
    found = shutil.which(program)
    if found is None:
        for extra in ("/usr/sbin", "/sbin", "/usr/local/bin", "/usr/local/sbin"):
            candidate = os.path.join(extra, program)
            if os.access(candidate, os.X_OK):
                found = candidate
                break
    if found is None:
        raise ProgramNotFound(
            f"program {program!r} not found on PATH",
            hint=hint or f"install {program} (scripts/install-system-deps.sh lists the packages)",
        )
    return found


BASE_ENV = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO",
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "SSH_AUTH_SOCK",
})
"""Variables of drkit's environment every child may see (and ``LC_*``)."""


def child_env(env: Mapping[str, str] | None = None, *, replace_env: bool = False,
              inherit_env: bool = False) -> dict[str, str]:
    """The environment of a child: :data:`BASE_ENV` and ``LC_*`` from this process
    (everything with *inherit_env*), then *env* on top (*env* alone with *replace_env*)."""
    if replace_env:
        return dict(env or {})
    if inherit_env:
        merged = dict(os.environ)
    else:
        merged = {k: v for k, v in os.environ.items() if k in BASE_ENV or k.startswith("LC_")}
    merged.update(env or {})
    return merged


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    replace_env: bool = False,
    inherit_env: bool = False,
    input: bytes | str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    redact: Sequence[str | bytes | None] = (),
    check: bool = True,
    stdout: IO[bytes] | int | None = None,
    hint: str | None = None,
) -> Result:
    """Run *cmd* to completion and return its :class:`Result`.

    - *env* is added to a scrubbed copy of the current environment (see
      :func:`child_env`; ``replace_env=True``: used alone; ``inherit_env=True``: on
      top of the whole environment).
    - *input* is written to stdin (str is UTF-8 encoded); stdin is otherwise /dev/null,
      so a program that prompts fails instead of hanging.
    - *stdout*: a binary file object or fd to write stdout to instead of capturing it
      (``Result.stdout`` is then empty).
    - *check*: a non-zero exit raises :class:`CommandFailed` (message holds the redacted
      command, the status and the stderr tail; *hint* is attached).

    Raises :class:`ProgramNotFound` when the program does not exist,
    :class:`CommandTimeout` after *timeout* seconds (the process is killed).
    """
    argv = [os.fspath(c) for c in cmd]
    shown = format_cmd(argv, redact)
    data = input.encode() if isinstance(input, str) else input
    log.debug("run: %s", shown)
    try:
        proc = subprocess.run(
            argv,
            input=data,
            stdin=None if data is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=timeout,
            env=child_env(env, replace_env=replace_env, inherit_env=inherit_env),
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError as exc:
        if cwd is not None and not Path(cwd).is_dir():
            raise UsageError(f"working directory {os.fspath(cwd)} does not exist") from None
        raise ProgramNotFound(
            f"program {argv[0]!r} not found",
            hint=hint or f"install {Path(argv[0]).name} (see scripts/install-system-deps.sh)",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        tail = _tail(exc.stderr, redact)
        raise CommandTimeout(
            f"command timed out after {timeout:g}s: {shown}" + (f" ({tail})" if tail else ""),
            cmd=shown,
            returncode=None,
            stderr_tail=tail,
            hint=hint,
        ) from None
    result = Result(tuple(argv), proc.returncode, proc.stdout or b"", proc.stderr or b"")
    if check and proc.returncode != 0:
        tail = _tail(proc.stderr, redact)
        raise CommandFailed(
            f"command failed (exit {proc.returncode}): {shown}" + (f": {tail}" if tail else ""),
            cmd=shown,
            returncode=proc.returncode,
            stderr_tail=tail,
            hint=hint,
        )
    return result


class Stream:
    """A running command whose stdout is read as a stream (see :func:`popen`).

    Use as a context manager; leaving the block waits for the process (killing it
    after *timeout*) and raises :class:`CommandFailed` if it exited non-zero and the
    block itself did not raise.
    """

    def __init__(self, proc: subprocess.Popen[bytes], shown: str, timeout: float | None,
                 redact: Sequence[str | bytes | None], hint: str | None, errfile: IO[bytes]) -> None:
        self._proc = proc
        self._errfile = errfile
        self._shown = shown
        self._timeout = timeout
        self._redact = redact
        self._hint = hint
        assert proc.stdout is not None
        self.stdout: IO[bytes] = proc.stdout

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.finish(raise_on_error=exc_type is None)

    def _read_err(self) -> bytes:
        try:
            self._errfile.seek(0)
            data = self._errfile.read()
        finally:
            self._errfile.close()
        return data

    def finish(self, *, raise_on_error: bool = True) -> int:
        """Wait for the process; return its exit status (see class doc for raising)."""
        proc = self._proc
        try:
            self.stdout.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=self._timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            err = self._read_err()
            if raise_on_error:
                raise CommandTimeout(
                    f"command timed out after {self._timeout:g}s: {self._shown}",
                    cmd=self._shown, returncode=None, stderr_tail=_tail(err, self._redact), hint=self._hint,
                ) from None
            return -1
        err = self._read_err()
        if raise_on_error and proc.returncode != 0:
            tail = _tail(err, self._redact)
            raise CommandFailed(
                f"command failed (exit {proc.returncode}): {self._shown}" + (f": {tail}" if tail else ""),
                cmd=self._shown, returncode=proc.returncode, stderr_tail=tail, hint=self._hint,
            )
        return proc.returncode


def popen(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    replace_env: bool = False,
    inherit_env: bool = False,
    cwd: str | os.PathLike[str] | None = None,
    redact: Sequence[str | bytes | None] = (),
    hint: str | None = None,
) -> Stream:
    """Start *cmd* with stdout as a pipe for streaming large output.

    *timeout* bounds the wait after stdout has been consumed. stderr is captured
    (redacted in errors); stdin is /dev/null. Raises :class:`ProgramNotFound`.
    """
    argv = [os.fspath(c) for c in cmd]
    shown = format_cmd(argv, redact)
    log.debug("popen: %s", shown)
    # stderr goes to a temporary file, not a pipe: a chatty program must not block
    # on a full stderr pipe while the caller is still reading stdout.
    errfile = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errfile,
            env=child_env(env, replace_env=replace_env, inherit_env=inherit_env),
            cwd=cwd,
        )
    except FileNotFoundError as exc:
        errfile.close()
        raise ProgramNotFound(
            f"program {argv[0]!r} not found",
            hint=hint or f"install {Path(argv[0]).name} (see scripts/install-system-deps.sh)",
        ) from exc
    return Stream(proc, shown, timeout, redact, hint, errfile)
