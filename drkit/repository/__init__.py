"""The on-storage repository format (see docs/format.md)."""

from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot
from drkit.repository.tree import Entry

__all__ = ["Repository", "Snapshot", "Entry"]
