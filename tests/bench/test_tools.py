"""The benchmark's measuring harness (no timing asserted: the benchmark is ``make bench``)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import tools


def test_each_measured_step_starts_after_earlier_writes_are_on_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A data set written (or mutated, or restored to disk) just before a step leaves dirty
    pages that the kernel writes back during it: whichever tool runs first would pay for
    them. Every measured step is preceded by a sync, outside its timing."""
    events: list[str] = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):  # type: ignore[no-untyped-def]
        events.append("start")
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(tools.os, "sync", lambda: events.append("sync"))
    monkeypatch.setattr(tools.subprocess, "Popen", popen)
    m = tools.run_measured([sys.executable, "-c", "print('measured')"], env={"PATH": "/usr/bin:/bin"})
    assert events == ["sync", "start"]
    assert m.stdout.strip() == "measured" and m.wall > 0


def test_peak_rss_counts_the_whole_process_tree() -> None:
    """A tool that works in worker processes is measured whole: a child holding 96 MiB
    under a parent that holds little shows up in the peak, read through /proc files
    opened once and read again in place."""
    child = "import time; x = bytearray(96 * 1024 * 1024); x[::4096] = b'x' * len(x[::4096]); time.sleep(0.6)"
    m = tools.run_measured([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"],
                           env={"PATH": "/usr/bin:/bin"})
    assert m.maxrss_kib > 96 * 1024
    alone = tools.run_measured([sys.executable, "-c", "pass"], env={"PATH": "/usr/bin:/bin"})
    assert alone.maxrss_kib < 64 * 1024


def test_the_peak_of_the_measured_program_is_the_kernels_high_water_mark() -> None:
    """Read through a /proc file opened when the child was started (before its exec):
    the peak of the program it became, also after that memory was freed."""
    proc = subprocess.Popen([sys.executable, "-c", "x = bytearray(100_000_000); del x; import time; time.sleep(2)"])
    tree = tools._TreeRss(proc.pid)
    try:
        deadline = time.monotonic() + 5
        while not tree.peak_of_top() >= 95_000 > tree() and time.monotonic() < deadline:
            time.sleep(0.05)  # (until the child has allocated and freed it: the peak read before the free flaked)
        assert tree.peak_of_top() >= 95_000 > tree()  # KiB: the peak stays, the memory is gone
    finally:
        proc.kill()
        proc.wait()
        tree.close()
    assert tree.peak_of_top() == 0  # (closed)
