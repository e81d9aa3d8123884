"""Fixtures for the ops tests (metrics, scheduling, secret hygiene)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path

import pytest
import yaml


class FakeClock:
    """A clock that only moves when told to (or when the daemon sleeps)."""

    def __init__(self, start: dt.datetime) -> None:
        self.current = start
        self.sleeps: list[float] = []

    def now(self) -> dt.datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += dt.timedelta(seconds=seconds)

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        self.sleeps.append(seconds)
        if not stop.is_set():
            self.advance(max(seconds, 0.001))


@pytest.fixture
def fake_clock() -> FakeClock:
    # a Friday, 00:00 local time
    return FakeClock(dt.datetime(2026, 1, 2, 0, 0, 0))


@pytest.fixture
def drkit_logs() -> logging.Logger:
    """The 'drkit' logger propagating to the root (where caplog listens), at DEBUG.

    A CLI run in the same process sets propagate=False; this undoes it for the test.
    """
    logger = logging.getLogger("drkit")
    saved = (logger.propagate, logger.level, list(logger.handlers))
    logger.propagate = True
    logger.setLevel(logging.DEBUG)
    logger.handlers[:] = []
    yield logger
    logger.propagate, logger.level, logger.handlers[:] = saved[0], saved[1], saved[2]


def write_config(path: Path, data: dict, mode: int = 0o600) -> Path:
    path.write_text(yaml.safe_dump(data))
    path.chmod(mode)
    return path
