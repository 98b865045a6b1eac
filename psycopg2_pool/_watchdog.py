"""Bound the pool's own round trips (health check, rollback on return) over a hung network.

psycopg2's blocking calls wait on the socket with no limit of their own: over a network path
that stopped answering, ``SELECT 1`` or ``ROLLBACK`` would hang the caller (and, for a check,
the checkout) forever, and keepalives do not help when a middlebox still acknowledges.
A round trip the pool starts itself is therefore *armed*: if it outlives ``io_timeout``, one
daemon thread shuts the connection's socket down, the blocked call fails at once with
psycopg2's "server closed the connection unexpectedly", and the pool discards the connection.

Arming costs a lock and a dict entry; the thread exists only once something was armed (and
again in a forked child that arms).
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
from time import monotonic


class Watchdog:
    """Deadlines for sockets; shuts down any socket whose deadline passes while armed."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """Fresh state: at start, and in a forked child (where the parent's thread is gone
        and its lock may have been held at the fork)."""
        self._cond = threading.Condition(threading.Lock())
        self._armed: dict[int, int] = {}  # token -> fd, while armed
        self._fired: set[int] = set()
        self._heap: list[tuple[float, int]] = []  # (deadline, token)
        self._tokens = itertools.count(1)
        self._pid = 0  # the process whose thread runs; a forked child starts its own

    def arm(self, fd: int, seconds: float) -> int:
        """Watch ``fd`` for ``seconds``; the token to :meth:`disarm` it with."""
        token = next(self._tokens)
        with self._cond:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._armed.clear()
                self._heap.clear()
                threading.Thread(target=self._run, name="psycopg2_pool-watchdog",
                                 daemon=True).start()
            self._armed[token] = fd
            heapq.heappush(self._heap, (monotonic() + seconds, token))
            if self._heap[0][1] == token:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> bool:
        """Stop watching; True when the deadline had passed and the socket was shut down."""
        with self._cond:
            self._armed.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def _run(self) -> None:
        cond, heap = self._cond, self._heap
        with cond:
            while True:
                while heap and heap[0][1] not in self._armed:
                    heapq.heappop(heap)  # disarmed in time
                if not heap:
                    cond.wait()
                    continue
                remaining = heap[0][0] - monotonic()
                if remaining > 0:  # capped: a huge io_timeout (inf) must not kill the thread
                    cond.wait(min(remaining, threading.TIMEOUT_MAX))
                    continue
                _, token = heapq.heappop(heap)
                fd = self._armed.pop(token)
                # Under the lock: the owner cannot disarm and close the fd (letting the
                # number be reused) while we shut it down.
                self._fired.add(token)
                _shutdown(fd)


def _shutdown(fd: int) -> None:
    """Shut down the socket behind ``fd`` (for every descriptor of it), leaving fd open."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


WATCHDOG = Watchdog()
os.register_at_fork(after_in_child=WATCHDOG._reset)
