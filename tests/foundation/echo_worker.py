"""A worker for the tests of :mod:`drkit.workerprocs` (``python -m tests.foundation.echo_worker``).

Each request is ``(action, value)``: ``"echo"`` answers ``(value, queued)``, where
*queued* says whether another request had already arrived (waiting up to 10 s for one
when ``value`` asks to: ``("echo", ("wait", n))``); ``"exit"`` ends the process with
status *value* without answering (``("exit", (status, "wait"))``: once the next request
has arrived, or after 10 s)."""

from __future__ import annotations

import os
import select
import sys
from typing import Any, Callable

from drkit.workerprocs import serve


def _start(setup: Any, fds: list[int]) -> Callable[[Any], Any]:
    sock = int(sys.argv[1])

    def answer(request: Any) -> Any:
        action, value = request
        if action == "exit":
            if isinstance(value, tuple):
                select.select([sock], [], [], 10.0)
                value = value[0]
            os._exit(value)
        wait = 10.0 if isinstance(value, tuple) and value[0] == "wait" else 0.0
        queued = bool(select.select([sock], [], [], wait)[0])
        return value, queued

    return answer


if __name__ == "__main__":
    sys.exit(serve(sys.argv, _start))
