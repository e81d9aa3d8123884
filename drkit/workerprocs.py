"""A small pool of worker processes that answer requests over socket pairs.

Used where per-item Python work, not I/O, bounds a command and one interpreter lock
keeps it on one core: the small files of a restore
(:mod:`drkit.services.restoreprocs`) and the sealing of small blobs in a backup
(:mod:`drkit.repository.sealprocs`).

A worker is ``python -m MODULE SOCKET_FD [ARGS...]`` started from ``/`` (``python -m``
puts the working directory first on the module path, and drkit may run where others
can write). Its first message is its set-up (keys travel this way: never on a
command line or in an environment), then it answers each request in order until it
is told to stop (``None``) or its socket closes. Messages are :mod:`marshal` data
(tuples, lists, bytes, str, int: nothing that runs code when read). A worker ignores
SIGINT and SIGTERM: the main process decides when it stops (:meth:`WorkerPool.kill`
at once, :meth:`WorkerPool.close` after the requests in flight).
"""

from __future__ import annotations

import marshal
import queue
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence


class WorkerGone(Exception):
    """A worker ended (killed, out of memory, a bug) before it answered."""

    def __init__(self, worker: "Worker", how: str) -> None:
        super().__init__(f"pid {worker.proc.pid}, {how}")
        self.worker = worker
        self.how = how


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    conn: Connection
    tag: str
    """What the set-up said that the main process needs again (a temporaries' prefix)."""
    sent: int = 0
    """Requests sent to it so far (numbered from 0): it answers them in that order."""
    answered: int = 0
    """Requests whose answer was read (or given up on): the next answer is to request
    number *answered*, and only the thread that sent that one reads it."""
    gone: str = ""
    """How it ended, once an :meth:`WorkerPool.ask` found it gone."""
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    turn: threading.Condition = field(default_factory=threading.Condition)


class WorkerPool:
    """*count* workers running *module*. Thread-safe: :meth:`take` gives a worker with
    room for one more request (waiting for one) for the length of that request.
    :meth:`close` is idempotent."""

    def __init__(self, module: str, count: int, setup: Callable[[], tuple[tuple[Any, ...], str]], *,
                 pass_fds: Sequence[int] = (), depth: int = 1) -> None:
        """Start *count* workers; *setup* gives each its set-up message and tag;
        *pass_fds* are open in every worker, their numbers after the socket's on its
        command line; *depth*: how many requests each worker may be given at once (with
        two, it starts on the next as soon as it has sent an answer, without waiting for
        the main process to read that answer and send more). Raises OSError when one
        cannot be started (none is left running)."""
        self._module = module
        self._pass_fds = tuple(pass_fds)
        self._idle: queue.Queue[Worker] = queue.Queue()
        self.workers: list[Worker] = []
        self._closed = False
        try:
            for _ in range(count):
                message, tag = setup()
                worker = self._start(message, tag)
                self.workers.append(worker)
            for _ in range(depth):
                for worker in self.workers:
                    self._idle.put(worker)
        except BaseException:
            self.kill()
            self.close()
            raise

    def _start(self, message: tuple[Any, ...], tag: str) -> Worker:
        ours, theirs = socket.socketpair()
        try:
            fds = (theirs.fileno(), *self._pass_fds)
            proc = subprocess.Popen([sys.executable, "-m", self._module, *map(str, fds)],
                                    pass_fds=fds, stdin=subprocess.DEVNULL, cwd="/")
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        conn.send_bytes(marshal.dumps(message))
        return Worker(proc, conn, tag)

    def take(self) -> Worker:
        """A worker with room for one more request (waits for one); give it back with
        :meth:`give` once the request is answered."""
        return self._idle.get()

    def give(self, worker: Worker) -> None:
        self._idle.put(worker)

    def ask(self, worker: Worker, request: Any) -> Any:
        """Send *request* to *worker* (taken) and return its answer; raises WorkerGone.

        With a *depth* above one, several threads may ask the same worker at once: the
        requests are sent one whole message at a time and each thread reads the answer to
        its own (a worker answers in the order it was asked). Once one ask finds the
        worker gone, the asks waiting behind it raise WorkerGone too."""
        data = marshal.dumps(request)
        with worker.send_lock:
            turn = worker.sent
            worker.sent += 1
            try:
                worker.conn.send_bytes(data)
                sent = True
            except OSError:
                sent = False  # it is gone: said so in this request's turn, below
        with worker.turn:
            while worker.answered != turn:
                worker.turn.wait()
        try:
            if sent and not worker.gone:
                try:
                    return marshal.loads(worker.conn.recv_bytes())
                except (EOFError, OSError):
                    pass
            if not worker.gone:
                worker.gone = _how_it_ended(worker.proc)
            raise WorkerGone(worker, worker.gone)
        finally:
            with worker.turn:
                worker.answered += 1
                worker.turn.notify_all()

    def kill(self) -> None:
        """Kill every worker at once (Ctrl-C, an error elsewhere): an :meth:`ask` in
        flight raises WorkerGone."""
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.kill()

    def close(self) -> None:
        """Tell every worker to stop and wait for it (killed after 10 s). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for worker in self.workers:
            try:
                worker.conn.send_bytes(marshal.dumps(None))
            except OSError:
                pass
        for worker in self.workers:
            try:
                worker.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
            worker.conn.close()


def _how_it_ended(proc: subprocess.Popen[bytes]) -> str:
    """How a worker whose socket closed ended (killed after 5 s if it has not)."""
    try:
        code = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def serve(argv: list[str], start: Callable[[Any, list[int]], Callable[[Any], Any]]) -> int:
    """The main loop of a worker started by :class:`WorkerPool`: *start* gets the
    set-up message and the passed fds and returns the function that answers each
    request. Returns the exit status (0 also when the main process went away)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(int(argv[1]))
    try:
        answer = start(marshal.loads(conn.recv_bytes()), [int(fd) for fd in argv[2:]])
        while (request := marshal.loads(conn.recv_bytes())) is not None:
            conn.send_bytes(marshal.dumps(answer(request)))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the main process is gone: nothing more to do (it cleans up)
    return 0
