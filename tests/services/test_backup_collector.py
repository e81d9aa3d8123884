"""``drkit backup`` runs the walk with the cyclic collector paced for many small objects
(#18: it took 0.06-0.2 s of an unchanged backup of 100k files), and puts it back after."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import drkit.cli.backup_cmd as backup_cmd
from tests.cli import Runner
from tests.services.conftest import write_config


def test_the_backup_walk_skips_the_long_lived_heap_and_collects_young_objects_less_often(
        tmp_path: Path, drkit: Runner, monkeypatch) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.txt").write_bytes(b"a")
    cfg = write_config(tmp_path / "drkit.yaml", str(tmp_path / "repo"), [{"name": "data", "type": "files", "paths": [str(root)]}])
    env = {"DRKIT_PASSWORD": "pace"}
    assert drkit("-c", cfg, "init", env=env).code == 0
    seen: list[tuple[int, tuple[int, int, int]]] = []
    real_run_backup = backup_cmd.run_backup

    def run_backup(*args: Any, **kwargs: Any) -> Any:
        seen.append((gc.get_freeze_count(), gc.get_threshold()))
        return real_run_backup(*args, **kwargs)

    monkeypatch.setattr(backup_cmd, "run_backup", run_backup)
    before = (gc.get_freeze_count(), gc.get_threshold())
    r = drkit("-c", cfg, "backup", env=env)
    assert r.code == 0, r.err
    (during,) = seen
    assert during[0] > 1000 and during[1][0] == 10_000 and during[1][1:] == before[1][1:]
    assert (gc.get_freeze_count(), gc.get_threshold()) == before  # undone: other commands run in this process too
