"""Profile drkit's backup and restore in-process (no CLI): for perf work only.

    python bench/profile_drkit.py DATA_DIR WORK_DIR [--restore] [--level N]

Wall time and throughput are printed; run under ``py-spy record`` or with
``--cprofile FILE`` to see where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drkit.repository.repo import Repository
from drkit.services.backup import BackupOptions, run_backup
from drkit.services.restore import SnapshotReader
from drkit.sources.files import FilesSource
from drkit.storage.local import LocalStorage


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--cprofile")
    ap.add_argument("--skip-backup", action="store_true")
    ap.add_argument("--restore", action="store_true")
    args = ap.parse_args()
    repo_dir = args.work / "repo"
    prof = cProfile.Profile() if args.cprofile else None
    if not args.skip_backup:
        shutil.rmtree(repo_dir, ignore_errors=True)
        Repository.init(LocalStorage(str(repo_dir)), "pw", compression_level=args.level)
    repo = Repository.open(LocalStorage(str(repo_dir)), "pw", compression_level=args.level)
    src = FilesSource("data", FilesSource.Options(paths=[str(args.data.resolve())]))
    if not args.skip_backup:
        t = time.monotonic()
        if prof:
            prof.enable()
        run = run_backup(repo, [src], BackupOptions())
        if prof:
            prof.disable()
        dt = time.monotonic() - t
        st = run.snapshots[0].stats
        print(f"backup {dt:.2f}s  {st['bytes_read'] / dt / 2**20:.0f} MiB/s  added {st['bytes_added']} stored {st['bytes_stored']}")
    if args.restore:
        repo.load_index()
        snap = repo.find_snapshot("latest")
        target = args.work / "restore"
        shutil.rmtree(target, ignore_errors=True)
        t = time.monotonic()
        if prof:
            prof.enable()
        SnapshotReader(repo, snap, target=target).write_entries(target)
        if prof:
            prof.disable()
        dt = time.monotonic() - t
        print(f"restore {dt:.2f}s")
    if prof:
        prof.dump_stats(args.cprofile)
    print(f"maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
