"""SSH connections whose host key is verified: the one place drkit opens one (paramiko).

Used by the SFTP storage backend and by the runbook executor. Promises:

- The server's host key must already be in a known_hosts file (*known_hosts*, plus the
  system's ``/etc/ssh/ssh_known_hosts``): paramiko's ``RejectPolicy``, never auto-add. An
  unknown key raises :class:`HostKeyUnknown`, a changed key :class:`HostKeyChanged`; both
  messages carry the fingerprints (``SHA256:...``, as ``ssh-keygen -lf`` prints them) and a
  hint with the commands to run once the key was checked out of band.
- Every failure is a :class:`SshConnectError` subclass with a one-line message and a hint,
  so that each caller maps it to its own error (and exit code) in one place:
  :class:`HostKeyUnknown` / :class:`HostKeyChanged` (refused: a person must act),
  :class:`LoginFailed` (credentials: wrong key, passphrase-protected key, no key at all),
  :class:`HostUnreachable` (name, network, sshd: may go away by itself).
- The client is closed on every failure; on success the caller owns it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import paramiko

SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")


class SshConnectError(Exception):
    """Why an SSH connection could not be made: *message* (one line) and *hint*."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class HostKeyUnknown(SshConnectError):
    """The server's key is in no known_hosts file."""


class HostKeyChanged(SshConnectError):
    """The server offers another key than the one known_hosts holds for it."""


class LoginFailed(SshConnectError):
    """The server refused every key offered, or there was none to offer."""


class HostUnreachable(SshConnectError):
    """The name does not resolve, the port does not answer, or the SSH handshake failed."""


@dataclass(frozen=True)
class SshEndpoint:
    """Who logs in where."""

    user: str
    host: str
    port: int = 22

    @property
    def where(self) -> str:
        """``user@host:port`` (IPv6 in brackets), for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this host: ``host``, or ``[host]:port`` off port 22."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:...`` of a public key, as ``ssh-keygen -lf`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def connect(
    endpoint: SshEndpoint,
    *,
    known_hosts: Path,
    key_files: Sequence[str] = (),
    allow_agent: bool = True,
    look_for_keys: bool = True,
    timeout: float = 15,
    keepalive: int = 0,
    sock: Any = None,
    key_option: str = "the key file",
    prefer_ciphers: Sequence[str] = (),
) -> paramiko.SSHClient:
    """An authenticated :class:`paramiko.SSHClient` to *endpoint* whose host key is in
    *known_hosts* (or the system file). Keys: *key_files* that exist, then the agent and
    the default keys as allowed; hints name *key_option*, the setting that chooses the key.
    *prefer_ciphers* (those paramiko knows) move to the front of paramiko's own order,
    which follows them: a server offering none of them still gets a cipher it takes.
    Raises a :class:`SshConnectError` subclass."""
    import paramiko

    def make_transport(*args: Any, **kwargs: Any) -> paramiko.Transport:
        t = paramiko.Transport(*args, **kwargs)
        if prefer_ciphers:
            options = t.get_security_options()
            known = tuple(options.ciphers)
            options.ciphers = tuple(c for c in prefer_ciphers if c in known) + tuple(c for c in known if c not in prefer_ciphers)
        return t

    client = paramiko.SSHClient()
    if SYSTEM_KNOWN_HOSTS.is_file():
        with contextlib.suppress(Exception):
            client.load_system_host_keys(str(SYSTEM_KNOWN_HOSTS))
    if known_hosts.is_file():
        try:
            client.load_host_keys(str(known_hosts))
        except Exception as exc:
            raise HostKeyUnknown(f"cannot read known_hosts file {known_hosts}: {exc}",
                                 hint="fix or remove the malformed line") from None

    class Reject(paramiko.RejectPolicy):  # refuse, keeping the offered key for the message
        def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> NoReturn:
            raise _Unknown(key)

    client.set_missing_host_key_policy(Reject())
    keyscan = f"ssh-keyscan -p {endpoint.port} {endpoint.host} >> {known_hosts}"
    try:
        try:
            client.connect(
                endpoint.host,
                port=endpoint.port,
                username=endpoint.user,
                # paramiko takes a list of key files; types-paramiko declares str only.
                key_filename=[k for k in key_files if os.path.isfile(k)] or None,  # type: ignore[arg-type]
                allow_agent=allow_agent,
                look_for_keys=look_for_keys,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                sock=sock,
                transport_factory=make_transport,
            )
        except _Unknown as exc:
            raise HostKeyUnknown(
                f"unknown host key for {endpoint.host}:{endpoint.port} ({exc.key.get_name()} {fingerprint(exc.key)}); "
                f"not in {known_hosts}",
                hint=f"verify that fingerprint with the server's admin or on its console, then: {keyscan}",
            ) from None
        except paramiko.BadHostKeyException as exc:
            raise HostKeyChanged(
                f"host key for {endpoint.host}:{endpoint.port} has CHANGED: the server offers {fingerprint(exc.key)}, "
                f"which does not match {fingerprint(exc.expected_key)} in {known_hosts} (a reinstalled server, or "
                "someone in the middle)",
                hint="if the server was really reinstalled, verify its new fingerprint out of band, then remove the "
                f"old entry (ssh-keygen -f {known_hosts} -R '{endpoint.known_hosts_name}') and add the new one: {keyscan}",
            ) from None
        except paramiko.PasswordRequiredException:
            raise LoginFailed(
                f"the SSH key for {endpoint.where} is passphrase-protected",
                hint="load it into ssh-agent, or use a dedicated unencrypted key readable only by root",
            ) from None
        except paramiko.AuthenticationException as exc:
            tried = ", ".join(key_files) if key_files else "the agent and default keys"
            raise LoginFailed(
                f"authentication failed for {endpoint.where} (tried {tried}; server said: {exc})",
                hint=f"check {key_option} (or the ssh-agent) and that its public key is in the server's authorized_keys",
            ) from None
        except socket.gaierror as exc:
            raise HostUnreachable(f"cannot resolve host {endpoint.host!r}: {exc.strerror}",
                                  hint="check the host name") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if "No authentication methods available" in str(exc):
                raise LoginFailed(f"no SSH key to log in to {endpoint.where}",
                                  hint=f"set {key_option}, or load the key into ssh-agent") from None
            detail = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
            raise HostUnreachable(
                f"cannot reach {endpoint.where}: {detail}",
                hint="is the host up, sshd running, and the port right?",
            ) from None
    except SshConnectError:
        client.close()
        raise
    transport = client.get_transport()
    if keepalive and transport is not None:
        transport.set_keepalive(keepalive)
    return client


class _Unknown(Exception):
    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__("unknown host key")
        self.key = key
