"""Many small files: the promises behind the small-file fast paths (no timing: see bench/).

- a file of at most one chunk is read whole and stored as the one chunk cutting would give;
- small blobs go to the workers in batches, and every chunk id still comes out right;
- the unchanged-file check follows the parent snapshot with a cursor that holds one entry,
  and still sees a file rewritten within the same second (mtime granularity);
- a file that grew past one chunk between the walk and the read is cut as usual.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot
from drkit.repository.tree import (
    DIR,
    FILE,
    Entry,
    chunks_in_frame,
    decode_lines,
    encode_entries,
    entry_line,
    file_line_frame,
    iter_tree,
    line_path,
    line_paths,
    owner_fragment,
    parse_line,
    split_lines,
    stored_chunk_ids,
    tree_chunks,
)
from drkit.services.backup import BackupOptions, ParentCursor, SnapshotWriter, run_backup, walk_order_key
from drkit.services.restore import SnapshotReader
from drkit.sources.files import FilesSource
from drkit.storage import LocalStorage

PASSWORD = "many files"


def _repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(str(tmp_path / "repo"))
    if not (tmp_path / "repo").exists():
        Repository.init(storage, PASSWORD)
    return Repository.open(storage, PASSWORD)


def _tree(root: Path, count: int) -> dict[str, bytes]:
    files = {}
    for i in range(count):
        rel = f"d{i % 37:02d}/s{i % 5}/f{i:05d}.txt"
        data = hashlib.sha256(str(i).encode()).hexdigest().encode() * (1 + i % 90)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        files[rel] = data
    return files


def _backup(tmp_path: Path, data: Path) -> dict[str, int]:
    run = run_backup(_repo(tmp_path), [FilesSource("data", FilesSource.Options(paths=[str(data)]))], BackupOptions())
    assert not run.failed
    return run.snapshots[0].stats


def test_small_files_round_trip_through_batches_and_dedupe(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = _tree(data, 1500)
    (data / "copy.txt").write_bytes(files["d00/s0/f00000.txt"])  # same content: one blob
    (data / "empty").write_bytes(b"")
    (data / "zeros").write_bytes(bytes(3000))  # one chunk, all zero: sized by ftruncate, not by a write
    files["zeros"] = bytes(3000)
    stats = _backup(tmp_path, data)
    assert stats["files_new"] == 1503
    repo = _repo(tmp_path)
    repo.load_index()
    snap = repo.find_snapshot("latest")
    entries = {e.path: e for e in iter_tree(repo, snap) if e.type == FILE}
    assert entries[f"{data}/empty"].chunks == []
    assert entries[f"{data}/copy.txt"].chunks == entries[f"{data}/d00/s0/f00000.txt"].chunks
    for rel, content in files.items():  # one chunk each, its id the keyed hash of the content
        assert entries[f"{data}/{rel}"].chunks == [repo.hasher(content).hex()]
    target = tmp_path / "restored"
    SnapshotReader(repo, snap).write_entries(target)
    for rel, content in files.items():
        assert (target / str(data).lstrip("/") / rel).read_bytes() == content


def test_a_file_rewritten_in_the_same_second_is_read_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = _tree(data, 300)
    assert _backup(tmp_path, data)["files_new"] == 300
    victim = data / "d03/s3/f00003.txt"
    before = os.stat(victim)
    new = b"X" * len(files["d03/s3/f00003.txt"])  # same size
    victim.write_bytes(new)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime to the nanosecond
    same_second = data / "d04/s4/f00004.txt"
    st = os.stat(same_second)
    same_second.write_bytes(b"Y" * st.st_size)
    second = st.st_mtime_ns // 10**9 * 10**9
    os.utime(same_second, ns=(st.st_atime_ns, second + (st.st_mtime_ns - second + 1) % 10**9))
    stats = _backup(tmp_path, data)
    assert stats["files_changed"] == 2 and stats["files_unmodified"] == 298
    repo = _repo(tmp_path)
    repo.load_index()
    target = tmp_path / "restored"
    SnapshotReader(repo, repo.find_snapshot("latest")).write_entries(target)
    base = target / str(data).lstrip("/")
    assert (base / "d03/s3/f00003.txt").read_bytes() == new
    assert (base / "d04/s4/f00004.txt").read_bytes() == b"Y" * st.st_size


def test_entries_behind_a_changed_file_wait_in_a_bounded_queue(tmp_path: Path, monkeypatch) -> None:
    """A file changed near the start of an otherwise unchanged tree: the entries walked
    after it are written while it is hashed once a few wait, not all held to the end
    (memory would grow with the tree), and the tree keeps its order."""
    import drkit.services.backup as backup_module

    monkeypatch.setattr(backup_module, "_DEFERRED_MAX", 16, raising=False)
    data = tmp_path / "data"
    files = _tree(data, 300)
    _backup(tmp_path, data)
    changed = data / "d00/s0/f00000.txt"  # the first file of the walk
    changed.write_bytes(b"changed " + files["d00/s0/f00000.txt"])
    written_by_walk_end: list[int] = []
    real_finish = SnapshotWriter.finish_tree

    def finish_tree(self: SnapshotWriter) -> list[str]:
        written_by_walk_end.append(self.entry_count)
        return real_finish(self)

    monkeypatch.setattr(SnapshotWriter, "finish_tree", finish_tree)
    stats = _backup(tmp_path, data)
    assert stats["files_changed"] == 1 and stats["files_unmodified"] == 299
    assert written_by_walk_end[0] >= stats["entries"] - 17  # at most 16 (+ the changed file) still waiting
    repo = _repo(tmp_path)
    repo.load_index()
    first, second = sorted(repo.list_snapshots(), key=lambda s: s.time)
    assert [e.path for e in iter_tree(repo, second)] == [e.path for e in iter_tree(repo, first)]
    target = tmp_path / "restored"
    SnapshotReader(repo, second).write_entries(target)
    assert (target / str(changed).lstrip("/")).read_bytes() == b"changed " + files["d00/s0/f00000.txt"]


def test_parent_cursor_holds_one_entry_and_finds_in_walk_order() -> None:
    paths = ["/r", "/r/a", "/r/a/x", "/r/a.txt", "/r/b", "/r/b/y", "/r/c"]
    assert sorted(paths, key=walk_order_key) == paths  # directories before contents, names sorted
    pulled: list[str] = []

    def lines() -> Iterator[bytes]:
        for p in paths:
            pulled.append(p)
            entry = Entry(path=p, type=DIR if p in ("/r", "/r/a", "/r/b") else FILE, size=len(p))
            yield next(encode_entries([entry])).rstrip(b"\n")

    cursor = ParentCursor(lines())
    assert len(pulled) == 1  # nothing read ahead
    assert cursor.find("/r/a") is None  # a directory is never a file's parent entry
    found = cursor.find("/r/a/x")
    assert found is not None and found[0].path == "/r/a/x" and len(pulled) == 3
    assert found[1] == b'{"path":"/r/a/x","type":"file","mode":420,"size":6}'  # the stored line, to reuse
    assert cursor.find("/r/a/new") is None and len(pulled) == 3  # absent: sorts before the current one
    assert cursor.find("/r/a.txt") is not None
    assert cursor.find("/r/b/y") is not None and len(pulled) == 6
    assert cursor.find("/r/a/x") is None  # out of order: not found (a re-read, never a wrong entry)
    assert cursor.find("/r/c") is not None and cursor.find("/r/zz") is None


def test_walk_order_key_orders_as_the_lists_of_components_do() -> None:
    rng = random.Random(7)
    alphabet = ["a", "b", "a.b", "a-", "ab", "Z", "\udcff", "é", " ", "~", "0"]
    paths = ["/" + "/".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    assert sorted(paths, key=walk_order_key) == sorted(paths, key=lambda p: p.split("/"))


def test_a_malformed_parent_line_ends_the_parent_and_is_reported() -> None:
    errors: list[object] = []
    good = b'{"path":"/r/a","type":"file","mode":420}'
    cursor = ParentCursor(iter([good, b'{"path": 5, "type"', good.replace(b"/r/a", b"/r/b")]), on_error=errors.append)
    assert cursor.find("/r/a") is not None
    assert cursor.find("/r/b") is None and len(errors) == 1  # the rest of the run reads everything
    assert "unreadable entry" in str(errors[0])


def test_unchanged_files_reuse_their_stored_line_unless_it_says_something_else(tmp_path: Path, monkeypatch) -> None:
    """The second backup of an unchanged tree writes the parent's file lines as they are
    (none is encoded again); an entry whose owner name changed is encoded afresh."""
    data = tmp_path / "data"
    _tree(data, 200)
    raw_name = os.fsencode(str(data)) + b"/bad-\xff.txt"  # a name that is not UTF-8: path_b64
    with open(raw_name, "wb") as f:
        f.write(b"not utf-8")
    _backup(tmp_path, data)
    repo = _repo(tmp_path)
    (first,) = repo.list_snapshots()
    encoded: list[str] = []
    real_to_json = Entry.to_json
    monkeypatch.setattr(Entry, "to_json", lambda self: encoded.append(self.type) or real_to_json(self))
    import drkit.services.backup as backup_module

    real_entry_line = backup_module.entry_line
    monkeypatch.setattr(backup_module, "entry_line", lambda e, owner: encoded.append(e.type) or real_entry_line(e, owner))
    stats = _backup(tmp_path, data)
    assert stats["files_unmodified"] == 201 and stats["files_new"] == stats["files_changed"] == 0
    assert "file" not in encoded and "dir" in encoded  # directories are encoded, file lines reused
    repo = _repo(tmp_path)
    repo.load_index()
    (second,) = [s for s in repo.list_snapshots() if s.id != first.id]

    def file_lines(snap: Snapshot) -> list[bytes]:
        return [line for line in split_lines(tree_chunks(repo, snap)) if b'"type":"file"' in line]

    assert file_lines(second) == file_lines(first) and len(file_lines(first)) == 201

    real_user = backup_module._Names.user
    monkeypatch.setattr(backup_module._Names, "user", lambda self, uid: "renamed-" + real_user(self, uid))
    stats = _backup(tmp_path, data)
    assert stats["files_unmodified"] == 201  # content not read again...
    repo = _repo(tmp_path)
    repo.load_index()
    third = max(repo.list_snapshots(), key=lambda s: s.time)
    files = [e for e in iter_tree(repo, third) if e.type == FILE]
    assert len(files) == 201 and all(e.user.startswith("renamed-") for e in files)  # ...but its entry is new
    target = tmp_path / "restored"
    SnapshotReader(repo, third).write_entries(target)
    assert (target / os.fsdecode(raw_name).lstrip("/")).read_bytes() == b"not utf-8"


def test_a_stored_line_with_an_unknown_key_is_not_carried_forward() -> None:
    line = b'{"path":"/r/a","type":"file","mode":420,"size":3,"xattrs":{"user.k":"v"}}'
    entry, reusable = parse_line(line)
    assert entry.path == "/r/a" and entry.size == 3 and not reusable
    assert parse_line(b'{"path":"/r/\\ufffd","type":"file","path_b64":"L3Iv/w=="}')[1]  # a name's raw bytes: known
    cursor = ParentCursor(iter([line]))
    found = cursor.find("/r/a")
    assert found is not None and found[1] is None  # re-encoded from the file, without the unknown key


def test_a_file_that_grew_past_one_chunk_after_the_walk_is_cut(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    grower = data / "grows.bin"
    grower.write_bytes(b"a" * 10)
    repo = _repo(tmp_path)
    big = os.urandom(3 * repo.chunker().max_size // 2)
    source = FilesSource("data", FilesSource.Options(paths=[str(data)]))
    real_lstat = os.lstat

    def lstat_then_grow(path: object, *args: object, **kwargs: object) -> os.stat_result:
        st = real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]
        if str(path) == str(grower):
            grower.write_bytes(big)  # after the walk saw 10 bytes
        return st

    import drkit.sources.files as files_module

    original = files_module.os.lstat
    files_module.os.lstat = lstat_then_grow  # type: ignore[assignment]
    try:
        run = run_backup(repo, [source], BackupOptions())
    finally:
        files_module.os.lstat = original  # type: ignore[assignment]
    repo = _repo(tmp_path)
    repo.load_index()
    entry = next(e for e in iter_tree(repo, run.snapshots[0]) if e.path.endswith("grows.bin"))
    assert entry.size == len(big) and len(entry.chunks) >= 2
    target = tmp_path / "restored"
    SnapshotReader(repo, repo.find_snapshot("latest")).write_entries(target)
    assert (target / str(grower).lstrip("/")).read_bytes() == big


def _frame_of(e: Entry) -> tuple[bytes, bytes] | None:
    owner = owner_fragment(e.uid, e.gid, e.user, e.group)
    return None if owner is None else file_line_frame(e.path, e.mode, owner, e.mtime_ns, e.size, e.inode, e.ctime_ns, e.dev)


def _stored_ids(line: bytes, e: Entry) -> list[bytes] | None:
    """stored_chunk_ids of *line* for a file with *e*'s fields, asserted to be what the
    frame gives (its fast path for the usual line must not differ in anything)."""
    owner = owner_fragment(e.uid, e.gid, e.user, e.group)
    if owner is None:
        return None
    ids = stored_chunk_ids(line, e.path, e.mode, owner, e.mtime_ns, e.size, e.inode, e.ctime_ns, e.dev)
    frame = _frame_of(e)
    assert ids == (chunks_in_frame(line, *frame) if frame is not None else None), line
    return ids


def test_the_file_line_frame_is_what_to_json_writes() -> None:
    """The unchanged-file check compares a stored line with the frame of the file's entry
    instead of parsing it: the frame must be byte for byte ``to_json`` around the chunks."""
    rng = random.Random(3)
    names = ["root", "", "www-data", "a b"]
    checked = 0
    for _ in range(2000):
        size = rng.choice([0, 1, 4096, 2**40])
        e = Entry(path=rng.choice(["/srv/x.txt", "rel/y", "/a b/c~d", "/d/ün", "/q\"uote", "/back\\slash", "/nl\nx", "/\udcff"]),
                  type=FILE, mode=rng.choice([0, 0o644, 0o4755]), uid=rng.choice([0, 1000]), gid=rng.choice([0, 33]),
                  user=rng.choice(names), group=rng.choice(names), mtime_ns=rng.choice([0, 1733500000123456789]), size=size,
                  chunks=[f"{rng.getrandbits(256):064x}" for _ in range(rng.randint(1, 3))] if size else [],
                  inode=rng.choice([0, 77]), ctime_ns=rng.choice([0, 1733500000987654321]), dev=rng.choice([0, 2049]))
        line = e.to_json().encode("ascii")
        frame = _frame_of(e)
        if frame is None:  # a name JSON escapes: only parsing compares it (and to_json writes it)
            owner = owner_fragment(e.uid, e.gid, e.user, e.group)
            assert owner is None or entry_line(e, owner) is None
            assert "\\" in e.to_json() and line_path(line) is None
            continue
        assert chunks_in_frame(line, *frame) == _stored_ids(line, e) == [c.encode() for c in e.chunks]
        owner = owner_fragment(e.uid, e.gid, e.user, e.group)
        assert owner is not None and entry_line(e, owner) == line + b"\n"  # how new file entries are written
        d = Entry(path=e.path, type=DIR, mode=e.mode, uid=e.uid, gid=e.gid, user=e.user, group=e.group, mtime_ns=e.mtime_ns)
        assert entry_line(d, owner) == d.to_json().encode("ascii") + b"\n"  # and directory entries
        assert line_path(line) == e.path
        checked += 1
    assert checked > 500


def test_line_paths_are_the_paths_parsing_gives() -> None:
    """A restore's first pass reads paths through line_paths, mostly without parsing:
    it must give what decode_lines gives for every line, also lines no encoder writes."""
    rng = random.Random(5)
    names = ["/srv/x.txt", "rel/y", "/a b/c~d", "/d/ün", "/q\"uote", "/back\\slash", "/nl\nx", "/\udcff", "path", "/p/path"]
    lines = [Entry(path=rng.choice(names), type=rng.choice([FILE, DIR]), user=rng.choice(["", "path", "pathos"]),
                   target=rng.choice(["", "path"])).to_json().encode("ascii") for _ in range(500)]
    lines += [b'{"path":"ok","type":"file","path":"../x"}', b'{"path":"ok","path_b64":"Li4veA==","type":"file"}',
              b'{"type":"file","path":"late"}', b'{"path":"a\\u002fb","type":"file"}', b'{"path":"x","type":"file"} ']
    stream = b"".join(line + b"\n" for line in lines)
    pieces = [stream[i : i + 97] for i in range(0, len(stream), 97)]  # split anywhere
    assert list(line_paths(pieces)) == [e.path for e in decode_lines(pieces)]
    assert [e.path for e in decode_lines(pieces)][-5:] == ["../x", "../x", "late", "a/b", "x"]


def test_a_stored_line_that_differs_from_the_frame_in_anything_is_not_taken() -> None:
    e = Entry(path="/srv/a", type=FILE, mode=0o644, uid=0, gid=0, user="root", group="root", mtime_ns=10, size=5,
              chunks=["ab" * 32], inode=7, ctime_ns=11, dev=3)
    frame = _frame_of(e)
    assert frame is not None
    line = e.to_json().encode("ascii")
    assert chunks_in_frame(line, *frame) == [b"ab" * 32]
    others = [
        line.replace(b'"size":5', b'"size":50'),  # a longer number behind the same digits
        line.replace(b'"mode":420', b'"mode":4200'),
        line.replace(b'"dev":3}', b'"dev":3,"xattrs":{}}'),  # a key this version does not read
        line.replace(b'"chunks":["' + b"ab" * 32, b'"chunks":["' + b"ab" * 33),  # not 32 bytes
        line.replace(b'"]', b'"],"target":"x"'),
        line.replace(b',"chunks":["' + b"ab" * 32 + b'"]', b""),  # no chunks for 5 bytes: not what it says
    ]
    assert chunks_in_frame(others[-1], *frame) == _stored_ids(others[-1], e) == []  # (taken as it is)
    others += [line.replace(b'"]', b'","' + b"cd" * 32 + b'"]')]  # two chunks: not the usual line, still taken
    assert chunks_in_frame(others[-1], *frame) == _stored_ids(others[-1], e) == [b"ab" * 32, b"cd" * 32]
    for other in others[:-2]:
        assert chunks_in_frame(other, *frame) is None and _stored_ids(other, e) is None, other
    changed = Entry(**{**e.__dict__, "mtime_ns": 12})  # type: ignore[misc]
    assert chunks_in_frame(line, *_frame_of(changed)) is None and _stored_ids(line, changed) is None
