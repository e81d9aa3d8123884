"""Format version 2 (docs/format.md): the config and key slots are authenticated by the
repository key, a config rolled back to version 1 is refused, pack trailers are bound to
their pack; version 1 is read as before and upgraded only by 'drkit upgrade-format'
(issue #15, case 4). Version 3 (groups of small files, issue #18) keeps all of it, and
'upgrade-format' brings version 1 and version 2 to it."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest

from drkit.errors import EXIT_DAMAGE, EXIT_WRONG_KEY
from drkit.repository.crypto import Cipher, MasterKey
from drkit.repository.pack import MAGIC_V1, MAGIC_V2, PackBuilder, PackFormatError, read_trailer
from drkit.repository.repo import Repository
from drkit.storage import LocalStorage
from tests.foundation.conftest import Result, Workspace, tree_state
from tests.repository.test_frozen_v1 import FIRST, PASSPHRASE, SECOND, SNAP1, SNAP2, SOURCE_ROOT, Cli, _state

PASSWORD = "correct horse battery staple"


def one_error_line(r: Result) -> str:
    errors = [line for line in r.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.err
    return errors[0]


def packs(ws: Workspace) -> list[Path]:
    return sorted(p for p in (ws.repo / "data").rglob("*") if p.is_file())


def test_init_writes_version_3_with_an_authenticated_config_and_bound_packs(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    config = json.loads((ws.repo / "config").read_text())
    assert config["version"] == 3 and config["auth"]
    assert Repository.open(LocalStorage(ws.repo), PASSWORD).master.min_version == 3
    slot = json.loads(next((ws.repo / "keys").iterdir()).read_text())
    assert slot["version"] == 2
    assert packs(ws) and all(p.read_bytes().startswith(MAGIC_V2) for p in packs(ws))


def test_an_altered_config_is_refused_before_anything_is_read_or_written(ws: Workspace) -> None:
    """A storage operator (no key) changes the parameters: inside the bounds the
    authentication refuses them; outside, the bounds do (in any version)."""
    ws.ok("init")
    ws.ok("backup")
    want = tree_state(ws.data)
    original = (ws.repo / "config").read_bytes()
    before = packs(ws)
    config = json.loads(original)
    for change in ({"pack_size": 1024 * 1024}, {"chunker": {**config["chunker"], "min_size": 65536, "avg_size": 65536}}):
        (ws.repo / "config").write_text(json.dumps({**config, **change}))
        for args in (["backup"], ["verify"], ["snapshots"]):
            r = ws.run(*args)
            assert r.code == EXIT_DAMAGE, (change, args, r.err)
            assert "not the ones authenticated by the repository key" in one_error_line(r)
    (ws.repo / "config").write_text(json.dumps({**config, "pack_size": 1}))
    r = ws.run("backup")
    assert r.code == EXIT_DAMAGE and "pack_size=1 is out of bounds" in one_error_line(r)
    assert packs(ws) == before, "nothing was written with the altered parameters"
    (ws.repo / "config").write_bytes(original)
    ws.ok("verify", "--read-data")
    target = ws.root / "r"
    ws.ok("restore", "latest", "-s", "data", "--target", str(target))
    got = tree_state(target / str(ws.data).lstrip("/"))
    assert {k: v for k, v in got.items() if v[0] == "file"} == {k: v for k, v in want.items() if v[0] == "file" and not k.endswith(".tmp")}


def test_an_altered_key_slot_does_not_open_and_an_absurd_cost_is_never_computed(ws: Workspace) -> None:
    ws.ok("init")
    slot_path = next((ws.repo / "keys").iterdir())
    original = slot_path.read_text()
    doc = json.loads(original)
    slot_path.write_text(json.dumps({**doc, "label": "operator was here"}))
    r = ws.run("snapshots")
    assert r.code == EXIT_WRONG_KEY, r.err
    slot_path.write_text(json.dumps({**doc, "n": 2**30}))
    r = ws.run("snapshots")
    assert r.code == EXIT_WRONG_KEY and "scrypt n=1073741824 is out of bounds" in r.err
    slot_path.write_text(original)
    ws.ok("snapshots")


def test_a_config_rolled_back_to_version_1_is_refused_as_a_downgrade(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    config = json.loads((ws.repo / "config").read_text())
    v1 = {k: v for k, v in config.items() if k != "auth"} | {"version": 1}
    (ws.repo / "config").write_text(json.dumps(v1))
    r = ws.run("snapshots")
    assert r.code == EXIT_DAMAGE and "downgrade" in one_error_line(r)


def test_pack_trailers_are_bound_to_their_pack_in_version_2_only() -> None:
    cipher = Cipher(MasterKey.generate().data_key)
    for version, magic in ((1, MAGIC_V1), (2, MAGIC_V2)):
        builder = PackBuilder(version)
        builder.add(0, b"i" * 32, os.urandom(500), 400)
        _pack_id, data = builder.finish(cipher)
        assert data.startswith(magic) and read_trailer(data, cipher) == builder.entries
        (tlen,) = struct.unpack("<I", data[-4:])
        forged = data[: len(magic)] + os.urandom(len(data) - len(magic) - 4 - tlen) + data[-4 - tlen :]
        if version == 1:
            assert read_trailer(forged, cipher) == builder.entries  # why v1 adoption must decrypt every blob
        else:
            with pytest.raises(PackFormatError, match="only on the bytes it was written with"):
                read_trailer(forged, cipher)


def test_a_version_1_repository_is_upgraded_only_on_request_and_then_refuses_a_downgrade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRKIT_PASSWORD", PASSPHRASE)
    c = Cli(tmp_path, "passphrase", capsys)
    v1_config = (c.repo / "config").read_bytes()
    c.ok("snapshots")
    c.ok("verify", "--read-data")
    assert (c.repo / "config").read_bytes() == v1_config, "reading never upgrades"
    out = c.ok("upgrade-format")
    assert "upgraded from format version 1 to 3" in out
    config = json.loads((c.repo / "config").read_text())
    assert config["version"] == 3 and config["auth"] and config["id"] == json.loads(v1_config)["id"]
    assert [json.loads(p.read_text())["version"] for p in (c.repo / "keys").iterdir()] == [2]
    assert "already format version 3" in c.ok("upgrade-format")
    for snap, want in ((SNAP1, FIRST), (SNAP2, SECOND)):
        target = tmp_path / f"restore-{snap[:8]}"
        c.ok("restore", snap[:8], "-s", "data", "--target", str(target))
        assert _state(target / SOURCE_ROOT.lstrip("/")) == want
    report = json.loads(c.ok("verify", "--read-data", "--json"))
    assert report["ok"] and report["packs"] == 2
    (c.repo / "config").write_bytes(v1_config)  # put the old config back
    code, _out, err = c.run("snapshots")
    assert code == EXIT_DAMAGE and "downgrade" in err


def test_a_recipient_host_adopts_bound_orphan_packs(ws: Workspace) -> None:
    """Version 2 lets a backup host that cannot decrypt content reuse packs an
    interrupted run left behind: their trailers are bound to their bytes."""
    identity = ws.root / "id.json"
    recipient = ws.ok("key", "generate-identity", "--output", str(identity)).out.strip()
    ws.ok("init", "--recipient", recipient)
    ws.ok("backup")
    repo = Repository.open(LocalStorage(ws.repo), PASSWORD)
    for index_file in (ws.repo / "index").iterdir():
        index_file.unlink()  # as if the run died before writing its index
    repo.load_index()
    assert len(repo.index) == 0 and not repo.can_read_content
    assert repo.adopt_orphan_packs() == len(packs(ws))
    assert hashlib.sha256(packs(ws)[0].read_bytes()).hexdigest() == packs(ws)[0].name


def test_an_altered_identity_slot_does_not_open(ws: Workspace) -> None:
    identity = ws.root / "id.json"
    recipient = ws.ok("key", "generate-identity", "--output", str(identity)).out.strip()
    ws.ok("init", "--recipient", recipient)
    ws.ok("backup")
    slot = next(p for p in (ws.repo / "keys").iterdir() if json.loads(p.read_text())["kdf"] == "x25519")
    original = slot.read_text()
    assert json.loads(original)["version"] == 2
    ws.ok("snapshots", "--identity", str(identity))
    slot.write_text(json.dumps({**json.loads(original), "label": "operator was here"}))
    r = ws.run("snapshots", "--identity", str(identity))
    assert r.code == EXIT_WRONG_KEY and "does not open" in one_error_line(r)
    slot.write_text(original)
    ws.ok("snapshots", "--identity", str(identity))


def test_a_version_2_repository_is_upgraded_to_3_on_request_and_then_refuses_a_downgrade(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading never upgrades; 'upgrade-format' rewrites the config and the slot that
    opened it (its master key now says version 3), keeps every snapshot restorable,
    and a config put back to version 2 is then refused as a downgrade."""
    with monkeypatch.context() as m:
        m.setattr("drkit.repository.repo.FORMAT_VERSION", 2)
        ws.ok("init")
        ws.ok("backup")
    want = {rel: state for rel, state in tree_state(ws.data).items() if rel != "skip.tmp"}  # (excluded by the config)
    v2_config = (ws.repo / "config").read_bytes()
    assert json.loads(v2_config)["version"] == 2
    ws.ok("verify", "--read-data")
    assert (ws.repo / "config").read_bytes() == v2_config, "reading never upgrades"
    assert "upgraded from format version 2 to 3" in ws.ok("upgrade-format").out
    config = json.loads((ws.repo / "config").read_text())
    assert config["version"] == 3 and config["id"] == json.loads(v2_config)["id"]
    assert Repository.open(LocalStorage(ws.repo), PASSWORD).master.min_version == 3
    assert len(list((ws.repo / "keys").iterdir())) == 1  # the old slot was replaced
    assert "already format version 3" in ws.ok("upgrade-format").out
    ws.ok("restore", "latest", "--target", str(ws.root / "back"))
    assert tree_state(ws.root / "back" / str(ws.data).lstrip("/")) == want
    (ws.repo / "config").write_bytes(v2_config)
    r = ws.run("snapshots")
    assert r.code == EXIT_DAMAGE and "downgrade" in one_error_line(r)


def test_a_drkit_that_reads_only_older_versions_refuses_a_version_3_repository(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a release before version 3 does with a version-3 repository: it refuses the
    config before reading anything (so it never misreads a group)."""
    ws.ok("init")
    monkeypatch.setattr("drkit.repository.repo.READABLE_VERSIONS", (1, 2))
    r = ws.run("snapshots")
    assert r.code != 0 and "format version 3 is not supported" in one_error_line(r)


def test_a_version_2_recipient_repository_is_upgraded_by_the_identity_holder(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recipient mode: the admin (identity, no passphrase) upgrades; the identity slot is
    replaced by one whose master key says version 3, the backup host's passphrase still
    backs up (its slot keeps version 2, below the config's 3: no downgrade), and every
    snapshot, old and new, restores exactly with the identity."""
    from drkit.repository.identity import load_identity

    identity_file = ws.root / "id.json"
    recipient = ws.ok("key", "generate-identity", "--output", str(identity_file)).out.strip()
    with monkeypatch.context() as m:
        m.setattr("drkit.repository.repo.FORMAT_VERSION", 2)
        ws.ok("init", "--recipient", recipient)
        ws.ok("backup")
    want = {rel: state for rel, state in tree_state(ws.data).items() if rel != "skip.tmp"}  # (excluded by the config)
    slots_before = {p.name for p in (ws.repo / "keys").iterdir()}
    assert "upgraded from format version 2 to 3" in ws.ok("upgrade-format", "--identity", str(identity_file)).out
    assert json.loads((ws.repo / "config").read_text())["version"] == 3
    slots_after = {p.name for p in (ws.repo / "keys").iterdir()}
    assert len(slots_after) == 2 and len(slots_after - slots_before) == 1, "the identity slot alone was replaced"
    identity = load_identity(identity_file, lambda: "")
    assert Repository.open(LocalStorage(ws.repo), None, identity=identity).master.min_version == 3
    assert Repository.open(LocalStorage(ws.repo), PASSWORD).master.min_version == 2
    (ws.data / "new.txt").write_text("after the upgrade")
    want["new.txt"] = tree_state(ws.data)["new.txt"]
    ws.ok("backup")
    ws.ok("restore", "latest", "--target", str(ws.root / "back"), "--identity", str(identity_file))
    assert tree_state(ws.root / "back" / str(ws.data).lstrip("/")) == want
    report = json.loads(ws.ok("verify", "--read-data", "--json", "--identity", str(identity_file)).out)
    assert report["ok"]
