"""An interrupted command (Ctrl-C, SIGTERM) exits without waiting out retries in
background threads. The main thread's retry sleep was always interrupted by the signal,
but reads that run in threads (manifests, index files, a tree read ahead) kept retrying
a failing store for up to ``max_elapsed`` (five minutes) before the process could exit.
Once the command is interrupted, a retry waiting in any thread gives up at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import click
import pytest

from drkit.cli.app import run_cli
from drkit.errors import StorageError, TransientStorageError
from drkit.storage import retry
from drkit.storage.retry import RetryingStorage, RetryPolicy


@pytest.fixture(autouse=True)
def _retrying_allowed() -> Iterator[None]:
    retry.allow_retrying()
    yield
    retry.allow_retrying()


class _Down:
    """A store whose every read fails as a dropped connection does."""

    url = "down://"

    def __init__(self) -> None:
        self.attempts = 0
        self.tried = threading.Event()

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.attempts += 1
        self.tried.set()
        raise TransientStorageError("connection reset")


def test_a_retry_waiting_in_a_thread_gives_up_when_the_command_is_interrupted() -> None:
    down = _Down()
    store = RetryingStorage(down, RetryPolicy(attempts=6, base_delay=30, max_delay=30))  # type: ignore[arg-type]
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            store.get("snapshots/x")
        except BaseException as exc:  # noqa: BLE001 - what the reading thread ended with
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    assert down.tried.wait(10)
    retry.stop_retrying()
    reader.join(10)  # its next retry was up to 30 s away
    assert not reader.is_alive()
    assert down.attempts == 1
    assert isinstance(outcome[0], StorageError) and "interrupted" in str(outcome[0])


def test_after_an_interruption_nothing_is_retried() -> None:
    retry.stop_retrying()
    down = _Down()
    store = RetryingStorage(down, RetryPolicy(attempts=6, base_delay=30), sleep=lambda _s: pytest.fail("slept"))  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="interrupted"):
        store.get("index/x")
    assert down.attempts == 1


@pytest.mark.parametrize("signal_like", [KeyboardInterrupt, click.exceptions.Abort])
def test_run_cli_stops_retries_when_interrupted_and_allows_them_for_the_next_command(signal_like: Any) -> None:
    @click.command()
    def interrupted() -> None:
        raise signal_like()

    @click.command()
    def fine() -> None:
        assert not retry.retrying_stopped()

    assert run_cli(interrupted, []) == 130
    assert retry.retrying_stopped()
    assert run_cli(fine, []) == 0  # a scheduler or a test runs the next command in the same process
