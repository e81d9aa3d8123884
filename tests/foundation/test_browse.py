"""ls, diff, find, dump, stats and tag against known trees, with --json parsed (#17)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

from drkit.errors import EXIT_USAGE
from tests.foundation.conftest import Workspace
from tests.foundation.test_errors import one_error_line


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _two_snapshots(ws: Workspace) -> tuple[str, str]:
    ws.ok("init")
    a = ws.ok("backup", "--json").json()["snapshots"][0]["short_id"]
    (ws.data / "a/new.txt").write_text("new\n")
    (ws.data / "a/text.txt").write_text("changed\n")
    (ws.data / "a/secret").unlink()
    b = ws.ok("backup", "--json").json()["snapshots"][0]["short_id"]
    return a, b


def test_ls_lists_a_snapshot_and_a_subtree(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    d = str(ws.data)
    rows = _lines(ws.ok("ls", "latest", "-s", "data", "--json").out)
    assert rows[0]["struct_type"] == "snapshot" and rows[0]["source"] == "data"
    nodes = {r["path"]: r for r in rows[1:]}
    assert nodes[f"{d}/a/text.txt"]["type"] == "file" and nodes[f"{d}/a/text.txt"]["size"] == 12 * 5000
    assert nodes[f"{d}/a/secret"]["mode"] == "0600"
    assert nodes[f"{d}/a/link"] == nodes[f"{d}/a/link"] | {"type": "symlink", "target": "text.txt"}
    assert f"{d}/skip.tmp" not in nodes
    sub = [r["path"] for r in _lines(ws.ok("ls", "latest", f"{d}/a/b", "--json").out)[1:]]
    assert sub == [f"{d}/a/b", f"{d}/a/b/copy.bin", f"{d}/a/b/random.bin"]
    assert ws.ok("ls", "latest", f"{d}/a/b").out.splitlines() == sub
    r = ws.run("ls", "latest", f"{d}/nope")
    assert r.code == EXIT_USAGE and "is not in snapshot" in one_error_line(r.err)


def test_diff_names_added_removed_and_changed(ws: Workspace) -> None:
    a, b = _two_snapshots(ws)
    d = str(ws.data)
    rows = _lines(ws.ok("diff", a, b, "--json").out)
    changes = {r["path"]: r["modifier"] for r in rows if r["message_type"] == "change"}
    assert changes == {f"{d}/a/new.txt": "+", f"{d}/a/secret": "-", f"{d}/a/text.txt": "M"}
    st = rows[-1]
    assert st["message_type"] == "statistics" and (st["added"], st["removed"], st["modified"]) == (1, 1, 1)
    text = ws.ok("diff", a, b).out
    assert f"+    {d}/a/new.txt" in text and f"-    {d}/a/secret" in text and f"M    {d}/a/text.txt" in text


def test_find_matches_base_name_or_full_path_across_snapshots(ws: Workspace) -> None:
    a, b = _two_snapshots(ws)
    d = str(ws.data)
    found = ws.ok("find", "*.txt", "--json").json()
    assert [f["short_id"] for f in found] == [a, b]
    assert sorted(m["path"] for m in found[0]["matches"]) == [f"{d}/a/text.txt"]
    assert sorted(m["path"] for m in found[1]["matches"]) == [f"{d}/a/new.txt", f"{d}/a/text.txt"]
    found = ws.ok("find", f"{d}/a/b/*", "--json").json()
    assert {m["path"] for f in found for m in f["matches"]} == {f"{d}/a/b/copy.bin", f"{d}/a/b/random.bin"}
    found = ws.ok("find", "secret", "--json").json()
    assert [f["short_id"] for f in found] == [a]
    text = ws.ok("find", "new.txt").out
    assert f"{b}  {d}/a/new.txt" in text and a not in text
    assert ws.ok("find", "nothing-like-this", "--json").json() == []


def test_dump_writes_a_file_and_a_directory_as_tar(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    d = str(ws.data)
    out = ws.root / "random.out"
    ws.ok("dump", "latest", f"{d}/a/b/random.bin", "-o", str(out))
    assert out.read_bytes() == (ws.data / "a/b/random.bin").read_bytes()
    r = ws.run("dump", "latest", f"{d}/a/b/random.bin", "-o", str(out))
    assert r.code == EXIT_USAGE and "already exists" in one_error_line(r.err)
    tar_path = ws.root / "a.tar"
    ws.ok("dump", "latest", f"{d}/a", "-o", str(tar_path))
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        assert "a/b/random.bin" in names and "a/text.txt" in names
        assert tar.extractfile("a/text.txt").read() == (ws.data / "a/text.txt").read_bytes()
        assert tar.getmember("a/link").issym() and tar.getmember("a/link").linkname == "text.txt"
        assert tar.getmember("a/secret").mode == 0o600
    r = ws.run("dump", "latest", f"{d}/nope", "-o", str(ws.root / "x"))
    assert r.code == EXIT_USAGE and not (ws.root / "x").exists()


def test_dump_json_reports_what_it_wrote_and_a_failed_dump_leaves_no_file(ws: Workspace) -> None:
    import hashlib

    ws.ok("init")
    ws.ok("backup")
    d = str(ws.data)
    out = ws.root / "random.out"
    doc = ws.ok("dump", "latest", f"{d}/a/b/random.bin", "-o", str(out), "--json").json()
    want = (ws.data / "a/b/random.bin").read_bytes()
    assert out.read_bytes() == want
    assert doc["kind"] == "file" and doc["bytes"] == len(want) and doc["output"] == str(out)
    assert doc["sha256"] == hashlib.sha256(want).hexdigest() and doc["path"] == f"{d}/a/b/random.bin"
    assert out.stat().st_mode & 0o777 == 0o600
    tar_doc = ws.ok("--json", "dump", "latest", f"{d}/a", "-o", str(ws.root / "a.tar")).json()
    assert tar_doc["kind"] == "tar" and tar_doc["bytes"] == (ws.root / "a.tar").stat().st_size
    r = ws.run("dump", "latest", f"{d}/a", "--json")
    err = json.loads(r.err.strip().splitlines()[-1])  # under --json the error is JSON too
    assert r.code == EXIT_USAGE and err["error"].startswith("--json needs -o FILE") and err["exit_code"] == EXIT_USAGE
    # a dump that fails half-way (a pack gone) leaves nothing under the name asked for
    for pack in (ws.repo / "data").rglob("*"):
        if pack.is_file():
            pack.unlink()
    r = ws.run("dump", "latest", f"{d}/a", "-o", str(ws.root / "broken.tar"))
    assert r.code != 0
    assert sorted(p.name for p in ws.root.iterdir() if "broken" in p.name) == []


def test_dump_to_stdout(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    cmd = [sys.executable, "-m", "drkit", "-c", str(ws.config), "dump", "latest"]
    out = subprocess.run([*cmd, f"{ws.data}/a/text.txt"], capture_output=True, check=True, timeout=60).stdout
    assert out == (ws.data / "a/text.txt").read_bytes()
    data = subprocess.run([*cmd, f"{ws.data}/a/b"], capture_output=True, check=True, timeout=60).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert sorted(tar.getnames()) == ["b", "b/copy.bin", "b/random.bin"]
        assert tar.extractfile("b/random.bin").read() == (ws.data / "a/b/random.bin").read_bytes()


def test_stats_raw_deduplicated_and_stored(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    ws.ok("backup")  # nothing new: raw doubles, deduplicated does not
    st = ws.ok("stats", "--json").json()
    data = st["sources"]["data"]
    size = 12 * 5000 + 2 * (3 * 1024 * 1024 + 17) + len("s3cr3t\n")
    assert data["snapshots"] == 2 and data["raw"] == 2 * size
    # copy.bin duplicates random.bin: stored once
    assert size - (3 * 1024 * 1024 + 17) <= data["deduplicated"] < size
    assert 0 < data["stored"] < data["deduplicated"] + 64 * 1024
    assert st["total"]["raw"] == data["raw"] and st["total"]["stored"] == data["stored"]
    assert "data" in ws.ok("stats").out


def test_tag_add_remove_and_forget_by_tag_and_host(ws: Workspace) -> None:
    ws.ok("init")
    first = ws.ok("backup", "--json").json()["snapshots"][0]["short_id"]
    ws.ok("backup", "--host", "other")
    out = ws.ok("tag", first, "--add", "keepme", "--add", "x", "--json").json()
    assert out[0]["tags"] == ["keepme", "x"]
    tagged = out[0]["short_id"]
    assert tagged != first
    out = ws.ok("tag", tagged, "--remove", "x", "--json").json()
    tagged = out[0]["short_id"]
    snaps = {s["short_id"]: s for s in ws.ok("snapshots", "--json").json()}
    assert snaps[tagged]["tags"] == ["keepme"] and first not in snaps
    r = ws.run("tag", tagged)
    assert r.code == EXIT_USAGE
    # forget only what carries the tag / comes from the host
    r = ws.ok("forget", "--tag", "keepme", "--keep-last", "1", "--json").json()
    assert r["removed"] == []
    r = ws.ok("forget", "--host", "other", "--keep-last", "1", "--json").json()
    assert r["removed"] == []
    ws.ok("backup", "--host", "other")
    r = ws.ok("forget", "--host", "other", "--keep-last", "1", "--json").json()
    assert len(r["removed"]) == 1
    left = ws.ok("snapshots", "--json").json()
    assert sorted(s["host"] for s in left).count("other") == 1 and any(s["short_id"] == tagged for s in left)


def test_backup_dry_run_reports_what_it_would_store_and_stores_nothing(ws: Workspace) -> None:
    from tests.foundation.test_errors import listing

    ws.ok("init")
    before = listing(ws.repo)
    out = ws.ok("backup", "--dry-run", "--json").json()
    assert out["dry_run"] is True
    snap = out["snapshots"][0]
    assert snap["bytes_read"] > 3 * 1024 * 1024 and snap["bytes_added"] > 3 * 1024 * 1024
    assert listing(ws.repo) == before
    assert ws.ok("snapshots", "--json").json() == []
    assert "would save" in ws.ok("backup", "-n").out
    ws.ok("backup")
    again = ws.ok("backup", "--dry-run", "--json").json()["snapshots"][0]
    assert again["bytes_added"] < 64 * 1024  # file data deduplicated against the real index (only tree metadata is new)


def test_exclude_and_exclude_file_on_the_command_line(ws: Workspace) -> None:
    ws.ok("init")
    patterns = ws.root / "excludes"
    patterns.write_text("# big files\n\n*.bin\n")
    ws.ok("backup", "--exclude", "secret", "--exclude-file", str(patterns))
    paths = {r["path"] for r in _lines(ws.ok("ls", "latest", "--json").out)[1:]}
    d = str(ws.data)
    assert f"{d}/a/text.txt" in paths
    assert not {f"{d}/a/secret", f"{d}/a/b/random.bin", f"{d}/a/b/copy.bin"} & paths
    r = ws.run("backup", "--exclude-file", str(ws.root / "missing"))
    assert r.code == EXIT_USAGE and "missing" in one_error_line(r.err)
