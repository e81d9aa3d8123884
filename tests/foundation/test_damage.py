"""Damage: a flipped byte, a truncated pack, a lost index file, a corrupt manifest.
verify names the object and the affected snapshots; restore never writes wrong bytes;
the index can be rebuilt from the packs alone."""

from __future__ import annotations

from pathlib import Path

from drkit.errors import EXIT_DAMAGE
from tests.foundation.conftest import Workspace, tree_state


def packs(ws: Workspace) -> list[Path]:
    return sorted(p for p in (ws.repo / "data").rglob("*") if p.is_file())


def biggest_pack(ws: Workspace) -> Path:
    return max(packs(ws), key=lambda p: p.stat().st_size)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_is_named_by_verify_and_restore_fails_loudly(ws: Workspace) -> None:
    ws.ok("init")
    snap = ws.ok("backup", "--json").json()["snapshots"][0]
    pack = biggest_pack(ws)
    assert ws.run("verify").code == 0  # structure alone cannot see inside packs
    flip(pack, pack.stat().st_size // 2)
    r = ws.run("verify", "--read-data")
    assert r.code == EXIT_DAMAGE
    assert pack.name in r.err and snap["short_id"] in r.err
    target = ws.root / "restore"
    r = ws.run("restore", "latest", "-s", "data", "--target", str(target))
    assert r.code == EXIT_DAMAGE
    assert "random.bin" in r.err or "copy.bin" in r.err or "text.txt" in r.err
    root = target / str(ws.data).lstrip("/")
    # No file exists with wrong content, and no temporary is left behind.
    want = tree_state(ws.data)
    for rel, state in tree_state(root).items():
        assert not rel.endswith(".drkit-restore")
        if state[0] == "file":
            assert state[1] == want[rel][1], f"{rel} restored with wrong bytes"


def test_truncated_pack_is_reported(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    pack = biggest_pack(ws)
    pack.write_bytes(pack.read_bytes()[:-100])
    r = ws.run("verify")
    assert r.code == EXIT_DAMAGE and pack.name in r.err and "size" in r.err
    r = ws.run("verify", "--read-data")
    assert r.code == EXIT_DAMAGE and pack.name in r.err


def test_lost_index_is_reported_and_rebuilt_from_packs(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    for f in (ws.repo / "index").iterdir():
        f.unlink()
    r = ws.run("verify")
    assert r.code == EXIT_DAMAGE and "not in the index" in r.err
    ws.ok("rebuild-index")
    ws.ok("verify", "--read-data")
    target = ws.root / "restore"
    ws.ok("restore", "latest", "-s", "data", "--target", str(target))
    assert (target / str(ws.data).lstrip("/") / "a/b/random.bin").read_bytes() == (ws.data / "a/b/random.bin").read_bytes()


def test_damaged_index_file_is_named(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    index_file = next((ws.repo / "index").iterdir())
    flip(index_file, 40)
    r = ws.run("verify")
    assert r.code == EXIT_DAMAGE and index_file.name in r.err


def test_corrupt_manifest_is_named_and_others_still_work(ws: Workspace) -> None:
    ws.ok("init")
    first = ws.ok("backup", "--json").json()["snapshots"][0]
    (ws.data / "a/new.txt").write_text("more")
    second = ws.ok("backup", "--json").json()["snapshots"][0]
    manifest = ws.repo / "snapshots" / first["id"]
    flip(manifest, 30)
    r = ws.run("verify")
    assert r.code == EXIT_DAMAGE and first["id"] in r.err
    listed = ws.ok("snapshots", "--json").json()
    assert [s["id"] for s in listed] == [second["id"]]
    target = ws.root / "restore"
    ws.ok("restore", second["id"], "-s", "data", "--target", str(target))
    assert (target / str(ws.data).lstrip("/") / "a/new.txt").read_text() == "more"
