"""WorkerPool with more than one request per worker in flight (``depth``): each thread
reads the answer to its own request, the worker is given the next request before it
answers the current one, and a worker that dies fails every request it held."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

from drkit.workerprocs import WorkerGone, WorkerPool

_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pool_of(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("PYTHONPATH", str(_ROOT))  # workers start from / and import tests.*
    pools: list[WorkerPool] = []

    def make(count: int, depth: int) -> WorkerPool:
        pools.append(WorkerPool("tests.foundation.echo_worker", count, lambda: ((), "tag"), depth=depth))
        return pools[-1]

    yield make
    for pool in pools:
        pool.kill()
        pool.close()


def _ask(pool: WorkerPool, request: Any) -> Any:
    worker = pool.take()
    try:
        return pool.ask(worker, request)
    finally:
        pool.give(worker)


def test_a_worker_holds_two_requests_and_each_thread_gets_its_own_answer(pool_of: Any) -> None:
    pool = pool_of(1, 2)
    first: list[Any] = []
    thread = threading.Thread(target=lambda: first.append(_ask(pool, ("echo", ("wait", 1)))))
    thread.start()
    second = _ask(pool, ("echo", 2))
    thread.join()
    # The first request was answered only once the second had reached the worker.
    assert first == [(("wait", 1), True)]
    assert second == (2, False)


def test_answers_never_cross_between_threads(pool_of: Any) -> None:
    pool = pool_of(2, 2)
    with ThreadPoolExecutor(6) as threads:
        answers = list(threads.map(lambda n: _ask(pool, ("echo", n))[0], range(600)))
    assert answers == list(range(600))


def test_a_worker_that_dies_fails_every_request_it_held(pool_of: Any) -> None:
    pool = pool_of(1, 2)
    worker, other = pool.take(), pool.take()
    assert other is worker  # one worker, room for two requests
    outcomes: list[str] = []

    def ask(request: Any) -> None:
        try:
            outcomes.append(f"answered {pool.ask(worker, request)}")
        except WorkerGone as gone:
            outcomes.append(gone.how)

    first = threading.Thread(target=ask, args=(("exit", (3, "wait")),))  # exits once the next arrives
    first.start()
    for _ in range(1000):
        if worker.sent:
            break
        time.sleep(0.01)
    ask(("echo", "behind the exit"))
    first.join(timeout=30)
    assert not first.is_alive()
    assert outcomes == ["exit status 3", "exit status 3"]
    with pytest.raises(WorkerGone, match="exit status 3"):
        pool.ask(worker, ("echo", "after"))
