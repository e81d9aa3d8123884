"""``drkit repair`` (issue #17, 'wrong today' 3): after a flipped byte, repair leaves a
repository whose full read is clean, whose damaged pack is kept aside as evidence, whose
affected snapshot is rewritten without the lost files, and whose next backup stores the
lost content afresh and restores exactly."""

from __future__ import annotations

import json
from pathlib import Path

from drkit.errors import EXIT_DAMAGE
from tests.foundation.conftest import Workspace, tree_state
from tests.foundation.test_damage import biggest_pack, flip


def _damage_a_data_blob(ws: Workspace) -> Path:
    pack = biggest_pack(ws)
    flip(pack, pack.stat().st_size // 2)
    return pack


def test_verify_hint_quotes_the_repair_command(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    _damage_a_data_blob(ws)
    r = ws.run("verify", "--read-data")
    assert r.code == EXIT_DAMAGE
    assert "hint: run 'drkit repair'" in r.err


def test_repair_after_a_flipped_byte_ends_clean_and_the_next_backup_restores_exactly(ws: Workspace) -> None:
    ws.ok("init")
    first = ws.ok("backup", "--json").json()["snapshots"][0]
    pack = _damage_a_data_blob(ws)
    damaged_bytes = pack.read_bytes()
    evidence = ws.root / "evidence"

    plan = ws.ok("repair", "--dry-run", "--json").json()
    assert [p["pack"] for p in plan["packs_damaged"]] == [pack.name]
    assert pack.exists(), "a dry run changes nothing"

    r = ws.ok("repair", "--evidence-dir", str(evidence))
    assert f"damaged pack {pack.name[:16]}" in r.out
    kept = [p for p in evidence.rglob(pack.name)]
    assert len(kept) == 1 and kept[0].read_bytes() == damaged_bytes
    assert str(kept[0].parent) in r.out
    assert not pack.exists()
    assert f"snapshot {first['short_id']} (data) rewritten" in r.out

    snaps = ws.ok("snapshots", "--json").json()
    assert len(snaps) == 1 and snaps[0]["status"] == "repaired"
    assert snaps[0]["id"] != first["id"]
    lost = set(json.loads(json.dumps(plan))["snapshots_rewritten"][0]["removed"])
    assert lost and lost <= {str(ws.data / p) for p in ("a/b/random.bin", "a/b/copy.bin", "a/text.txt")}

    ws.ok("verify", "--read-data")
    assert ws.ok("repair").out.startswith("no damaged packs")

    # The repaired snapshot restores what was not lost, exactly.
    target = ws.root / "r1"
    ws.ok("restore", snaps[0]["short_id"], "--target", str(target))
    restored = tree_state(target / str(ws.data).lstrip("/"))
    want = tree_state(ws.data)
    for rel in {str(Path(p).relative_to(ws.data)) for p in lost}:
        assert rel not in restored
    for rel, st in restored.items():
        assert st == want[rel] or st[0] == "dir", rel

    # The next backup stores the lost content afresh and restores exactly.
    new = ws.ok("backup", "--json").json()["snapshots"][0]
    assert new["bytes_added"] > 0
    ws.ok("verify", "--read-data")
    target = ws.root / "r2"
    ws.ok("restore", "latest", "-s", "data", "--target", str(target))
    want.pop("skip.tmp")
    assert tree_state(target / str(ws.data).lstrip("/")) == want
