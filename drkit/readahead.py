"""Calls that run ahead in background threads while their outcomes are taken in order.

For storage reads, which from S3 or SFTP are mostly waiting on the network: a loop that
read one object after another waited for every round trip in turn (a snapshot's tree,
every manifest of a ``snapshots`` listing, every index file on a new machine).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_ahead(fn: Callable[[T], R], items: Iterable[T], *, ahead: int, name: str) -> Iterator[tuple[T, Future[R]]]:
    """Each of *items* with the future of ``fn(item)``, in the order of *items*, while
    the calls for the next *ahead* items (at least one) run in threads named *name*.

    The caller takes each outcome with ``future.result()``, so an exception is raised
    where its item is reached, in the caller's thread. *items* is consumed lazily, in
    the caller's thread, at most *ahead* items beyond the one last yielded. Closed early
    (``break``, an exception in the caller, Ctrl-C), calls not started are cancelled and
    the running ones are waited for: nothing keeps running once it is closed."""
    ahead = max(1, ahead)
    with ThreadPoolExecutor(ahead, thread_name_prefix=name) as pool:
        queued: deque[tuple[T, Future[R]]] = deque()
        rest = iter(items)
        try:
            for item in islice(rest, ahead):
                queued.append((item, pool.submit(fn, item)))
            while queued:
                item, outcome = queued.popleft()
                for following in islice(rest, 1):
                    queued.append((following, pool.submit(fn, following)))
                yield item, outcome
        finally:
            for _, outcome in queued:
                outcome.cancel()
