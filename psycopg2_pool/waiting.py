"""Callers waiting for a connection: the queue, the hand-over, and the error of a wait that
ends without a connection.

A ``getconn`` that may wait and finds nothing idle queues a :class:`Waiter` (in arrival
order) and blocks on the waiter's own lock, outside the pool's. Whoever has a connection to
give, a ``putconn``, a background open, ``check()`` putting one back, settles it
(:meth:`Waiting._settle`): to the first waiter, else to the idle deque, so nobody barges
ahead of a waiter. A wait that times out gets the error that says why: the pool exhausted
(``PoolExhausted``, with who holds what), or the server unreachable (``ServerUnavailable``);
a caller refused for ``max_waiting`` gets ``TooManyRequests``.

:class:`Waiting` is a base class of the pool (below :class:`~psycopg2_pool.replacement.
Replacement`, above :class:`~psycopg2_pool.upkeep.Upkeep`); "(lock held)" as there. The
rules of the lock are the pool's (:mod:`psycopg2_pool.pool`).
"""

from __future__ import annotations

import threading
from time import monotonic
from typing import Any

from .connection import IDLE, OUT, Record
from .errors import PoolExhausted, ServerUnavailable, TooManyRequests
from .events import DiscardReason, TimeoutEvent
from .reconnect import NOT_ANSWERING
from .stats import REQUESTS_REFUSED, TIMEOUTS, WAIT_TIME, WAITS
from .upkeep import Upkeep

Connection = Any  # a psycopg2 connection opened by the pool


class Waiter:
    """A getconn queued for a connection; ``putconn``, an open or ``close()`` fills a field
    (under the pool's lock) and releases ``lock``, on which the waiting thread blocks outside
    the pool's lock."""

    __slots__ = ("conn", "error", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.conn: Connection = None  # a strong reference: the giver may drop its own
        self.error: BaseException | None = None


class Waiting(Upkeep):
    """The queue of waiters and the hand-over (a base of the pool)."""

    name: str
    max_waiting: int | None
    _timeout: float
    _connect_bound: str

    def _enqueue(self, waiter: Waiter) -> None:
        """Queue a waiter and start the opens it may need (lock held)."""
        self._waiters.append(waiter)
        self._stats[WAITS] += 1
        self._ensure_opening()  # room in the pool: a background open serves the queue

    def _first_waiter(self) -> Waiter | None:
        """The first waiter still to be served (lock held): one served already but left at
        the head (a raise between its wake-up and its removal) is removed now."""
        waiters = self._waiters
        while waiters:
            waiter: Waiter = waiters[0]
            if waiter.conn is None and waiter.error is None:
                return waiter
            waiters.popleft()
        return None

    def _await(self, waiter: Waiter, started: float, timeout: float) -> Connection:
        """Wait, outside the lock, until ``waiter`` is served or ``timeout`` passes since
        ``started``; the connection handed over (checked out for this caller)."""
        deadline = started + timeout
        event: TimeoutEvent | None = None
        try:
            while True:
                remaining = deadline - monotonic()
                if remaining > 0:  # (acquire refuses a timeout past threading.TIMEOUT_MAX)
                    waiter.lock.acquire(timeout=min(remaining, threading.TIMEOUT_MAX))
                with self._lock:
                    if waiter.conn is not None or waiter.error is not None:
                        break  # served (perhaps at the last moment)
                    if monotonic() < deadline:
                        continue
                    if waiter in self._waiters:  # (a giver interrupted may have taken it)
                        self._waiters.remove(waiter)
                    self._trim_opening()
                    _, event = self._timed_out(started, timeout)
                break
        except BaseException:  # interrupted: leave nothing behind
            self._leave_queue(waiter)
            raise
        finally:
            with self._lock:
                self._stats[WAIT_TIME] += monotonic() - started
        if event is not None:
            if self._on_timeout:
                self._emit(self._on_timeout, event)
            raise event.error
        if waiter.error is not None:
            raise waiter.error
        return waiter.conn

    def _leave_queue(self, waiter: Waiter) -> None:
        """An interrupted waiter leaves the queue; a connection handed to it at the last
        moment goes to the next waiter, or back to the idle deque (closed if the pool is)."""
        now = monotonic()
        with self._lock:
            if waiter in self._waiters:  # (served and left at the head, possibly)
                self._waiters.remove(waiter)
                self._trim_opening()
            conn, waiter.conn = waiter.conn, None
            if conn is None or conn._pool_rec.state is not OUT:
                return
            rec = conn._pool_rec
            if not self._closed:
                self._settle(conn, rec, now)
                return
            self._begin_close(rec)
        self._close_connection(conn, rec, DiscardReason.POOL_CLOSED, now)

    def _hand_over(self, conn: Connection, rec: Record, now: float, waiter: Waiter) -> None:
        """Give a kept (or new) connection to ``waiter``, the first to be served, checked
        out (lock held)."""
        rec.state, rec.returning, rec.since, rec.returned_at = OUT, False, now, now
        rec.lent = self._records
        waiter.conn = conn  # the hand-over, done before any call: no raise can split it
        waiter.lock.release()  # woken: a raise after this leaves it at the head, served
        self._waiters.popleft()  # (it: nothing else changes the queue under the lock)
        self._trim_opening()  # one waiter fewer: slots reserved for it and not started go

    def _settle(self, conn: Connection, rec: Record, now: float) -> None:
        """A kept connection, checked out or new: to the first waiter, else idle (lock held).
        Never a doomed one: its callers close those (a background open across a drain(),
        a return of a drained or swept connection)."""
        waiter = self._first_waiter() if self._waiters else None
        if waiter is not None:
            self._hand_over(conn, rec, now, waiter)
            return
        rec.returned_at, rec.state, rec.returning, rec.lent = now, IDLE, False, None
        self.idle_connections.append(conn)

    def _timed_out(self, started: float, timeout: float) -> tuple[Exception, TimeoutEvent]:
        """The error of a waiter whose timeout passed (lock held): the server could not be
        reached (connects failing, or not answering), else the pool is exhausted."""
        backoff = self._backoff
        now = monotonic()
        oldest = min(self._attempts.values(), default=now)
        waited = now - started
        # An attempt that ran for (nearly) the whole wait, or NOT_ANSWERING seconds, has not
        # been answered: say so, rather than blame checked-out connections that may be none.
        silent = min(NOT_ANSWERING, max(0.25, 0.9 * waited))
        if not backoff.failing and now - oldest < silent:
            return self._exhausted(started, timeout)  # connects work, if slower than timeout
        self._stats[TIMEOUTS] += 1
        if backoff.failing:
            cause = backoff.describe(now)
        else:
            cause = (f"the server has not answered a connection attempt for {now - oldest:.3g} s "
                     f"({self._connect_bound})")
        error = ServerUnavailable(
            f"could not connect to the server of pool {self.name!r}: {cause}. getconn() waited "
            f"{waited:.3g} s (timeout={timeout:g} s); the pool keeps trying in the background. "
            f"Check that the server is up and reachable, or pass timeout= to wait longer.",
            waited=waited, timeout=timeout, attempts=backoff.failures,
            unavailable_for=backoff.unavailable_for(now))
        error.__cause__ = backoff.last_error
        return error, TimeoutEvent(self._as_pool(), waited, timeout, error)

    def _exhausted(self, started: float, timeout: float) -> tuple[Exception, TimeoutEvent]:
        """The exhaustion error and its event (lock held; the caller announces it unlocked)."""
        waited = monotonic() - started if timeout > 0 else 0.0
        in_use = self._size - len(self.idle_connections) - self._opening - self._closing
        self._stats[TIMEOUTS] += 1
        queued = len(self._waiters)
        wait_text = (f"waited {waited:.3g} s (timeout={timeout:g} s)" if timeout > 0 else
                     "did not wait (timeout=0)")
        error = PoolExhausted(
            f"no more connections in the pool {self.name!r}: maxconn={self.maxconn:g}, "
            f"{in_use} in use, {self._opening} opening, {queued} other request(s) waiting; "
            f"{wait_text}. Return every connection (use `with pool.connection() as conn:` "
            f"or putconn() in a finally block), raise maxconn, or pass timeout= to wait longer.",
            maxconn=self.maxconn, in_use=in_use, waited=waited, timeout=timeout)
        return error, TimeoutEvent(self._as_pool(), waited, timeout, error)

    def _refused(self) -> tuple[Exception, TimeoutEvent]:
        """The error of a caller refused because ``max_waiting`` wait already (lock held)."""
        in_use = self._size - len(self.idle_connections) - self._opening - self._closing
        self._stats[REQUESTS_REFUSED] += 1
        error = TooManyRequests(
            f"the pool {self.name!r} refused the request: max_waiting={self.max_waiting} "
            f"requests are already waiting for a connection (maxconn={self.maxconn:g}, "
            f"{in_use} in use). Retry later, shed load, or raise max_waiting or maxconn.",
            maxconn=self.maxconn, in_use=in_use, waited=0.0, timeout=self._timeout)
        return error, TimeoutEvent(self._as_pool(), 0.0, self._timeout, error)


__all__ = ["Waiter", "Waiting"]
