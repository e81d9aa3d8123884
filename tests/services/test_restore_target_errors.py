"""A restore target that cannot take the data (full, read-only, not allowed, removed
under the restore) ends the restore with one clear error and exit code, not an
internal error; temporaries are removed and nothing half-written is left in place."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from drkit.errors import EXIT_STORAGE, RestoreTargetError
from drkit.repository.repo import Repository
from drkit.services.restorefs import TMP_PREFIX
from drkit.services.backup import BackupOptions, run_backup
from drkit.services.restore import SnapshotReader
from drkit.sources.files import FilesSource
from drkit.storage import LocalStorage
from tests.cli import invoke


def _snapshot(tmp_path: Path) -> tuple[Repository, Path]:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(40):
        (data / f"f{i:02d}.txt").write_bytes(os.urandom(100 + i) * 3)
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw")
    repo = Repository.open(storage, "pw")
    run_backup(repo, [FilesSource("data", FilesSource.Options(paths=[str(data)]))], BackupOptions())
    repo.load_index()
    return repo, data


def _fail_writes_to_temporaries(monkeypatch: pytest.MonkeyPatch, code: int, *, after: int) -> None:
    """Make every write (``write`` or ``pwrite``) to a restore temporary after the
    first *after* fail with errno *code*, as a full or broken target would."""
    calls = {"n": 0}
    real_write, real_pwrite = os.write, os.pwrite

    def to_temporary(fd: int) -> bool:
        try:
            # (not yet under its real path: a temporary, or a file in a staging directory)
            return any(part.startswith(TMP_PREFIX) for part in Path(os.readlink(f"/proc/self/fd/{fd}")).parts)
        except OSError:
            return False

    def check(fd: int) -> None:
        if to_temporary(fd):
            calls["n"] += 1
            if calls["n"] > after:
                raise OSError(code, os.strerror(code))

    def write(fd: int, data: Any) -> int:
        check(fd)
        return real_write(fd, data)

    def pwrite(fd: int, data: Any, offset: int) -> int:
        check(fd)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "pwrite", pwrite)


@pytest.mark.parametrize(("code", "hint_part"), [
    (errno.ENOSPC, "free space"),
    (errno.EROFS, "read-only"),
    (errno.EACCES, "may write"),
    (errno.EIO, "another --target"),
    (errno.ENOENT, "run the restore again"),
])
def test_a_target_that_cannot_be_written_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            code: int, hint_part: str) -> None:
    repo, _ = _snapshot(tmp_path)
    _fail_writes_to_temporaries(monkeypatch, code, after=5)
    target = tmp_path / "target"
    with pytest.raises(RestoreTargetError) as info:
        SnapshotReader(repo, repo.find_snapshot("latest")).write_entries(target)
    err = info.value
    assert err.exit_code == EXIT_STORAGE
    assert os.strerror(code) in err.message and str(target) in err.message
    assert err.hint is not None and hint_part in err.hint
    left = [p.name for p in target.rglob("*") if p.name.startswith(".drkit-tmp")]
    assert left == []  # no temporary left behind


def test_the_cli_reports_a_full_target_in_one_line_with_exit_8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, data = _snapshot(tmp_path)
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text(f"repository:\n  url: {tmp_path / 'repo'}\nsources:\n  - name: data\n    type: files\n    paths: [{data}]\n")
    cfg.chmod(0o600)

    _fail_writes_to_temporaries(monkeypatch, errno.ENOSPC, after=0)
    res = invoke("-c", cfg, "restore", "latest", "--source", "data", "--target", tmp_path / "t", env={"DRKIT_PASSWORD": "pw"})
    assert res.code == EXIT_STORAGE, res.text
    assert "internal error" not in res.text
    lines = res.err.strip().splitlines()
    assert lines[0].startswith("error: ") and "No space left on device" in lines[0]
    assert lines[1].startswith("hint: ") and "free space" in lines[1]
