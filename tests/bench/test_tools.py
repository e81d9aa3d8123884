"""The benchmark's measuring harness (no timing asserted: the benchmark is ``make bench``)."""

from __future__ import annotations

import subprocess
import sys
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
