"""Machine output shared by the browsing commands: one JSON object per line."""

from __future__ import annotations

import json
from typing import Any

import click


def json_line(obj: Any) -> None:
    """Print *obj* as one compact JSON line on stdout (JSON Lines)."""
    click.echo(json.dumps(obj, separators=(",", ":"), default=str))
