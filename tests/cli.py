"""Run ``drkit`` in this process, the one way tests do it.

:func:`invoke` goes through :func:`drkit.cli.app.run_cli`, the real entry point, so exit
codes and the one-line error messages are exactly what a user sees; it also hands back the
exception drkit ended with (``CliResult.exception``), for tests that check an error's class,
hint or fields. stdout and stderr are captured per call; *env* is set for the call only (the
CLI reads the environment when it starts).

The ``drkit`` fixture (tests/conftest.py) is :func:`invoke`; workspaces and source helpers
(``tests/foundation/conftest.py``, ``tests/sources/kube_cli.py``) build on it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

from drkit.cli import cli
from drkit.cli.app import run_cli


@dataclass
class CliResult:
    """What one ``drkit`` run did: exit code, stdout, stderr, and the error it ended with."""

    code: int
    out: str
    err: str
    exception: BaseException | None = None

    @property
    def text(self) -> str:
        return self.out + self.err

    def json(self) -> Any:
        return json.loads(self.out)

    # The names of click.testing.Result, which some source tests were written against.
    @property
    def exit_code(self) -> int:
        return self.code

    @property
    def stdout(self) -> str:
        return self.out

    @property
    def output(self) -> str:
        return self.out + self.err


Runner = Callable[..., CliResult]


class _Recording:
    """``cli`` for :func:`run_cli`, remembering the exception the command raised."""

    def __init__(self) -> None:
        self.exception: BaseException | None = None

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return cli.main(*args, **kwargs)
        except BaseException as exc:
            self.exception = exc
            raise


@contextlib.contextmanager
def _captured() -> Iterator[tuple[io.TextIOWrapper, io.TextIOWrapper]]:
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            yield out, err
        finally:
            # drkit's log handler was made on the captured stderr: point it back, so that
            # a late log line (a thread finishing) does not write to a stream read already.
            for handler in logging.getLogger("drkit").handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is err:
                    handler.setStream(sys.__stderr__)


def _text(stream: io.TextIOWrapper) -> str:
    buffer = stream.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue().decode("utf-8", errors="replace")


def invoke(*args: object, env: dict[str, str] | None = None) -> CliResult:
    """Run ``drkit ARGS...`` (each argument through ``str``); *env* is added to the
    environment for this call only."""
    entry = _Recording()
    with mock.patch.dict(os.environ, env or {}), _captured() as (out, err):
        code = run_cli(entry, [str(a) for a in args])  # type: ignore[arg-type]  # duck-typed click.Command
    exception = entry.exception if code != 0 else None
    return CliResult(code, _text(out), _text(err), exception)
