"""Crash safety: SIGKILL a real `drkit backup` process at several points of its run.

Afterwards: `verify --read-data` passes, every earlier snapshot restores exactly, and
the next backup succeeds and reuses the data the killed run had already indexed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.foundation.conftest import Workspace, tree_state


def _count(root: Path, sub: str) -> int:
    d = root / sub
    return sum(1 for p in d.rglob("*") if p.is_file() and not p.name.startswith(".")) if d.exists() else 0


def _start_backup(ws: Workspace) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DRKIT_PASSWORD": "correct horse battery staple"}
    return subprocess.Popen(
        [sys.executable, "-m", "drkit", "-q", "-c", str(ws.config), "backup"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _kill_when(proc: subprocess.Popen[bytes], ready, timeout: float = 60) -> bool:
    """SIGKILL *proc* as soon as ready() holds; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("backup neither progressed nor finished")


@pytest.mark.slow
def test_sigkill_at_several_points_never_loses_data(ws: Workspace) -> None:
    # Small packs and an index after every pack make the interesting states frequent.
    ws.write_config(pack_size_mib=1, index_every_packs=2, workers=1)
    ws.ok("init")
    first = ws.ok("backup", "--json").json()["snapshots"][0]
    first_stored = sum(p.stat().st_size for p in (ws.repo / "data").rglob("*") if p.is_file())
    restore_first = ws.root / "r-first"
    expected_first = tree_state(ws.data)
    del expected_first["skip.tmp"]

    big = ws.data / "big"
    big.mkdir()
    for i in range(24):
        (big / f"f{i:02d}.bin").write_bytes(os.urandom(2 * 1024 * 1024))

    kill_points = [
        ("first new pack written", lambda base: _count(ws.repo, "data") > base["data"]),
        ("an intermediate index written", lambda base: _count(ws.repo, "index") > base["index"]),
        ("several packs in", lambda base: _count(ws.repo, "data") > base["data"] + 6),
        ("lock just taken", lambda base: _count(ws.repo, "locks") > 0),
    ]
    killed = 0
    for what, cond in kill_points:
        base = {"data": _count(ws.repo, "data"), "index": _count(ws.repo, "index")}
        proc = _start_backup(ws)
        if _kill_when(proc, lambda cond=cond, base=base: cond(base)):
            killed += 1
        # After every kill the repository is sound and the old snapshot restores exactly.
        ws.ok("verify", "--read-data")
        target = restore_first.with_name(f"r-first-{killed}-{what.replace(' ', '-')}")
        ws.ok("restore", first["id"], "-s", "data", "--target", str(target))
        assert tree_state(target / str(ws.data).lstrip("/")) == expected_first, what
        # Touch one file so each run has new data to store.
        (big / "f00.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    assert killed >= 3, "the backup finished before most kill points: make the data bigger"

    # The next backup completes, and reuses what the killed runs had indexed.
    stored_before = sum(p.stat().st_size for p in (ws.repo / "data").rglob("*") if p.is_file())
    final = ws.ok("backup", "--json").json()["snapshots"][0]
    # Packs uploaded by killed runs are adopted even if no index listed them yet;
    # only data never uploaded (and the rewritten f00.bin) is new.
    new_since_first = stored_before - first_stored
    assert new_since_first > 8 * 1024 * 1024
    assert final["bytes_added"] < 48 * 1024 * 1024 - (new_since_first - 10 * 1024 * 1024), (final["bytes_added"], new_since_first)
    ws.ok("verify", "--read-data")
    target = ws.root / "r-final"
    ws.ok("restore", "latest", "-s", "data", "--target", str(target))
    want = tree_state(ws.data)
    del want["skip.tmp"]
    assert tree_state(target / str(ws.data).lstrip("/")) == want
