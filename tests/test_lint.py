"""The tree stays clean under the pinned linter and type checker.

``ruff check`` and ``mypy`` (configured in pyproject.toml: strict on drkit/repository,
drkit/storage and drkit/services) run as tests, so every merge (which runs pytest) is held
to them. A missing tool fails the test everywhere, not only under CI=true: both are pinned
in the ``test`` extra, so the fix is one install, and a skip would let unlinted code land.
Their caches live in the virtualenv, outside the work tree.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(sys.prefix)


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed; run: rm .venv/.installed; make venv  (or pip install -e '.[test]')")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=240)


def test_ruff_finds_nothing() -> None:
    _require("ruff")
    result = _run("ruff", "check", "--no-fix", "--cache-dir", str(CACHE / ".ruff_cache"), "drkit", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All checks passed" in result.stdout


def test_mypy_finds_nothing() -> None:
    _require("mypy")
    result = _run("mypy", "--cache-dir", str(CACHE / ".mypy_cache"), "drkit")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout
