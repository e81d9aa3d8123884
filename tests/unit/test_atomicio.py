"""drkit.atomicio: the old file or the whole new one, modes set before the name appears,
no temporary left behind by any failure."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from drkit.atomicio import replacing, write_atomic, write_atomic_from


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_atomic_replaces_content_and_sets_mode(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    write_atomic(path, b"new content", mode=0o640)
    assert path.read_bytes() == b"new content"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert names(tmp_path) == ["state.json"]


def test_text_is_written_as_utf8_and_default_mode_is_private(tmp_path: Path) -> None:
    path = tmp_path / "pass"
    write_atomic(path, "gr\u00fc\u00dfe\n")
    assert path.read_bytes() == "gr\u00fc\u00dfe\n".encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_exception_mid_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    path.write_bytes(b"the old, complete journal")

    class Crash(Exception):
        pass

    with pytest.raises(Crash):
        with replacing(path) as out:
            out.write(b"half of the new jour")
            raise Crash()
    assert path.read_bytes() == b"the old, complete journal"
    assert names(tmp_path) == ["journal.json"]


def test_a_stream_that_fails_half_way_leaves_nothing(tmp_path: Path) -> None:
    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.calls = 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise OSError(5, "Input/output error")
            return b"x" * 100

    path = tmp_path / "db"
    with pytest.raises(OSError, match="Input/output error"):
        write_atomic_from(path, Broken())  # type: ignore[arg-type]
    assert names(tmp_path) == []


def test_verify_sees_the_complete_temporary_and_may_abort(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.db"
    path.write_bytes(b"live")
    seen: list[tuple[bytes, int]] = []

    def refuse(tmp: Path) -> None:
        seen.append((tmp.read_bytes(), stat.S_IMODE(tmp.stat().st_mode)))
        raise ValueError("trailer does not check")

    with pytest.raises(ValueError, match="trailer"):
        write_atomic_from(path, io.BytesIO(b"restored bytes"), mode=0o644, verify=refuse)
    assert seen == [(b"restored bytes", 0o644)]
    assert path.read_bytes() == b"live"
    assert names(tmp_path) == ["snapshot.db"]


def test_write_atomic_from_counts_bytes(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)  # more than one copy block
    assert write_atomic_from(tmp_path / "big", io.BytesIO(data)) == len(data)
    assert (tmp_path / "big").read_bytes() == data


def test_overwrite_false_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "identity"
    write_atomic(path, b"first", overwrite=False)
    with pytest.raises(FileExistsError):
        write_atomic(path, b"second", overwrite=False)
    assert path.read_bytes() == b"first"
    assert names(tmp_path) == ["identity"]


def test_temporaries_are_hidden_and_named_as_asked(tmp_path: Path) -> None:
    path = tmp_path / "node.prom"
    with replacing(path, tmp_prefix=".tmp-", tmp_suffix="") as out:
        out.write(b"x 1\n")
        (during,) = [n for n in names(tmp_path)]
    assert during.startswith(".tmp-node.prom.") and not during.endswith(".prom")
    assert names(tmp_path) == ["node.prom"]


def test_a_symlink_at_the_temporary_name_is_not_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    monkeypatch.setattr("drkit.atomicio.temporary_name", lambda path, *a: tmp_path / ".planted")
    (tmp_path / ".planted").symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_atomic(tmp_path / "target", b"data")
    assert victim.read_bytes() == b"keep me"
    assert not (tmp_path / "target").exists()


def test_missing_directory_raises_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "absent" / "file", b"x")
    assert names(tmp_path) == []


def test_parents_true_creates_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "state" / "runs" / "journal.json"
    write_atomic(path, "{}", parents=True)
    assert path.read_text() == "{}"
    assert names(path.parent) == ["journal.json"]
