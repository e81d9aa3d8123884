"""The ``drkit`` command line: thin commands over the services.

Each command group lives in its own module under ``drkit.cli`` and registers itself on
:data:`drkit.cli.app.cli` when imported; :data:`COMMAND_MODULES` lists them.
"""

from __future__ import annotations

import importlib
import sys

try:  # Ctrl-C while the modules load (the first half second) is an interrupt, not a traceback
    from drkit.cli.app import cli, main
except KeyboardInterrupt:
    sys.stderr.write("interrupted\n")
    raise SystemExit(130) from None

COMMAND_MODULES = [
    "drkit.cli.init_cmd",
    "drkit.cli.backup_cmd",
    "drkit.cli.snapshots_cmd",
    "drkit.cli.restore_cmd",
    "drkit.cli.verify_cmd",
    "drkit.cli.forget_cmd",
    "drkit.cli.key_cmd",
    "drkit.cli.unlock_cmd",
    "drkit.cli.demo_cmd",
    "drkit.cli.runbook_cmd",
    "drkit.cli.schedule_cmd",
    "drkit.cli.copy_cmd",
    "drkit.cli.drill_cmd",
    "drkit.cli.config_cmd",
    "drkit.cli.upgrade_cmd",
    "drkit.cli.repair_cmd",
    "drkit.cli.ls_cmd",
    "drkit.cli.diff_cmd",
    "drkit.cli.find_cmd",
    "drkit.cli.dump_cmd",
    "drkit.cli.stats_cmd",
    "drkit.cli.tag_cmd",
]

try:
    for _module in COMMAND_MODULES:
        importlib.import_module(_module)
except KeyboardInterrupt:
    sys.stderr.write("interrupted\n")
    raise SystemExit(130) from None

__all__ = ["cli", "main"]
