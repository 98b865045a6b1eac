"""Bound the pool's own round trips (health check, rollback on return) over a hung network.

psycopg2's blocking calls wait on the socket with no limit of their own: over a network path
that stopped answering, ``SELECT 1`` or ``ROLLBACK`` would hang the caller (and, for a check,
the checkout) forever, and keepalives do not help when a middlebox still acknowledges.
A round trip the pool starts itself is therefore *armed*: if it outlives ``io_timeout``, one
daemon thread shuts the connection's socket down, the blocked call fails at once with
psycopg2's "server closed the connection unexpectedly", and the pool discards the connection.

Arming costs a lock and a dict entry; the thread exists only once something was armed (and
again in a forked child that arms).

Signal safety: callers take a token first (:meth:`Watchdog.token`, no state), then arm and
disarm it inside their ``try``/``finally``, so that an exception anywhere leaves nothing
armed; should a second one skip the ``disarm``, the entry also names the socket it was armed
for (its inode), and a descriptor number reused by another socket meanwhile is never shut
down. Only C-level locks are used, each with ``with``, and the thread is woken by releasing
a plain lock: no Python-level ``Condition`` whose own code an exception could split.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
from time import monotonic

#: Longest the thread sleeps between looks at its deadlines (it is woken early by arm()).
_NAP = 1.0


class Watchdog:
    """Deadlines for sockets; shuts down any socket whose deadline passes while armed."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """Fresh state: at start, and in a forked child (where the parent's thread is gone
        and its locks may have been held at the fork)."""
        self._lock = threading.Lock()
        self._wake = threading.Lock()  # held while nobody woke the thread: released to wake it
        self._wake.acquire()
        self._armed: dict[int, tuple[int, int]] = {}  # token -> (fd, inode), while armed
        self._fired: set[int] = set()
        self._heap: list[tuple[float, int]] = []  # (deadline, token)
        self._tokens = itertools.count(1)
        self._pid = 0  # the process whose thread runs; a forked child starts its own

    def token(self) -> int:
        """A token to arm and disarm with (changes nothing: take it before the ``try``)."""
        return next(self._tokens)

    def arm(self, token: int, fd: int, seconds: float) -> None:
        """Watch ``fd`` for ``seconds`` under ``token``."""
        inode = os.fstat(fd).st_ino
        start = False
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._armed.clear()
                self._heap.clear()
                start = True
            self._armed[token] = (fd, inode)
            heapq.heappush(self._heap, (monotonic() + seconds, token))
            first = self._heap[0][1] == token
        if start:
            threading.Thread(target=self._run, name="psycopg2_pool-watchdog",
                             daemon=True).start()
        if first:
            self._poke()

    def disarm(self, token: int) -> bool:
        """Stop watching; True when the deadline had passed and the socket was shut down.
        A token never armed is fine (nothing to do). In a ``finally`` where a signal must
        not skip it, call ``WATCHDOG._armed.pop(token, None)`` there (one C call, done before
        any handler can run) and :meth:`fired` after."""
        self._armed.pop(token, None)
        return self.fired(token)

    def fired(self, token: int) -> bool:
        """Whether the deadline of a disarmed ``token`` passed and its socket was shut down
        (True at most once per token). Lock-free, like the disarm: the thread marks a token
        fired *before* it takes it off ``_armed``, so a disarm that finds nothing to take
        finds the mark."""
        if token in self._fired:
            self._fired.discard(token)
            return True
        return False

    def _poke(self) -> None:
        try:  # noqa: SIM105 - no contextlib.suppress: its __exit__ is Python code
            self._wake.release()
        except RuntimeError:  # already released: the thread will look anyway
            pass

    def _run(self) -> None:
        wake, heap = self._wake, self._heap
        while True:
            with self._lock:
                while heap and heap[0][1] not in self._armed:
                    heapq.heappop(heap)  # disarmed in time
                nap = _NAP
                now = monotonic()
                while heap and heap[0][0] <= now:
                    _, token = heapq.heappop(heap)
                    self._fired.add(token)  # first: see fired()
                    entry = self._armed.pop(token, None)
                    if entry is None:  # disarmed meanwhile (disarms take no lock)
                        self._fired.discard(token)
                        continue
                    # The owner is still in its call: its fd is open and its own.
                    _shutdown(*entry)
                if heap:
                    nap = min(nap, heap[0][0] - now)
            wake.acquire(timeout=max(nap, 0.0))


def _shutdown(fd: int, inode: int) -> None:
    """Shut down the socket behind ``fd`` (for every descriptor of it), leaving fd open; not
    if the number now belongs to another socket."""
    try:
        dup = os.dup(fd)  # whatever socket the number names now; then: is it the one armed?
    except OSError:
        return
    try:
        if os.fstat(dup).st_ino != inode:
            os.close(dup)
            return
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


WATCHDOG = Watchdog()
os.register_at_fork(after_in_child=WATCHDOG._reset)
