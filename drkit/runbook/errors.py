"""Errors of the runbook engine, each mapped to an exit code of :mod:`drkit.errors`."""

from __future__ import annotations

from drkit.errors import EXIT_PARTIAL, EXIT_REFUSED, EXIT_STORAGE, DrkitError, UsageError


class RunbookError(UsageError):
    """{message}"""

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        self.where = where
        super().__init__(hint=hint, message=f"{where}: {message}" if where else message)


class RunbookNotFound(RunbookError):
    """{message}"""

    default_hint = "'drkit runbook list' shows the runbooks found (and where it looked)"


class StepFailed(DrkitError):
    """{message}"""

    exit_code = EXIT_PARTIAL


class HostKeyRejected(DrkitError):
    """{message}"""

    exit_code = EXIT_REFUSED


class TargetUnreachable(DrkitError):
    """{message}"""

    exit_code = EXIT_STORAGE
