"""drkit.localstate: the host id and state files (atomic, private, agreed on by racing first runs)."""

from __future__ import annotations

import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from drkit.localstate import HOST_ID_FILE, cache_dir, host_id, state_dir, write_state_file


def test_host_id_is_made_once_private_and_then_read_back(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "drkit"
    first = host_id(directory)
    assert len(first) == 32 and int(first, 16) >= 0
    assert host_id(directory) == first
    assert stat.S_IMODE((directory / HOST_ID_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_a_damaged_host_id_is_replaced(tmp_path: Path) -> None:
    (tmp_path / HOST_ID_FILE).write_text("not-an-id\n")
    new = host_id(tmp_path)
    assert len(new) == 32 and (tmp_path / HOST_ID_FILE).read_text().strip() == new


def test_first_runs_racing_agree_on_one_host_id(tmp_path: Path, monkeypatch) -> None:
    # Four first runs all find no id file, then each makes one: only the first may stand.
    racers = 4
    all_looked = threading.Barrier(racers)
    looked: set[int] = set()
    real_read = Path.read_text

    def read_text(self: Path, *args, **kwargs) -> str:
        me = threading.get_ident()
        if self.name == HOST_ID_FILE and me not in looked:
            looked.add(me)
            all_looked.wait(timeout=10)
            raise FileNotFoundError(self)
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    with ThreadPoolExecutor(racers) as pool:
        ids = list(pool.map(lambda _: host_id(tmp_path), range(racers)))
    monkeypatch.undo()
    assert len(set(ids)) == 1, ids
    assert (tmp_path / HOST_ID_FILE).read_text().strip() == ids[0]


def test_state_file_refuses_to_overwrite_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_state_file(target, b"one")
    try:
        write_state_file(target, b"two", overwrite=False)
    except FileExistsError:
        pass
    else:
        raise AssertionError("overwrote")
    assert target.read_bytes() == b"one"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temporary left behind


@pytest.mark.parametrize(("env", "uid", "state", "cache"), [
    ({"DRKIT_STATE_DIR": "/s", "DRKIT_CACHE_DIR": "/c", "HOME": "/h"}, 0, "/s", "/c"),
    ({"HOME": "/h"}, 0, "/var/lib/drkit", "/var/cache/drkit"),
    ({"HOME": "/h"}, 1000, "/h/.local/state/drkit", "/h/.cache/drkit"),
    ({"HOME": "/h", "XDG_STATE_HOME": "/xs", "XDG_CACHE_HOME": "/xc"}, 1000, "/xs/drkit", "/xc/drkit"),
])
def test_state_and_cache_directories_follow_the_environment(env: dict[str, str], uid: int, state: str, cache: str) -> None:
    assert (state_dir(env, uid=uid), cache_dir(env, uid=uid)) == (Path(state), Path(cache))
