"""A real OpenSSH ``sshd`` on a free loopback port, for tests.

:func:`start_sshd` runs ``/usr/sbin/sshd -D -e -f CONFIG`` as a child process (never a
daemon, never the system service) with everything in a private temp directory:
its own host key, a client key pair in ``authorized_keys``, a ``known_hosts`` file that
trusts exactly that host key, and the SFTP subsystem (``internal-sftp``) starting in
``sftp_home`` so that home-relative SFTP paths (``sftp://user@host/~/repo``) land in the
temp directory instead of the real home of the current user.

The login user is the current user (root in CI): the private config sets
``PermitRootLogin prohibit-password`` and ``StrictModes no`` (the temp directory is not
owned the way sshd insists on), public-key authentication only.

Typical use::

    server = start_sshd(tmp_path)
    try:
        client = server.client()      # paramiko SSHClient, host key verified
        ...
    finally:
        server.stop()

or the ``sshd_server`` fixture in ``tests/servers/__init__.py``.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers.lifetime import dying_with_starter

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # compiled into Debian's sshd; must exist to start


class SshdStartError(RuntimeError):
    """sshd could not be started (the message carries its log)."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on *host* a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def keygen(path: Path, comment: str = "drkit-test") -> Path:
    """Create an unencrypted ed25519 key pair at *path* (and *path*.pub); return *path*."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        timeout=30,
    )
    path.chmod(0o600)
    return path


def known_hosts_line(host: str, port: int, pubkey_file: Path) -> str:
    """The known_hosts entry for *host*:*port* with the key in *pubkey_file*."""
    keytype, blob = pubkey_file.read_text().split()[:2]
    hostpart = host if port == 22 else f"[{host}]:{port}"
    return f"{hostpart} {keytype} {blob}\n"


@dataclass
class SshServer:
    """A running test sshd. ``stop()`` is idempotent."""

    host: str
    port: int
    user: str
    key_file: Path
    """Client private key accepted by the server (its ``.pub`` is in authorized_keys)."""
    known_hosts_file: Path
    """A known_hosts file trusting exactly this server's host key."""
    host_key_file: Path
    """The server's private host key (``.pub`` beside it)."""
    sftp_home: Path
    """The directory SFTP sessions start in (what ``~`` means over SFTP)."""
    workdir: Path
    log_file: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def url(self, path: str) -> str:
        """``sftp://USER@HOST:PORT/PATH`` for an absolute *path* or ``~/...``."""
        path = "/" + (path if path.startswith("~") else path.lstrip("/"))
        return f"sftp://{self.user}@{self.host}:{self.port}{path}"

    def client(self, **kwargs: Any) -> Any:
        """A connected ``paramiko.SSHClient`` that verified the host key (RejectPolicy)."""
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts_file))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            self.host,
            port=self.port,
            username=self.user,
            key_filename=str(self.key_file),
            allow_agent=False,
            look_for_keys=False,
            timeout=10,
            **kwargs,
        )
        return client

    def log(self) -> str:
        """sshd's log so far (useful in assertion messages)."""
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Terminate sshd and the sessions it forked; safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _write_config(
    workdir: Path, port: int, host: str, host_key: Path, authorized: Path, home: Path, sftp_args: str, extra: tuple[str, ...] = ()
) -> Path:
    config = workdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {host}",
                f"Port {port}",
                f"HostKey {host_key}",
                f"PidFile {workdir / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "X11Forwarding no",
                "AllowTcpForwarding no",
                "PrintMotd no",
                "UseDNS no",
                "MaxStartups 100:30:200",
                "MaxSessions 50",
                "LogLevel VERBOSE",
                f"Subsystem sftp internal-sftp {sftp_args} -d {home}".replace("  ", " "),
                *extra,
                "",
            ]
        )
    )
    config.chmod(0o600)
    return config


def _wait_banner(host: str, port: int, proc: subprocess.Popen[bytes], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def start_sshd(
    tmpdir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    attempts: int = 3,
    sftp_args: str = "",
    extra_config: tuple[str, ...] = (),
) -> SshServer:
    """Start a private sshd under *tmpdir* on a free port of *host*; wait until it answers.

    *sftp_args* go to ``internal-sftp`` (e.g. ``"-R"`` for a read-only SFTP server, whose
    writes fail with "permission denied" even for root); *extra_config* lines are added
    to sshd_config (e.g. ``"Ciphers aes128-ctr"``).

    Raises :class:`SshdStartError` (with sshd's log) if it does not come up, or
    FileNotFoundError if sshd is not installed (tests should call ``require_binary`` first).
    """
    if not os.path.exists(SSHD):
        raise FileNotFoundError(SSHD)
    workdir = Path(tmpdir) / "sshd"
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    if not PRIVSEP_DIR.is_dir() and os.geteuid() == 0:
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    host_key = workdir / "ssh_host_ed25519_key"
    if not host_key.exists():
        keygen(host_key, "drkit-test-host")
    user_key = workdir / "id_ed25519"
    if not user_key.exists():
        keygen(user_key, "drkit-test-client")
    authorized = workdir / "authorized_keys"
    authorized.write_text((user_key.with_suffix(".pub")).read_text())
    authorized.chmod(0o600)
    home = workdir / "home"
    home.mkdir(exist_ok=True, mode=0o700)
    log_file = workdir / "sshd.log"

    last_log = ""
    for _ in range(attempts):
        port = free_port(host)
        config = _write_config(workdir, port, host, host_key, authorized, home, sftp_args, extra_config)
        log = open(log_file, "ab")
        try:
            proc = subprocess.Popen(
                dying_with_starter([SSHD, "-D", "-e", "-f", str(config)]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        if _wait_banner(host, port, proc, time.monotonic() + 10):
            known_hosts = workdir / "known_hosts"
            known_hosts.write_text(known_hosts_line(host, port, host_key.with_suffix(".pub")))
            return SshServer(
                host=host,
                port=port,
                user=getpass.getuser(),
                key_file=user_key,
                known_hosts_file=known_hosts,
                host_key_file=host_key,
                sftp_home=home,
                workdir=workdir,
                log_file=log_file,
                process=proc,
            )
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
        last_log = log_file.read_text(errors="replace")
    raise SshdStartError(f"sshd did not start on {host}:\n{last_log[-2000:]}")
