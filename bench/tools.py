"""The programs under comparison, each behind the same four steps.

Every step runs as a child process, timed with a monotonic clock and measured with
``os.wait4`` (the rusage of that child and the processes it waited for: CPU time)
and, polled every 5 ms (:data:`POLL`), its ``VmHWM`` and the resident sets of its
whole process tree (peak RSS: the larger of the child's own peak and the highest sum
over the tree, so a tool that works in several processes is measured whole), so one
tool's figures never mix with another's.

Settings, chosen to be comparable (see bench/README.md):

- drkit: ``compression: auto`` (the default), passphrase key slot, local repository.
- restic: repository format 2 (restic 0.14's default), compression ``auto``
  (zstd "default" level in restic's Go zstd), passphrase.
- borg: ``repokey-blake2`` (AES-256-CTR + keyed BLAKE2b), ``--compression zstd,3``
  (the level drkit's ``auto`` uses), passphrase.

All three skip unchanged files on the second backup (parent snapshot / files cache)
and restore into an empty directory under the original absolute path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PASSPHRASE = "drkit-bench-passphrase"
ROOT = Path(__file__).resolve().parents[1]


class StepFailed(RuntimeError):
    """A tool exited non-zero; the message carries its stderr tail."""


@dataclass
class Measured:
    wall: float
    cpu: float
    maxrss_kib: int
    stdout: str


POLL = 0.005
"""Seconds between two looks at the measured process tree. The poller runs on the same
cores as the tool it measures: every 2 ms, reading /proc/PID/status of each process
took 15% of a core with four processes in the tree (a 2-core run of drkit lost about
7% of its CPU to it, a tool that leaves a core idle less); every 5 ms, with the tree's
resident sets from statm and each /proc file opened once, about 5% (0.16 s of CPU in
3 s). The child's own peak (VmHWM) is the kernel's, exact whatever the interval."""


def run_measured(argv: list[str], *, env: dict[str, str], cwd: Path | None = None, timeout: float = 3600) -> Measured:
    """Run *argv*; return wall time, CPU (user+sys) and peak RSS of that child alone.

    Starts with a sync, outside the timing: dirty pages left by what ran before (a data
    set generated or mutated, a restore to disk) would otherwise be written back during
    this step and charged to whichever tool happens to run first (seen: a first backup
    right after generating the small-files set took 6.81 s with 10.9 s of CPU, 5.51 s
    with 8.9 s in the next run on the same data).

    Raises StepFailed (with the stderr tail) on a non-zero exit or a timeout."""
    os.sync()
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-out-{os.getpid()}.txt"
    err_path = out_path.with_suffix(".err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        deadline = start + timeout
        hwm = 0
        tree = _TreeRss(proc.pid)
        try:
            while True:
                hwm = max(hwm, tree.peak_of_top(), tree())
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    os.wait4(proc.pid, 0)
                    raise StepFailed(f"{argv[0]} timed out after {timeout:.0f}s")
                time.sleep(POLL)
        finally:
            tree.close()
        wall = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    out_path.unlink(missing_ok=True)
    err_path.unlink(missing_ok=True)
    if proc.returncode != 0:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        raise StepFailed(f"{' '.join(argv[:3])} ... exited {proc.returncode}: {tail}")
    # ru_maxrss of a child starts from its parent's RSS at fork (Linux keeps the
    # high-water mark across execve), so a big parent (moto's server holds the bucket in
    # memory) would inflate it: use the child's own VmHWM, polled.
    return Measured(wall, usage.ru_utime + usage.ru_stime, hwm or usage.ru_maxrss, stdout)


_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class _TreeRss:
    """The resident sets (VmRSS) of a process and its descendants, summed, and the
    process's own peak (VmHWM). The descendants are found by a scan of /proc at most
    every 100 ms (this kernel may lack ``/proc/PID/task/TID/children``); their VmRSS is
    read at every call. Each /proc file is opened once and read again in place (procfs
    makes it anew on every read): opening them for every look cost more than reading."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._below: set[int] = set()
        self._scanned = 0.0
        self._statm: dict[int, int | None] = {}
        self._status = _open_proc(pid, "status")

    def peak_of_top(self) -> int:
        """The process's own VmHWM in KiB, 0 once it is gone."""
        data = _pread(self._status)
        at = data.find(b"VmHWM:")
        return int(data[at + 6 : data.index(b"kB", at)]) if at >= 0 else 0

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self._scanned > 0.1:
            self._scanned = now
            self._below = _descendants(self.pid)
            for gone in self._statm.keys() - self._below - {self.pid}:
                _close(self._statm.pop(gone))
        total = 0
        for pid in (self.pid, *self._below):
            if pid not in self._statm:
                self._statm[pid] = _open_proc(pid, "statm")
            fields = _pread(self._statm[pid]).split()
            total += int(fields[1]) * _PAGE_KIB if len(fields) > 1 else 0
        return total

    def close(self) -> None:
        """Close the /proc files (idempotent); the peak reads 0 from then on."""
        for fd in (self._status, *self._statm.values()):
            _close(fd)
        self._status = None
        self._statm.clear()


def _open_proc(pid: int, name: str) -> int | None:
    try:
        return os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _pread(fd: int | None) -> bytes:
    """What a /proc file says now (b"" once its process is gone)."""
    if fd is None:
        return b""
    try:
        return os.pread(fd, 4096, 0)
    except OSError:
        return b""


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _descendants(pid: int) -> set[int]:
    """The processes below *pid* (from the parent ids in /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
                parent = int(stat[stat.rindex(b")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def dir_bytes(path: Path) -> int:
    """Bytes of regular files under *path* (apparent sizes)."""
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except FileNotFoundError:
                pass
    return total


@dataclass
class Tool:
    """One program: a repository under *work*, backing up *data*."""

    name: str
    work: Path
    data: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def repo(self) -> Path:
        return self.work / "repo"

    def reset(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.setup()

    def setup(self) -> None: ...

    def version(self) -> str: ...

    def init(self) -> Measured: ...

    def backup(self, label: str) -> tuple[Measured, dict[str, Any]]: ...

    def restore(self, target: Path) -> Measured: ...

    def restored_root(self, target: Path) -> Path:
        return target / str(self.data).lstrip("/")


def _base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")
    return {k: v for k, v in os.environ.items() if k in keep}


class Drkit(Tool):
    compression = "auto"

    def setup(self) -> None:
        cfg = self.work / "drkit.yaml"
        cfg.write_text(
            "repository:\n"
            f"  url: {self.repo}\n"
            f"  compression: {self.compression}\n"
            "sources:\n"
            "  - name: data\n"
            "    type: files\n"
            f"    paths: [{self.data}]\n"
        )
        cfg.chmod(0o600)
        # Its state and cache directories in the work directory, as restic's cache is:
        # never /var/lib/drkit or /var/cache/drkit, and every run starts without either.
        self.env = _base_env() | {"DRKIT_PASSWORD": PASSPHRASE, "DRKIT_STATE_DIR": str(self.work / "state"),
                                  "DRKIT_CACHE_DIR": str(self.work / "cache")}
        self.env["PYTHONPATH"] = str(ROOT) + (os.pathsep + self.env["PYTHONPATH"] if self.env.get("PYTHONPATH") else "")

    def _argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "drkit", "-c", str(self.work / "drkit.yaml"), *args]

    def version(self) -> str:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "drkit"], capture_output=True, text=True, check=False).stdout.strip()
        return f"drkit {rev}{'+dirty' if dirty else ''}"

    def init(self) -> Measured:
        return run_measured(self._argv("init"), env=self.env)

    def backup(self, label: str) -> tuple[Measured, dict[str, Any]]:
        m = run_measured(self._argv("backup", "--json", "--tag", label), env=self.env)
        snap = json.loads(m.stdout)["snapshots"][0]
        return m, {"bytes_added_raw": snap["bytes_added"], "bytes_added_stored": snap.get("bytes_stored")}

    def restore(self, target: Path) -> Measured:
        return run_measured(self._argv("restore", "latest", "--source", "data", "--target", str(target)), env=self.env)


class Restic(Tool):
    def setup(self) -> None:
        self.env = _base_env() | {
            "RESTIC_PASSWORD": PASSPHRASE,
            "RESTIC_REPOSITORY": str(self.repo),
            "RESTIC_CACHE_DIR": str(self.work / "cache"),
        }

    def version(self) -> str:
        return subprocess.run(["restic", "version"], capture_output=True, text=True, check=False).stdout.split(" compiled")[0].strip()

    def init(self) -> Measured:
        return run_measured(["restic", "init", "--quiet"], env=self.env)

    def backup(self, label: str) -> tuple[Measured, dict[str, Any]]:
        m = run_measured(["restic", "backup", "--json", "--quiet", "--tag", label, str(self.data)], env=self.env)
        summary = [json.loads(line) for line in m.stdout.splitlines() if '"summary"' in line][-1]
        return m, {"bytes_added_raw": summary["data_added"], "bytes_added_stored": summary.get("data_added_packed")}

    def restore(self, target: Path) -> Measured:
        return run_measured(["restic", "restore", "--quiet", "latest", "--target", str(target)], env=self.env)


class Borg(Tool):
    compression = "zstd,3"

    def setup(self) -> None:
        self.env = _base_env() | {
            "BORG_PASSPHRASE": PASSPHRASE,
            "BORG_REPO": str(self.repo),
            "BORG_BASE_DIR": str(self.work / "base"),
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def version(self) -> str:
        return subprocess.run(["borg", "--version"], capture_output=True, text=True, check=False).stdout.strip()

    def init(self) -> Measured:
        return run_measured(["borg", "init", "--encryption", "repokey-blake2"], env=self.env)

    def backup(self, label: str) -> tuple[Measured, dict[str, Any]]:
        m = run_measured(["borg", "create", "--json", "--compression", self.compression, f"::{label}", str(self.data)], env=self.env)
        stats = json.loads(m.stdout)["archive"]["stats"]
        # borg reports new data only after compression ("deduplicated_size").
        return m, {"bytes_added_raw": None, "bytes_added_stored": stats["deduplicated_size"]}

    def restore(self, target: Path) -> Measured:
        target.mkdir(parents=True, exist_ok=True)
        listing = run_measured(["borg", "list", "--short", "--last", "1", "::"], env=self.env).stdout.split()
        return run_measured(["borg", "extract", f"::{listing[-1]}"], env=self.env, cwd=target)


class DrkitZstd3(Drkit):
    """drkit at zstd level 3 (what restic's and borg's settings here use), for reference."""

    compression = "3"


TOOLS: dict[str, type[Tool]] = {"drkit": Drkit, "drkit-z3": DrkitZstd3, "restic": Restic, "borg": Borg}
