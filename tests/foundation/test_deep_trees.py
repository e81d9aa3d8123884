"""#14 case 4: a directory 1,200 levels deep gave RecursionError and no snapshot for
any source of the run. The walk is iterative: the too-deep subtree is skipped with a
warning (exit 7), everything else of the run is saved and restores, deep paths too.

The tree here is 300 levels deep with Python's recursion limit lowered to 250 for the
run (the same failure as 1,200 levels at the default limit, and a tree that pytest's
own recursive cleanup can still remove), and ``MAX_DEPTH`` lowered to 200."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from drkit.errors import EXIT_PARTIAL
from drkit.sources import files
from tests.foundation.conftest import Workspace

LEVELS = 300


def _nest(root: Path, levels: int) -> None:
    """root/d/d/.../d (levels deep) with bottom.txt at the end, made through dir fds."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(levels):
        os.mkdir("d", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    with open(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
        f.write(b"bottom")
    os.close(fd)


def _depth(base: Path) -> int:
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    depth = 0
    while True:
        try:
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        except FileNotFoundError:
            break
        os.close(fd)
        fd, depth = nxt, depth + 1
    os.close(fd)
    return depth


def test_a_too_deep_tree_is_skipped_with_a_warning_and_the_run_is_saved(
        ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = ws.root / "deep"
    deep.mkdir()
    (deep / "top.txt").write_bytes(b"top")
    _nest(deep, LEVELS)
    doc = yaml.safe_load(ws.config.read_text())
    doc["sources"].append({"name": "deep", "type": "files", "paths": [str(deep)]})
    ws.config.write_text(yaml.safe_dump(doc))
    ws.ok("init")
    max_depth = len(deep.parts) + 200
    monkeypatch.setattr(files, "MAX_DEPTH", max_depth)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(250)
    try:
        r = ws.run("backup", "--json")
        target = ws.root / "t"
        restored = ws.run("restore", "latest", "-s", "deep", "--target", str(target))
    finally:
        sys.setrecursionlimit(limit)
    assert r.code == EXIT_PARTIAL, r.err
    assert "RecursionError" not in r.err and "Traceback" not in r.err
    assert f"deeper than {max_depth} levels" in r.err
    snaps = {s["source"]: s for s in ws.ok("snapshots", "--json").json()}
    assert set(snaps) == {"data", "deep"}
    assert restored.code == 0, restored.err
    base = target / str(deep).lstrip("/")
    assert (base / "top.txt").read_bytes() == b"top"
    assert _depth(base) == 201  # every directory within the bound (MAX_DEPTH path components), restored without recursion
