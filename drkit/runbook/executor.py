"""Where runbook commands run: this host (:class:`LocalExecutor`) or the target node over
SSH (:class:`SshExecutor`), behind one :class:`Executor` protocol.

Both executors run a step's shell script the same way::

    timeout -k 5 T [sudo -n --] /bin/sh -c PREAMBLE drkit-step SCRIPT

- ``timeout`` (coreutils) bounds the whole process group, on the node itself, so a hung
  command dies even when the SSH connection is fine.
- ``sudo -n`` when the step asks for it and the login user is not root: it fails at once
  (with sudo's message) instead of prompting when a password would be needed.
- The environment (including secrets) travels on **stdin**, one ``NAME=base64`` line
  each, ended by an empty line; PREAMBLE exports them and then execs SCRIPT with the rest
  of stdin. Secret values therefore never appear in any argv (``ps``), in sshd's
  ``AcceptEnv`` policy, or in sudo's environment filtering. Values lose trailing newlines.
- stderr is merged into stdout and streamed line by line to ``on_output``.

Files are copied to a temporary name next to the destination, fsynced, and renamed into
place (atomic), by the same wrapper, so ``sudo`` applies to the write too.

Local commands go through :mod:`drkit.proc`, the one home for subprocesses.
"""

from __future__ import annotations

import base64
import getpass
import os
import re
import secrets as _random
import shlex
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol

from drkit import proc, sshconnect
from drkit.errors import UsageError
from drkit.runbook.errors import HostKeyRejected, TargetUnreachable

OutputFn = Callable[[str], None]

KILL_GRACE = 5
"""Seconds ``timeout`` waits after TERM before KILL."""

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

PREAMBLE = (
    "exec 2>&1; "
    'while IFS= read -r l; do [ -n "$l" ] || break; '
    'export "${l%%=*}=$(printf %s "${l#*=}" | base64 -d)"; done; '
    'exec /bin/sh -c "$1"'
)

INSTALL_SCRIPT = (
    "set -e; "
    'd=$(dirname -- "$DRKIT_DEST"); mkdir -p -- "$d"; '
    't="$DRKIT_DEST.drkit-new"; trap \'rm -f -- "$t"\' EXIT; '
    'cp -T -- "$DRKIT_SRC" "$t"; chmod "$DRKIT_MODE" "$t"; sync -- "$t" 2>/dev/null || true; '
    'mv -fT -- "$t" "$DRKIT_DEST"; sync -- "$d" 2>/dev/null || true; '
    'if [ -n "$DRKIT_RM_SRC" ]; then rm -f -- "$DRKIT_SRC"; fi'
)


@dataclass(frozen=True)
class CommandResult:
    """What a command did. ``output`` is stdout and stderr merged (not yet redacted)."""

    returncode: int
    output: str
    timed_out: bool
    duration: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


class Executor(Protocol):
    """Runs shell scripts and writes files on one host."""

    description: str
    """'local' or 'user@host:port', for messages and the journal."""

    def run(
        self,
        cmd: str,
        *,
        timeout: float,
        sudo: bool = False,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        on_output: OutputFn | None = None,
    ) -> CommandResult:
        """Run *cmd* with ``/bin/sh``; never raises for a non-zero exit or a timeout."""
        ...

    def put_file(self, data: bytes | Path, dest: str, *, mode: int, sudo: bool = False, timeout: float = 300) -> None:
        """Atomically write *data* (bytes, or a local file) to *dest*, creating parent dirs.

        Raises :class:`~drkit.runbook.errors.StepFailed`-free :class:`UsageError` on failure.
        """
        ...

    def close(self) -> None: ...


def env_block(env: Mapping[str, str] | None) -> bytes:
    """The stdin header that carries *env* to PREAMBLE (see module doc)."""
    lines = []
    for key, value in (env or {}).items():
        if not _ENV_NAME.match(key):
            raise UsageError(f"bad environment variable name {key!r}")
        lines.append(f"{key}={base64.b64encode(value.encode()).decode()}\n")
    return ("".join(lines) + "\n").encode()


def wrap_argv(cmd: str, *, timeout: float, sudo: bool) -> list[str]:
    """The argv that runs *cmd* under timeout, sudo (if asked) and PREAMBLE."""
    prefix = ["sudo", "-n", "--"] if sudo else []
    return ["timeout", "-k", str(KILL_GRACE), f"{timeout:g}", *prefix, "/bin/sh", "-c", PREAMBLE, "drkit-step", cmd]


class _LineStream:
    """Splits a byte stream into lines for ``on_output`` and keeps the text."""

    MAX_KEEP = 1 << 20

    def __init__(self, on_output: OutputFn | None) -> None:
        self.on_output = on_output
        self.buf = b""
        self.parts: list[str] = []
        self.kept = 0

    def feed(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self._line(line.decode("utf-8", "replace"))

    def _line(self, text: str) -> None:
        self.parts.append(text)
        self.kept += len(text) + 1
        while self.kept > self.MAX_KEEP and len(self.parts) > 1:
            self.kept -= len(self.parts.pop(0)) + 1
        if self.on_output is not None:
            self.on_output(text)

    def close(self) -> str:
        if self.buf:
            self._line(self.buf.decode("utf-8", "replace"))
            self.buf = b""
        return "\n".join(self.parts)


def _timed_out(rc: int, started: float, timeout: float) -> bool:
    return rc in (124, 137) and time.monotonic() - started >= timeout - 0.5


class LocalExecutor:
    """Runs on this host, through :func:`drkit.proc.run`."""

    description = "local"

    def __init__(self, *, tmp_dir: str | None = None) -> None:
        self.is_root = os.geteuid() == 0
        self.tmp_dir = tmp_dir

    def run(
        self,
        cmd: str,
        *,
        timeout: float,
        sudo: bool = False,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        on_output: OutputFn | None = None,
    ) -> CommandResult:
        argv = wrap_argv(cmd, timeout=timeout, sudo=sudo and not self.is_root)
        lines = _LineStream(on_output)
        r_fd, w_fd = os.pipe()

        def pump() -> None:
            with os.fdopen(r_fd, "rb", buffering=0) as r:
                while True:
                    chunk = r.read(65536)
                    if not chunk:
                        break
                    lines.feed(chunk)

        reader = threading.Thread(target=pump, name="drkit-step-output", daemon=True)
        reader.start()
        started = time.monotonic()
        try:
            res = proc.run(
                argv, input=env_block(env) + (stdin or b""), stdout=w_fd, check=False,
                timeout=timeout + KILL_GRACE + 10, inherit_env=True,  # the operator's own steps (they run drkit)
            )
            rc, err = res.returncode, res.err_text
        except proc.CommandTimeout:
            rc, err = 124, ""
        finally:
            os.close(w_fd)
        reader.join(timeout=KILL_GRACE + 5)
        if err.strip():
            for line in err.rstrip("\n").split("\n"):
                lines._line(line)
        return CommandResult(rc, lines.close(), _timed_out(rc, started, timeout), time.monotonic() - started)

    def put_file(self, data: bytes | Path, dest: str, *, mode: int, sudo: bool = False, timeout: float = 300) -> None:
        tmp: str | None = None
        try:
            if isinstance(data, Path):
                src = str(data)
            else:
                fd, tmp = tempfile.mkstemp(prefix=".drkit-upload-", dir=self.tmp_dir)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                src = tmp
            res = self.run(
                INSTALL_SCRIPT, timeout=timeout, sudo=sudo,
                env={"DRKIT_SRC": src, "DRKIT_DEST": dest, "DRKIT_MODE": f"{mode:04o}", "DRKIT_RM_SRC": ""},
            )
            if not res.ok:
                raise UsageError(f"cannot write {dest} locally: {_tail(res.output)}")
        finally:
            if tmp is not None:
                os.unlink(tmp)

    def close(self) -> None:
        pass


def _tail(text: str, n: int = 3) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "no output"


@dataclass(frozen=True)
class SshTarget:
    """``user@host[:port]`` (IPv6 as ``user@[::1]:22``)."""

    user: str
    host: str
    port: int = 22

    @classmethod
    def parse(cls, text: str) -> "SshTarget":
        m = re.fullmatch(r"(?:(?P<user>[^@\s]+)@)?(?:\[(?P<h6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:@\s\[\]]+))(?::(?P<port>\d{1,5}))?", text)
        if m is None:
            raise UsageError(f"bad target {text!r}", hint="write it as user@host or user@host:port")
        port = int(m.group("port") or 22)
        if not 0 < port < 65536:
            raise UsageError(f"bad port in target {text!r}")
        return cls(m.group("user") or getpass.getuser(), m.group("h6") or m.group("host"), port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" + (f":{self.port}" if self.port != 22 else "")


class SshExecutor:
    """Runs on the target over SSH (paramiko).

    The host key must already be in *known_hosts* (RejectPolicy): an unknown or changed
    key raises :class:`HostKeyRejected` with what to check. Authentication uses
    *key_file* if given, else the SSH agent and the default keys.
    """

    def __init__(
        self,
        target: SshTarget,
        *,
        known_hosts: Path,
        key_file: Path | None = None,
        connect_timeout: float = 15,
        remote_tmp: str = "/tmp",
    ) -> None:
        from drkit.extras import require

        require("paramiko", "a runbook step on a remote host (SSH)")
        self.target = target
        self.description = str(target)
        self.remote_tmp = remote_tmp
        try:
            client = sshconnect.connect(
                sshconnect.SshEndpoint(target.user, target.host, target.port),
                known_hosts=known_hosts,
                key_files=[str(key_file)] if key_file else [],
                allow_agent=key_file is None,
                look_for_keys=key_file is None,
                timeout=connect_timeout,
                keepalive=30,  # long steps (volume restores) must not lose an idle NAT mapping
                key_option="--identity KEYFILE",
            )
        except (sshconnect.HostKeyUnknown, sshconnect.HostKeyChanged) as exc:
            raise HostKeyRejected(exc.message, hint=exc.hint) from None
        except sshconnect.SshConnectError as exc:
            raise TargetUnreachable(exc.message, hint=exc.hint) from None
        self.client = client
        uid = self._exec_simple("id -u").strip()
        self.is_root = uid == "0"

    def _exec_simple(self, cmd: str) -> str:
        res = self.run(cmd, timeout=30)
        if not res.ok:
            raise TargetUnreachable(f"'{cmd}' failed on {self.target}: {_tail(res.output)}")
        return res.output

    def run(
        self,
        cmd: str,
        *,
        timeout: float,
        sudo: bool = False,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        on_output: OutputFn | None = None,
    ) -> CommandResult:
        argv = wrap_argv(cmd, timeout=timeout, sudo=sudo and getattr(self, "is_root", False) is False)
        lines = _LineStream(on_output)
        started = time.monotonic()
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise TargetUnreachable(f"the SSH connection to {self.target} was lost")
        chan = transport.open_session(timeout=30)
        try:
            chan.set_combine_stderr(True)
            chan.settimeout(1.0)
            chan.exec_command(shlex.join(argv))
            payload = env_block(env) + (stdin or b"")
            if payload:
                chan.sendall(payload)
            chan.shutdown_write()
            deadline = started + timeout + KILL_GRACE + 15
            while True:
                try:
                    chunk = chan.recv(65536)
                except socket.timeout:
                    if time.monotonic() > deadline:
                        break
                    continue
                if not chunk:
                    break
                lines.feed(chunk)
            if chan.exit_status_ready() or chan.status_event.wait(max(0.0, deadline - time.monotonic())):
                rc = chan.recv_exit_status()
            else:
                rc = 124
        finally:
            chan.close()
        return CommandResult(rc, lines.close(), _timed_out(rc, started, timeout), time.monotonic() - started)

    def put_file(self, data: bytes | Path, dest: str, *, mode: int, sudo: bool = False, timeout: float = 300) -> None:
        tmp = f"{self.remote_tmp.rstrip('/')}/.drkit-upload-{_random.token_hex(8)}"
        sftp = self.client.open_sftp()
        try:
            with sftp.open(tmp, "wb") as f:
                f.chmod(0o600)
                f.set_pipelined(True)
                if isinstance(data, Path):
                    with open(data, "rb") as src:
                        shutil.copyfileobj(src, f, 1 << 20)
                else:
                    f.write(data)
        except (OSError, IOError) as exc:
            raise UsageError(f"cannot upload to {self.target}:{tmp}: {exc}") from None
        finally:
            sftp.close()
        res = self.run(
            INSTALL_SCRIPT, timeout=timeout, sudo=sudo,
            env={"DRKIT_SRC": tmp, "DRKIT_DEST": dest, "DRKIT_MODE": f"{mode:04o}", "DRKIT_RM_SRC": "1"},
        )
        if not res.ok:
            self.run('rm -f -- "$T"', timeout=30, env={"T": tmp})
            raise UsageError(f"cannot write {dest} on {self.target}: {_tail(res.output)}")

    def close(self) -> None:
        self.client.close()
