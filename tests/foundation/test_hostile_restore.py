"""#14: a restore (and so a drill) writes only inside its target, whatever the snapshot
says. Each test builds the hostile snapshot an attacker with the backup host's key
could write, restores it through the real CLI, and checks the victim outside the
target, the exit code and the one-line error."""

from __future__ import annotations

import _thread
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from drkit.errors import EXIT_INTERRUPTED, EXIT_REFUSED
from drkit.repository.repo import Repository
from drkit.repository.tree import DIR, FILE, SYMLINK, Entry
from drkit.services.restore import SnapshotReader
from drkit.services.restorefs import TMP_PREFIX
from drkit.storage import LocalStorage
from tests.foundation.conftest import Workspace
from tests.hostile.snapshots import write_snapshot

PASSPHRASE = "correct horse battery staple"


def _repo(ws: Workspace) -> Repository:
    ws.ok("init")
    return Repository.open(LocalStorage(ws.repo), PASSPHRASE)


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def victim(ws: Workspace) -> Path:
    v = ws.root / "victim"
    v.write_bytes(b"victim bytes\n")
    os.chmod(v, 0o644)
    return v


def test_a_symlink_named_like_the_old_temporary_is_not_written_through(ws: Workspace, victim: Path) -> None:
    """Reproduced: 'd/f.drkit-restore' -> victim, then 'd/f' mode 04777 overwrote the
    victim with the attacker's bytes and made it setuid."""
    repo = _repo(ws)
    write_snapshot(repo, [
        Entry("d", DIR, mode=0o755),
        Entry("d/f.drkit-restore", SYMLINK, mode=0o777, target=str(victim)),
        Entry("d/f", FILE, mode=0o4777),
    ], {"d/f": b"attacker bytes\n"})
    target = ws.root / "t"
    ws.ok("restore", "latest", "-s", "data", "--target", str(target))
    assert victim.read_bytes() == b"victim bytes\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert (target / "d/f").read_bytes() == b"attacker bytes\n"
    assert os.path.islink(target / "d/f.drkit-restore")
    assert not [p for p in (target / "d").iterdir() if p.name.startswith(TMP_PREFIX)]


def test_a_symlinked_directory_is_not_followed(ws: Workspace, victim: Path) -> None:
    outside = ws.root / "outside"
    outside.mkdir()
    repo = _repo(ws)
    write_snapshot(repo, [
        Entry("d", SYMLINK, target=str(outside)),
        Entry("d/owned", FILE, mode=0o644),
    ], {"d/owned": b"owned"})
    r = ws.run("restore", "latest", "-s", "data", "--target", str(ws.root / "t"))
    assert r.code == EXIT_REFUSED
    assert "symlink" in _one_line_error(r.err)
    assert list(outside.iterdir()) == []


def test_an_entry_named_like_a_restore_temporary_is_refused(ws: Workspace) -> None:
    repo = _repo(ws)
    write_snapshot(repo, [Entry(f"{TMP_PREFIX}0123456789ab-1", FILE, mode=0o644)], {f"{TMP_PREFIX}0123456789ab-1": b"x"})
    target = ws.root / "t"
    r = ws.run("restore", "latest", "-s", "data", "--target", str(target))
    assert r.code == EXIT_REFUSED
    assert "collides with drkit's restore temporaries" in _one_line_error(r.err)
    assert not target.exists() or list(target.iterdir()) == []


def test_a_link_or_file_never_replaces_a_directory(ws: Workspace) -> None:
    outside = ws.root / "outside"
    outside.mkdir()
    repo = _repo(ws)
    write_snapshot(repo, [
        Entry("d", DIR, mode=0o755),
        Entry("d/x", FILE, mode=0o644),
        Entry("d", SYMLINK, target=str(outside)),
    ], {"d/x": b"inside"})
    r = ws.run("restore", "latest", "-s", "data", "--target", str(ws.root / "t"))
    assert r.code == EXIT_REFUSED
    assert "refusing to replace directory d" in _one_line_error(r.err)
    assert list(outside.iterdir()) == []
    # an existing directory in a --force restore is not replaced by a file either
    repo2 = write_snapshot(repo, [Entry("d", FILE, mode=0o644)], {"d": b"file"})
    r = ws.run("restore", repo2.id[:12], "-s", "data", "--target", str(ws.root / "t2"))
    assert r.code == 0, r.err
    (ws.root / "t3" / "d").mkdir(parents=True)
    r = ws.run("restore", repo2.id[:12], "-s", "data", "--target", str(ws.root / "t3"), "--force")
    assert r.code == EXIT_REFUSED and "refusing to replace directory d" in _one_line_error(r.err)
    assert (ws.root / "t3" / "d").is_dir()


def test_a_root_entry_cannot_change_the_target(ws: Workspace) -> None:
    repo = _repo(ws)
    write_snapshot(repo, [Entry("/", DIR, mode=0o777, uid=4242, gid=4242, mtime_ns=10**18),
                          Entry("f", FILE, mode=0o644)], {"f": b"x"})
    target = ws.root / "t"
    target.mkdir(mode=0o700)
    os.chmod(target, 0o700)
    before = target.stat()
    ws.ok("restore", "latest", "-s", "data", "--target", str(target))
    after = target.stat()
    assert stat.S_IMODE(after.st_mode) == 0o700
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert (target / "f").read_bytes() == b"x"


def test_special_bits_and_owners_only_when_restoring_as_root(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _repo(ws)
    write_snapshot(repo, [Entry("d", DIR, mode=0o3777), Entry("d/suid", FILE, mode=0o6755, uid=4242, gid=4242)],
                   {"d/suid": b"#!/bin/sh\n"})
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # an ordinary user runs the restore
    target = ws.root / "t"
    ws.ok("restore", "latest", "-s", "data", "--target", str(target))
    st = (target / "d/suid").stat()
    assert stat.S_IMODE(st.st_mode) == 0o755
    assert st.st_uid != 4242
    assert stat.S_IMODE((target / "d").stat().st_mode) == 0o777


def test_names_of_255_bytes_are_restored(ws: Workspace) -> None:
    repo = _repo(ws)
    long_file = "f" * 255
    long_dir = "\u00e9" * 127  # 254 bytes in UTF-8
    write_snapshot(repo, [Entry(long_dir, DIR, mode=0o755), Entry(f"{long_dir}/{long_file}", FILE, mode=0o644),
                          Entry(f"{long_dir}/{'l' * 255}", SYMLINK, target=long_file)],
                   {f"{long_dir}/{long_file}": b"long"})
    target = ws.root / "t"
    ws.ok("restore", "latest", "-s", "data", "--target", str(target))
    assert (target / long_dir / long_file).read_bytes() == b"long"
    assert os.readlink(target / long_dir / ("l" * 255)) == long_file


class SlowStorage(LocalStorage):
    """A local store whose reads take a while (a remote one, say)."""

    delay = 0.25

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if name.startswith("data/"):
            time.sleep(self.delay)
        return super().get(name, offset, length)


def test_ctrl_c_stops_a_restore_within_a_second_leaving_only_complete_files(ws: Workspace) -> None:
    ws.ok("init")
    repo = Repository.open(LocalStorage(ws.repo), PASSPHRASE)
    repo.config["pack_size"] = 64 * 1024  # one file per pack
    files = {f"f{i:02d}": os.urandom(80 * 1024) for i in range(40)}
    write_snapshot(repo, [Entry(name, FILE, mode=0o644) for name in files], files)
    slow = Repository.open(SlowStorage(ws.repo), PASSPHRASE)
    slow.load_index()
    snap = slow.find_snapshot("latest")
    target = ws.root / "t"
    timer = threading.Timer(0.6, _thread.interrupt_main)
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        SnapshotReader(slow, snap, target=target).write_entries(target)
    stopped = time.monotonic() - started - 0.6
    timer.cancel()
    assert stopped < 1.0, f"took {stopped:.2f}s to stop after Ctrl-C"
    names = sorted(p.name for p in target.iterdir())
    assert len(names) < len(files), "the restore ran to the end"
    assert not [n for n in names if n.startswith(TMP_PREFIX)], names
    for n in names:
        assert (target / n).read_bytes() == files[n], f"{n} is half-written"


def test_ctrl_c_during_a_cli_restore_is_one_line_and_exit_130(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _repo(ws)
    repo.config["pack_size"] = 64 * 1024
    files = {f"f{i:02d}": os.urandom(80 * 1024) for i in range(40)}
    write_snapshot(repo, [Entry(name, FILE, mode=0o644) for name in files], files)
    import drkit.cli.common as common

    monkeypatch.setattr(common, "storage_for", lambda state: SlowStorage(ws.repo))
    timer = threading.Timer(0.6, _thread.interrupt_main)
    timer.start()
    r = ws.run("restore", "latest", "-s", "data", "--target", str(ws.root / "t"))
    timer.cancel()
    assert r.code == EXIT_INTERRUPTED
    assert r.err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in r.err
    assert not [p for p in (ws.root / "t").iterdir() if p.name.startswith(TMP_PREFIX)]
    assert not list((ws.repo / "locks").iterdir()), "the shared lock is released"


def test_a_drill_of_the_hostile_snapshot_writes_nothing_outside_its_scratch(ws: Workspace, victim: Path) -> None:
    """Drills run unattended and use the same restore path."""
    repo = _repo(ws)
    write_snapshot(repo, [
        Entry("d", DIR, mode=0o755),
        Entry("d/f.drkit-restore", SYMLINK, mode=0o777, target=str(victim)),
        Entry("d/f", FILE, mode=0o4777),
    ], {"d/f": b"attacker bytes\n"})
    scratch = ws.root / "scratch"
    scratch.mkdir()
    r = ws.run("drill", "-s", "data", "--scratch", str(scratch), "--keep")
    assert "scratch directory" not in r.err, r.err
    restored = [p for p in scratch.rglob("f") if p.parent.name == "d"]
    assert restored and restored[0].read_bytes() == b"attacker bytes\n", "the drill restored the snapshot"
    assert victim.read_bytes() == b"victim bytes\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
