"""Progress reporting seam shared by the services (backup, restore, copy, drill).

A service reports progress to a :class:`ProgressSink`; the CLI renders it (rich, on a
terminal) or passes None. Sinks never affect what a service does.
"""

from __future__ import annotations


class ProgressSink:
    """Receives progress; the CLI renders it (rich) or ignores it. Every method is a no-op here."""

    def start_source(self, name: str, total: int | None) -> None: ...

    def set_total(self, total: int) -> None:
        """The size of the current source became known (a counting pass finished)."""

    def advance(self, n: int) -> None: ...

    def text(self, text: str) -> None: ...

    def end_source(self) -> None: ...
