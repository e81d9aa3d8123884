"""#14 case 4: a key slot's KDF cost is bounded (memory and time) and slots are tried
cheapest first, so a hostile slot (n=2^24, named to sort first) cannot make every
open fail with MemoryError or take minutes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from drkit.errors import WrongKey
from drkit.repository import keys as keyslots
from drkit.repository import layout
from drkit.repository.repo import Repository
from drkit.storage import LocalStorage


def _plant(storage: LocalStorage, name: str, n: int, r: int = 8, p: int = 1) -> None:
    doc = {"version": 1, "kdf": "scrypt", "n": n, "r": r, "p": p, "salt": "AAAA", "data": "AAAA", "label": "evil"}
    storage.put(layout.key_name(name), json.dumps(doc).encode())


def test_a_slot_with_an_unbounded_kdf_cost_is_skipped(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    Repository.init(storage, "pw")
    _plant(storage, "0" * 64, n=2**24)            # 16 GiB of memory
    _plant(storage, "1" * 64, n=2**14, p=2**16)   # little memory, hours of work
    started = time.monotonic()
    repo = Repository.open(storage, "pw")
    assert repo.key_id not in ("0" * 64, "1" * 64)
    assert time.monotonic() - started < 5
    with pytest.raises(WrongKey) as info:
        Repository.open(storage, "not it")
    assert "\n" not in info.value.message


def test_slots_are_tried_cheapest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path / "repo")
    repo = Repository.init(storage, "pw")
    repo.add_key("second")  # same (test) cost
    _plant(storage, "0" * 64, n=2**15, r=8, p=1)  # costlier, but sorts first by name
    tried: list[int] = []
    real = keyslots._derive

    def spy(passphrase: str, salt: bytes, params: keyslots.KdfParams) -> bytes:
        tried.append(params.n * params.r * params.p)
        return real(passphrase, salt, params)

    monkeypatch.setattr(keyslots, "_derive", spy)
    with pytest.raises(WrongKey):
        Repository.open(storage, "none of them")
    assert tried == sorted(tried) and len(tried) == 3


def test_kdf_bounds_reject_absurd_parameters() -> None:
    keyslots.check_kdf(keyslots.DEFAULT_KDF)
    for bad in (keyslots.KdfParams(2**24, 8, 1), keyslots.KdfParams(2**16, 8, 2**10), keyslots.KdfParams(3, 8, 1),
                keyslots.KdfParams(2**16, 0, 1)):
        with pytest.raises(ValueError):
            keyslots.check_kdf(bad)
