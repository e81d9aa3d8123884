"""One wording for YAML that does not parse (the config, runbooks, saved manifests)."""

from __future__ import annotations

import yaml


def not_valid_yaml(exc: yaml.YAMLError, subject: str | None = None) -> str:
    """``SUBJECT is not valid YAML at line L, column C: PROBLEM`` (1-based, as editors count;
    the position only when PyYAML knows it; without *subject*: ``not valid YAML ...``).
    Always one line, for a one-line error message."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{subject + ' is ' if subject else ''}not valid YAML{at}: {problem}"
