"""The ``drkit`` command line: thin commands over the services.

Each command group lives in its own module under ``drkit.cli`` and registers itself on
:data:`drkit.cli.app.cli` when imported; :data:`drkit.cli.app.COMMANDS` maps each command
to its module, imported when the command is looked up (:class:`drkit.cli.app.LazyGroup`).
"""

from __future__ import annotations

import sys

try:  # Ctrl-C while the modules load (the first half second) is an interrupt, not a traceback
    from drkit.cli.app import cli, main
except KeyboardInterrupt:
    sys.stderr.write("interrupted\n")
    raise SystemExit(130) from None

__all__ = ["cli", "main"]
