"""``run_ahead``: outcomes in the order of the items, the items taken lazily (at most
*ahead* beyond the one given out), an error raised where its item is reached, and
nothing left running once it is closed early."""

from __future__ import annotations

import threading
import time

import pytest

from drkit.readahead import run_ahead


def test_outcomes_come_in_item_order_whatever_order_the_calls_end_in() -> None:
    def slow_first(n: int) -> int:
        time.sleep(0.02 if n % 3 == 0 else 0)  # (ordering only: no timing is asserted)
        return n * n

    got = [(n, outcome.result()) for n, outcome in run_ahead(slow_first, range(20), ahead=4, name="t")]
    assert got == [(n, n * n) for n in range(20)]


def test_items_are_taken_lazily_at_most_ahead_beyond_the_one_given_out() -> None:
    taken: list[int] = []

    def items() -> object:
        for n in range(100):
            taken.append(n)
            yield n

    stream = run_ahead(lambda n: n, items(), ahead=3, name="t")  # type: ignore[arg-type]
    first, _ = next(stream)
    assert first == 0
    assert taken == [0, 1, 2, 3]  # three ahead of the item given out, no more
    next(stream)
    assert taken == [0, 1, 2, 3, 4]
    stream.close()


def test_an_error_is_raised_where_its_item_is_reached() -> None:
    def fail_on_five(n: int) -> int:
        if n == 5:
            raise ValueError("five")
        return n

    seen = []
    with pytest.raises(ValueError, match="five"):
        for _n, outcome in run_ahead(fail_on_five, range(10), ahead=4, name="t"):
            seen.append(outcome.result())
    assert seen == [0, 1, 2, 3, 4]


def test_closed_early_nothing_keeps_running_and_calls_not_started_never_run() -> None:
    release = threading.Event()
    started: list[int] = []
    running = threading.Semaphore(0)
    lock = threading.Lock()

    def held(n: int) -> int:
        with lock:
            started.append(n)
        running.release()
        release.wait(10)
        return n

    stream = run_ahead(held, range(50), ahead=2, name="t")
    item, _ = next(stream)  # items 0-2 submitted, two threads: 0 and 1 run, 2 waits
    assert item == 0
    assert running.acquire(timeout=10) and running.acquire(timeout=10)
    threading.Timer(0.05, release.set).start()
    stream.close()  # cancels 2, waits for 0 and 1
    assert not [t for t in threading.enumerate() if t.name.startswith("t_")]
    assert sorted(started) == [0, 1]
