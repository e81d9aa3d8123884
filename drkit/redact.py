"""Secret hygiene: keep passphrases, tokens and keys out of logs, errors and files.

Three lines of defence, all in this module:

1. :class:`drkit.passwords.Secret` holds a secret value and prints as ``***``;
   :func:`register` accepts it (anything with ``reveal()``) as well as plain values.
2. A process-wide registry of known secret values (:func:`register`). :func:`redact`
   replaces every registered value (and its URL-encoded form) with ``***``, and masks
   credential-shaped text even when the value was never registered: the password in
   ``scheme://user:password@host``, and ``password=...``/``secret_access_key: ...``
   style assignments.
3. :func:`install_log_redaction` makes every log record (any logger, any level)
   redacted *when it is created*, so handlers, formatters, pytest's ``caplog`` and the
   JSON formatter all only ever see redacted text; exception text (``--debug``
   tracebacks) is redacted too. The CLI also passes every error message it prints
   through :func:`redact`.

:func:`check_private_file` warns (one line, with the ``chmod`` to run) when a config,
key or password file is readable by group or others.

Redaction is best effort for values it does not know; secrets still belong in env,
files or stdin, never in argv (see :mod:`drkit.proc`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
import traceback
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MASK = "***"

MIN_SECRET_LENGTH = 4
"""Shorter values are not registered: masking every "1" or "ab" would mangle every log
line and number, and a secret that short protects nothing anyway."""

SECRET_ENV_VARS = (
    "DRKIT_PASSWORD",
    "DRKIT_NEW_PASSWORD",
    "DRKIT_TO_PASSWORD",
    "DRKIT_IDENTITY",
    "DRKIT_IDENTITY_PASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "RESTIC_PASSWORD",
    "BORG_PASSPHRASE",
    "GITHUB_TOKEN",
    "GIT_PASSWORD",
    "KUBE_TOKEN",
)
"""Environment variables whose values are registered as secrets by :func:`register_env`."""

_SECRET_KEY_RE = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|credential|private[_-]?key|api[_-]?key|session[_-]?key)",
    re.IGNORECASE,
)
_NOT_SECRET_KEY_RE = re.compile(
    r"(_file|_path|_command|_cmd|file|_id|_env|user|_name|name|_namespace|_label|_labels|_selector"
    r"|_encryption|_type|_mode|_ttl|_age|_length|_count)$",
    re.IGNORECASE,
)

# scheme://user:password@host -> scheme://user:***@host
_URL_USERINFO_RE = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s/]+)(?P<post>@)")
# password=xyz, secret_access_key="xyz", "token": "xyz" (a bare YAML-style "key: value" is
# left alone: that is how config errors name keys)
_SECRET_WORDS = r"[\w-]*(?:password|passwd|passphrase|secret|token|api_?key)[\w-]*"
_ASSIGN_RE = re.compile(
    r"(?P<key>\b" + _SECRET_WORDS + r"[\"']?\s*=\s*[\"']?|[\"']" + _SECRET_WORDS + r"[\"']\s*:\s*[\"'])"
    r"(?P<val>[^\s\"',;&}]+)",
    re.IGNORECASE,
)
_AUTH_HEADER_RE = re.compile(r"(?P<key>\bAuthorization\s*[:=]\s*(?:Bearer|Basic|AWS4-HMAC-SHA256)?\s*)(?P<val>[^\s\"',]+)", re.IGNORECASE)


class SecretRegistry:
    """A thread-safe set of secret strings; :meth:`redact` masks all of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: Any) -> None:
        """Register *value* (str, bytes, or a Secret: anything with ``reveal()``) and its
        URL-encoded forms. Empty values are ignored. Idempotent."""
        if hasattr(value, "reveal"):
            value = value.reveal()
        if not isinstance(value, (str, bytes)):
            return
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                return  # binary key material never appears in text as-is
        value = value.strip("\r\n") or value  # a password file's trailing newline
        if len(value) < MIN_SECRET_LENGTH:
            return
        forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value),
                 json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
        with self._lock:
            if forms <= self._values:
                return
            self._values |= {f for f in forms if f}
            # longest first, so a secret containing another is masked whole
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def clear(self) -> None:
        """Forget every registered value (tests only)."""
        with self._lock:
            self._values.clear()
            self._pattern = None

    def __len__(self) -> int:
        return len(self._values)

    def redact(self, text: str) -> str:
        """*text* with every registered value and every credential-shaped string masked."""
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(MASK, text)
        text = _URL_USERINFO_RE.sub(lambda m: m["pre"] + MASK + m["post"], text)
        text = _ASSIGN_RE.sub(_mask_assignment, text)
        text = _AUTH_HEADER_RE.sub(lambda m: m["key"] + MASK, text)
        return text


def _mask_assignment(m: re.Match[str]) -> str:
    name = re.search(r"[\w-]+", m["key"])
    if m["val"] == MASK or (name and _NOT_SECRET_KEY_RE.search(name.group(0))):
        return m.group(0)
    return m["key"] + MASK


REGISTRY = SecretRegistry()


def register(value: Any) -> None:
    """Register a secret value for redaction everywhere (process-wide, idempotent)."""
    REGISTRY.add(value)


def redact(text: object) -> str:
    """``str(text)`` with every known secret and credential-shaped string replaced by ``***``."""
    return REGISTRY.redact(text if isinstance(text, str) else str(text))


def register_env(env: Mapping[str, str]) -> None:
    """Register the values of the secret-carrying variables in *env* (:data:`SECRET_ENV_VARS`)."""
    for name in SECRET_ENV_VARS:
        register(env.get(name))


def is_secret_key(key: str) -> bool:
    """True for config keys that hold a secret value (``secret_access_key``, ``password``),
    false for keys that only point at one (``password_file``, ``access_key_id``)."""
    return bool(_SECRET_KEY_RE.search(key)) and not _NOT_SECRET_KEY_RE.search(key)


def register_mapping_secrets(data: Any) -> int:
    """Walk a parsed config (dicts/lists) and register the values of secret-named keys.

    Returns how many values were registered. Used on the whole config document so that
    an S3 ``secret_access_key`` or an SFTP ``password`` written in the config never
    reaches a log line.
    """
    count = 0
    if isinstance(data, Mapping):
        for key, value in data.items():
            if isinstance(key, str) and is_secret_key(key) and isinstance(value, (str, bytes)):
                register(value)
                count += 1
            else:
                count += register_mapping_secrets(value)
    elif isinstance(data, (list, tuple)):
        for item in data:
            count += register_mapping_secrets(item)
    return count


# --- logging -----------------------------------------------------------------------


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redact a log record in place: message (args merged), exception text, stack, and
    string ``extra=`` fields. Idempotent. Returns the record."""
    if not getattr(record, "_drkit_redacted", False):
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep what we can show
            message = f"{record.msg!s} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        record._drkit_redacted = True
    if record.exc_info and not record.exc_text:
        record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    for key, value in list(record.__dict__.items()):
        if key not in _STANDARD_RECORD_KEYS and isinstance(value, str):
            setattr(record, key, redact(value))
    return record


_STANDARD_RECORD_KEYS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record (never drops one). Attach to handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_install_lock = threading.Lock()
_installed = False


def install_log_redaction() -> None:
    """Redact every log record of this process at creation (idempotent).

    Wraps the logging record factory and ``Logger.makeRecord`` (for ``extra=`` fields),
    so records of every logger (drkit's, boto3's, paramiko's) are redacted before any
    handler, filter or formatter sees them.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return redact_record(previous(*args, **kwargs))

        factory._drkit_redacting = True  # type: ignore[attr-defined]  # a mark on a function object, read back by getattr
        logging.setLogRecordFactory(factory)
        # extra= fields are set on the record after the factory ran: redact them too
        make_record = logging.Logger.makeRecord

        def redacting_make_record(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
            return redact_record(make_record(self, *args, **kwargs))

        logging.Logger.makeRecord = redacting_make_record  # type: ignore[method-assign]  # the one patch of logging, on purpose
        _installed = True


def format_exception(exc: BaseException) -> str:
    """A full traceback of *exc*, redacted (what ``--debug`` prints)."""
    return redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


# --- file permissions --------------------------------------------------------------


def exposed_mode(path: Path) -> int | None:
    """The file's permission bits if group or others may read it, else None.

    None too when the file does not exist (the caller reports that separately).
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    return mode if mode & (stat.S_IRGRP | stat.S_IROTH) else None


def check_private_file(path: Path | str, what: str, *, logger: logging.Logger | None = None) -> str | None:
    """Warn (one log line) when *path* is readable by group or others.

    *what* names the file ("config file", "password file"). Returns the warning text,
    or None when the file is private (or missing). Never raises.
    """
    path = Path(path)
    mode = exposed_mode(path)
    if mode is None:
        return None
    who = " and ".join(w for w, bit in (("group", stat.S_IRGRP), ("others", stat.S_IROTH)) if mode & bit)
    text = f"{what} {path} is readable by {who} (mode {mode:04o}); it may hold secrets: run 'chmod 600 {path}'"
    (logger or log).warning(text)
    return text


def check_private_files(paths: Iterable[tuple[Path | str | None, str]], *, logger: logging.Logger | None = None) -> list[str]:
    """:func:`check_private_file` for each (path, what) pair; None paths are skipped."""
    out = []
    for path, what in paths:
        if path is not None:
            warning = check_private_file(path, what, logger=logger)
            if warning:
                out.append(warning)
    return out


# --- wiring for the CLI --------------------------------------------------------------

PASSWORD_FILE_VARS = ("DRKIT_PASSWORD_FILE", "DRKIT_NEW_PASSWORD_FILE", "DRKIT_IDENTITY_PASSWORD_FILE")


def _first_line(path: Path) -> str | None:
    try:
        with open(path, "r", errors="replace") as fh:
            return fh.readline().rstrip("\r\n") or None
    except OSError:
        return None


def protect_config(config: Any, env: Mapping[str, str] | Any) -> list[str]:
    """What the CLI does once the config is loaded (never raises):

    - registers every secret-named value of the config (S3 secret keys, SFTP passwords)
      and the passphrase in a password file (``repository.password_file`` or
      ``DRKIT_PASSWORD_FILE``), so no log line or error shows them;
    - warns (one line each) when the config file or the password file is readable by
      group or others.

    Returns the warnings.
    """
    env_vars: Mapping[str, str] = getattr(env, "vars", env) or {}
    raw = getattr(config, "raw", None)
    try:
        dumped = raw.model_dump(mode="json") if raw is not None else {}
    except Exception:  # never let hygiene break a command
        dumped = {}
    register_mapping_secrets(dumped)
    files: list[tuple[Path | str | None, str]] = [(getattr(config, "path", None), "config file")]
    repo = getattr(config, "repository", None)
    pw_file = getattr(repo, "password_file", None)
    for path in [pw_file, *(env_vars.get(v) for v in PASSWORD_FILE_VARS)]:
        if path:
            register(_first_line(Path(path)))
    # password files are checked by drkit.passwords when it reads them
    return check_private_files(files)
