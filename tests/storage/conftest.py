"""Fixtures for the storage tests: one moto S3 server and one sshd per session, a fresh
bucket / folder per test, and ``backend``: the same contract over every backend."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drkit.storage.base import Storage
from drkit.storage.local import LocalStorage
from drkit.storage.retry import RetryPolicy
from tests.conftest import require_binary
from tests.servers.s3 import MotoServer
from tests.servers.sshd import SshServer

FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, max_elapsed=30)


def sftp_options(server: SshServer, **extra: Any) -> dict[str, Any]:
    """``repository.sftp`` for a test server (its key and known_hosts, no agent)."""
    opts: dict[str, Any] = {
        "key_file": str(server.key_file),
        "known_hosts_file": str(server.known_hosts_file),
        "allow_agent": False,
        "ssh_config_file": None,
    }
    opts.update(extra)
    return {k: v for k, v in opts.items() if v is not None}


@dataclass
class Backend:
    """A fresh, empty storage plus a way to look at it from outside (bypassing drkit)."""

    kind: str
    storage: Storage
    raw_names: Callable[[], list[str]]
    """Every file/key under the repository root, temporaries included."""


@pytest.fixture(params=["local", "s3", "sftp"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = request.param
    if kind == "local":
        root = tmp_path / "repo"
        storage: Storage = LocalStorage(root)

        def raw() -> list[str]:
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    elif kind == "s3":
        from drkit.storage.s3 import S3Storage

        moto: MotoServer = request.getfixturevalue("moto_server")
        bucket = moto.new_bucket()
        storage = S3Storage(
            f"s3://{bucket}/repo", moto.options(multipart_threshold_mib=5, multipart_chunk_mib=5, concurrency=4)
        )
        client = moto.client()

        def raw() -> list[str]:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="repo/")
            return sorted(o["Key"][5:] for p in pages for o in p.get("Contents", []))

    else:
        from drkit.storage.sftp import SftpStorage

        server: SshServer = request.getfixturevalue("sshd")
        folder = f"repo-{secrets.token_hex(4)}"
        storage = SftpStorage(server.url(f"~/{folder}"), sftp_options(server))
        root = server.sftp_home / folder

        def raw() -> list[str]:
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    try:
        yield Backend(kind, storage, raw)
    finally:
        storage.close()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted under tmp_path (a real ENOSPC); skips where mounting is not allowed."""
    import subprocess

    mount = require_binary("mount")
    point = tmp_path / "tiny"
    point.mkdir()
    proc = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(point)], capture_output=True, text=True, timeout=20
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): full-disk test needs CAP_SYS_ADMIN")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=20)
