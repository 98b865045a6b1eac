"""The connection pool's core: checkout, return, waiting and hand-over.

One implementation, thread-safe: a single lock guards the bookkeeping and is never held
across I/O (connecting, rolling back, closing, health checks). Callers that find the pool
exhausted queue in arrival order and are handed a connection directly by ``putconn`` or by
a background open, so nobody barges ahead of a waiter.

Callers never open connections when they may wait (``timeout > 0``) and never prune: that
upkeep runs in the background (:mod:`psycopg2_pool.upkeep`). When connects fail, waiting
callers keep waiting while one attempt at a time retries (:mod:`psycopg2_pool.reconnect`),
until their own timeout passes.

The pool holds idle connections strongly and checked-out ones only weakly: a connection the
application drops without ``putconn`` is garbage-collected, closed by psycopg2, reported as a
``garbage_collected`` discard, and its slot is given back.

The other parts, each in its module (none imports this one at run time):
:mod:`~psycopg2_pool.connection` the record of a connection and what the caller holds,
:mod:`~psycopg2_pool.options` the arguments' validation, :mod:`~psycopg2_pool.upkeep`
opening, reconnecting, pruning, retiring and closing (a base class of the pool),
:mod:`~psycopg2_pool.listeners` the listener registration and dispatch (its base),
:mod:`~psycopg2_pool.stats` the keys of ``get_stats()``. The fast paths of ``getconn`` and
``putconn`` stay here, inlined: no call on a checkout or a return that needs none.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import threading
from collections import deque
from collections.abc import Callable, Hashable
from time import monotonic
from types import FrameType, TracebackType
from typing import Any

from . import _forking
from . import options as _options
from . import stats as _keys
from ._driver import extensions, psycopg2
from ._watchdog import WATCHDOG
from .connection import ConnectionContext, Record, check_connection, closed_reason, pooled_class
from .dsn import default_pool_name, parse_options
from .errors import (
    PoolClosed,
    PoolError,
    PoolExhausted,
    ServerUnavailable,
    TooManyRequests,
)
from .events import (
    CheckinEvent,
    Checkout,
    CheckoutEvent,
    CloseEvent,
    DiscardReason,
    TimeoutEvent,
)
from .options import (
    IDLE_TIMEOUT,
    connect_timeout_default,
    connect_timeout_text,
    count,
    optional_seconds,
    seconds,
    sizes,
)
from .reconnect import NOT_ANSWERING
from .scheduler import SCHEDULER
from .stacks import stack as _stack
from .stats import EXHAUSTED, REQUESTS_REFUSED, ROLLBACKS, TIMEOUTS, WAIT_TIME, WAITS
from .upkeep import Upkeep

logger = logging.getLogger("psycopg2_pool")

#: Builds an event (a NamedTuple) without the Python-level ``__new__`` NamedTuple adds.
_new_event = tuple.__new__
# Who checks a connection out, where a listener asks (checkout_stack_depth): C calls only.
_getframe = sys._getframe
_get_ident = threading.get_ident
_threads_get = threading._active.get  # type: ignore[attr-defined]  # current_thread()'s table
_current_thread = threading.current_thread

_IDLE = extensions.TRANSACTION_STATUS_IDLE
_ACTIVE = extensions.TRANSACTION_STATUS_ACTIVE
_UNKNOWN = extensions.TRANSACTION_STATUS_UNKNOWN
_INF = math.inf

Connection = Any  # a psycopg2 connection opened by the pool


class _Waiter:
    """A getconn queued for a connection; ``putconn`` or an open fills a field and releases
    ``lock``."""

    __slots__ = ("conn", "error", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.conn: Connection = None  # a strong reference: the giver may drop its own
        self.error: BaseException | None = None


class ConnectionPool(Upkeep):
    """A thread-safe pool of psycopg2 connections.

    ``ConnectionPool(minconn=1, maxconn=inf, idle_timeout=600, **connect_kwargs)`` as in
    psycopg2-pool 1.2, and ``(minconn, maxconn, dsn, ...)`` as in psycopg2.pool: a str third
    positional argument is the DSN. See docs/api.md for every argument, attribute and error.

    Concurrency: the common checkout (an idle connection is there) and return (nobody is
    waiting) touch only ``deque``/``dict`` operations that are atomic in CPython, as
    psycopg2-pool 1.2 did; everything else (opening, discarding, waiting, closing) runs under
    one lock that is never held across I/O.
    """

    def __init__(self, minconn: int = 1, maxconn: float = _INF, *args: Any,
                 idle_timeout: float | None = IDLE_TIMEOUT,
                 timeout: float = 0.0, max_lifetime: float | None = None,
                 check_idle_after: float | None = None,
                 check: Callable[[Connection], object] | None = None,
                 io_timeout: float | None = 5.0, max_waiting: int = 0, num_workers: int = 3,
                 configure: Callable[[Connection], object] | None = None,
                 reset: Callable[[Connection], object] | None = None,
                 name: str | None = None, **connect_kwargs: Any) -> None:
        sizes(minconn, maxconn)
        # After maxconn: psycopg2-pool 1.2's idle_timeout, or psycopg2.pool's arguments of
        # psycopg2.connect (a str first: the DSN), which land in connect_kwargs.
        idle_timeout = _options.positional(args, idle_timeout, connect_kwargs)
        _options.hook("check", check)
        _options.hook("configure", configure)
        _options.hook("reset", reset)
        _options.pool_name(name)
        _options.synchronous(connect_kwargs)
        factory = connect_kwargs.get("connection_factory")
        if factory is None:
            factory = extensions.connection
        options = parse_options(connect_kwargs)
        connect_kwargs.setdefault("dsn", "")

        self.minconn = minconn
        self.maxconn = maxconn
        self._closed = False
        self.idle_timeout = idle_timeout
        self.timeout = timeout
        self.max_lifetime = optional_seconds("max_lifetime", max_lifetime, positive=True)
        self.check_idle_after = check_idle_after
        if check is not None and check_idle_after is None:
            self.check_idle_after = 0.0
        self.check = check if check is not None else check_connection
        #: Seconds the pool's own round trips (``check``, rollback and ``reset`` on return)
        #: may take before the connection is deemed broken: its socket is shut down and it
        #: is discarded.
        self.io_timeout = optional_seconds("io_timeout", io_timeout, positive=True)
        #: Callers that may wait at once; the next is refused with TooManyRequests (0: any).
        self.max_waiting = count("max_waiting", max_waiting)
        #: Connection attempts this pool runs in the background at once (psycopg_pool's
        #: name): a server that does not answer holds that many scheduler workers, no more.
        self.num_workers = count("num_workers", num_workers, minimum=1)
        self._configure = configure  # called on each new connection before first use
        self._reset_hook = reset  # called on each return of a connection that is kept
        self.connect_kwargs = connect_kwargs
        self.name = name or default_pool_name(options)

        #: Idle connections, last in first out (psycopg2-pool 1.2's attribute).
        self.idle_connections: deque[Connection] = deque()
        #: Connection -> monotonic time it became idle (psycopg2-pool 1.2's attribute).
        self.return_times: dict[Connection, float] = {}

        self._connect_args = {k: v for k, v in connect_kwargs.items()
                              if k != "connection_factory"}
        self._connect_args.update(connect_timeout_default(options))
        self._connect_bound = connect_timeout_text(options, self._connect_args)
        self._factory = pooled_class(factory)
        self._lock = threading.Lock()
        self._opened = threading.Condition(self._lock)  # notified when a connection opens
        # Checked-out connections' records, by id(); never replaced: each record holds it.
        self._out: dict[int, Record] = {}
        self._waiters: deque[_Waiter] = deque()
        self._keys: dict[Hashable, Connection] = {}
        self._collected: deque[Record] = deque()
        self._size = 0  # open connections + slots reserved for opening one
        self._init_upkeep()
        self._starting = True  # __init__ opens minconn itself and raises on failure
        self._slow_return = reset is not None  # putconn must take its slow path
        self._reset_failed_logged = False
        self._requests = itertools.count()  # next() is atomic: no lock on the fast path
        self._returns = itertools.count()
        self._stats: dict[str, float] = dict.fromkeys(_keys.COUNTERS, 0)
        self._discards = dict.fromkeys(DiscardReason.ALL, 0)
        self._init_listeners()
        _forking.track(self, type(self)._after_fork_in_child)
        SCHEDULER.register(self, self.num_workers)

        try:
            for _ in range(minconn):
                with self._lock:
                    self._size += 1
                    self._opening += 1
                    self._connecting += 1
                self._open_inline(idle=True)
        except BaseException:
            self.close()
            raise
        self._starting = False
        self._start_upkeep()

    @property
    def timeout(self) -> float:
        """Seconds ``getconn`` waits for a connection when all are in use (0: fail at once)."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._timeout = seconds("timeout", value)  # NaN would make a waiter loop forever

    @property
    def idle_timeout(self) -> float | None:
        """Seconds an idle connection may stay idle before it is closed (None/0: no limit)."""
        return self._idle_timeout

    @idle_timeout.setter
    def idle_timeout(self, value: float | None) -> None:
        self._idle_timeout = optional_seconds("idle_timeout", value)
        self._update_limits()
        if not getattr(self, "_starting", True):
            self._start_upkeep()  # a new limit: prune on its schedule from now on

    @property
    def check_idle_after(self) -> float | None:
        """Idle seconds after which a checkout runs ``check`` first (None: never)."""
        return self._check_idle_after

    @check_idle_after.setter
    def check_idle_after(self, value: float | None) -> None:
        self._check_idle_after = optional_seconds("check_idle_after", value)
        self._update_limits()

    def _update_limits(self) -> None:
        """Precompute what the fast paths compare against, instead of testing each setting."""
        idle = getattr(self, "_idle_timeout", None)
        check = getattr(self, "_check_idle_after", None)
        self._idle_limit = idle or _INF
        self._idle_zero = idle == 0  # psycopg2-pool 1.2: close returns beyond minconn at once
        self._recheck = min(self._idle_limit, _INF if check is None else check - 1e-9)

    # -- public API ------------------------------------------------------------------------

    def getconn(self, key: Hashable | None = None, *, timeout: float | None = None) -> Connection:
        """Check a connection out of the pool.

        Reuses the most recently returned idle connection, else waits up to ``timeout``
        seconds (the pool's ``timeout`` when not given) for one to be returned or opened in
        the background while fewer than ``maxconn`` are open, then raises
        :class:`PoolExhausted` (all in use) or :class:`ServerUnavailable` (none could be
        opened). With ``timeout=0`` it opens one itself, or fails at once.
        ``key`` (psycopg2.pool's) returns the connection already checked out under that key.
        """
        if timeout is not None:  # before anything is counted or handed out
            timeout = seconds("timeout", timeout)
        if key is None and not self._waiters and not self._closed:
            try:
                conn = self.idle_connections.pop()
            except IndexError:
                pass
            else:
                now = monotonic()
                returned = self.return_times.pop(conn, 0.0)
                rec = conn._pool_rec
                rec.since = now
                self._out[rec.conn_id] = rec
                next(self._requests)
                if conn.get_transaction_status() or now - returned > self._recheck \
                        or now >= rec.expires:
                    reason = self._unusable(conn, rec, now, returned)
                    if reason is not None:
                        self._discard(conn, rec, reason)
                        return self._getconn_slow(None, timeout, counted=True)
                if self._checkout_hooked:  # inlined dispatch: the path every checkout takes
                    if self._stack_depth:  # a listener asks who takes connections
                        try:
                            frame: FrameType | None = _getframe(1)
                        except ValueError:  # called from C, with no Python caller
                            frame = None
                        rec.taken = (_stack(frame, self._stack_depth),
                                     _threads_get(_get_ident()) or _current_thread(), now)
                    for method in self._on_checkout_fields:
                        try:
                            method(self, conn, 0.0, False, False)
                        except Exception:  # noqa: BLE001 - a listener must never break the pool
                            self._listener_failed(method)
                    listeners = self._on_checkout
                    if listeners:
                        event = _new_event(CheckoutEvent, (self, conn, 0.0, False, False))
                        for method in listeners:
                            try:
                                method(event)
                            except Exception:  # noqa: BLE001 - never break the pool
                                self._listener_failed(method)
                return conn
        return self._getconn_slow(key, timeout, counted=False)

    def putconn(self, conn: Connection, key: Hashable | None = None, close: bool = False) -> None:
        """Return a connection to the pool.

        An open transaction is rolled back and ``reset`` is called; a closed or broken
        connection is discarded, as is one past ``max_lifetime`` or returned with
        ``close=True``. It never opens a connection: refilling to ``minconn`` and closing
        idle connections happen in the background.
        """
        rec = self._out.pop(id(conn), None)  # atomic: of two racing returns, one wins
        if rec is None or rec.ref() is not conn or key is not None or rec.key is not None:
            rec = self._claim_return(conn, rec, key)
        next(self._returns)
        now = monotonic()
        if close or conn.get_transaction_status() or now >= rec.expires or self._waiters \
                or self._slow_return or (self._idle_zero
                                         and len(self.idle_connections) >= self.minconn):
            self._putconn_slow(conn, rec, now, close)
            return
        if self._checkin_hooked:  # before anyone else can check it out: events stay in order
            use_time = now - rec.since
            for method in self._on_checkin_fields:
                try:
                    method(self, conn, use_time, True, None)
                except Exception:  # noqa: BLE001 - a listener must never break the pool
                    self._listener_failed(method)
            listeners = self._on_checkin
            if listeners:
                event = _new_event(CheckinEvent, (self, conn, use_time, True, None))
                for method in listeners:
                    try:
                        method(event)
                    except Exception:  # noqa: BLE001 - a listener must never break the pool
                        self._listener_failed(method)
        self.return_times[conn] = now
        self.idle_connections.append(conn)
        if self._waiters or self._closed:  # a waiter or close() came in meanwhile
            self._hand_over_idle()

    def connection(self, timeout: float | None = None) -> ConnectionContext:
        """``with pool.connection() as conn:`` checks out, commits or rolls back, returns."""
        return ConnectionContext(self, timeout)

    def wait(self, timeout: float = 30.0) -> None:
        """Block until ``minconn`` connections are open: a readiness check for start-up.

        Raises :class:`ServerUnavailable` when they are not open within ``timeout`` seconds
        (the pool keeps trying), :class:`PoolClosed` on a closed pool.
        """
        timeout = seconds("timeout", timeout)
        deadline = monotonic() + timeout
        with self._opened:
            self._ensure_opening()
            while True:
                if self._closed:
                    raise self._closed_error()
                opened = self._size - self._opening
                if opened >= self.minconn:
                    return
                remaining = deadline - monotonic()
                if remaining <= 0:
                    break
                self._opened.wait(remaining)
            now = monotonic()
            cause = (self._backoff.describe(now) if self._backoff.failing
                     else "the server has not answered yet")
            error = self._backoff.last_error
            attempts = self._backoff.failures
            unavailable = self._backoff.unavailable_for(now)
        raise ServerUnavailable(
            f"pool {self.name!r} opened {opened} of minconn={self.minconn} connections within "
            f"{timeout:g} s: {cause}. The pool keeps trying in the background; check that the "
            f"server is up and reachable", waited=timeout, timeout=timeout, attempts=attempts,
            unavailable_for=unavailable) from error

    def resize(self, minconn: int | None = None, maxconn: float | None = None) -> None:
        """Change ``minconn`` and/or ``maxconn`` of a live pool.

        A higher ``minconn`` opens connections in the background; a lower ``maxconn`` closes
        idle connections beyond it now and checked-out ones as they are returned.
        """
        new_min = self.minconn if minconn is None else minconn
        new_max = self.maxconn if maxconn is None else maxconn
        sizes(new_min, new_max)
        to_close = []
        with self._lock:
            if self._closed:
                raise self._closed_error()
            self.minconn, self.maxconn = new_min, new_max
            while self._size > self.maxconn and self.idle_connections:
                try:
                    conn = self.idle_connections.popleft()
                except IndexError:  # a lock-free getconn emptied it meanwhile
                    break
                self.return_times.pop(conn, None)
                self._size -= 1
                to_close.append(conn)
            self._update_slow_return()
            self._ensure_opening()
        now = monotonic()
        for conn in to_close:
            self._close_connection(conn, conn._pool_rec, DiscardReason.RESIZED, now)

    def clear(self) -> None:
        """Close every idle connection, whatever ``minconn`` and ``idle_timeout`` say."""
        with self._lock:
            conns = self._take_idle()
        now = monotonic()
        for conn in conns:
            self._close_connection(conn, conn._pool_rec, DiscardReason.CLEARED, now)

    def close(self) -> None:
        """Close the pool: idle connections now, checked-out ones when they are returned.

        Idempotent. Queued ``getconn`` calls fail with :class:`PoolClosed`, as do later ones;
        background tasks stop.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._slow_return = True
            conns = self._take_idle()
            # Slots reserved for opens that have not started are given back now; attempts
            # in progress give back their own when they end.
            unstarted = self._opening - self._connecting
            self._size -= unstarted
            self._opening -= unstarted
            self._parked = self._queued = self._taken = self._deferred = 0
            in_use = self._size - self._connecting  # attempts in progress are not in use
            while self._waiters:
                waiter = self._waiters.popleft()
                waiter.error = self._closed_error()
                waiter.lock.release()
            self._opened.notify_all()
        SCHEDULER.unregister(self)
        _forking.untrack(self)
        now = monotonic()
        for conn in conns:
            self._close_connection(conn, conn._pool_rec, DiscardReason.POOL_CLOSED, now)
        if self._on_close:
            self._emit(self._on_close, CloseEvent(self, in_use))

    closeall = close  #: psycopg2.pool's name for :meth:`close`

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def checkouts(self) -> list[Checkout]:
        """The checked-out connections as the pool recorded their checkout (a snapshot):
        when, and, while a listener asks for it (``checkout_stack_depth``), who took them."""
        if self._collected:  # connections dropped meanwhile: announced first, not lost
            with self._lock:
                if self._collected:
                    self._drain_collected()
        out = []
        for rec in list(self._out.values()):
            since = rec.since
            stack, thread = rec.taken_by(since)
            conn = rec.ref()
            # Still out, and the same checkout, once its fields were read.
            if conn is not None and rec.is_out() and rec.since == since:
                out.append(_new_event(Checkout, (rec.conn_id, conn, rec.backend_pid, since,
                                                 stack, thread)))
        return out

    @property
    def connections_in_use(self) -> frozenset[Connection]:
        """The checked-out connections (a snapshot; psycopg2-pool 1.2 kept a WeakSet)."""
        recs = list(self._out.values())
        return frozenset(c for r in recs if (c := r.ref()) is not None)

    def get_stats(self) -> dict[str, Any]:
        """A snapshot of the pool's state and counters since it was created (docs/api.md)."""
        with self._lock:
            if self._collected:
                self._drain_collected()
            available = len(self.idle_connections)
            stats: dict[str, Any] = {
                _keys.NAME: self.name,
                _keys.POOL_MIN: self.minconn,
                _keys.POOL_MAX: self.maxconn,
                _keys.POOL_SIZE: self._size,
                _keys.POOL_AVAILABLE: available,
                _keys.POOL_IN_USE: self._size - available - self._opening,
                _keys.POOL_OPENING: self._opening,
                _keys.REQUESTS_WAITING: len(self._waiters),
                _keys.REQUESTS: _count(self._requests),
                _keys.RETURNS: _count(self._returns),
                _keys.UNAVAILABLE_S: round(self._backoff.unavailable_for(monotonic()), 6),
            }
            counters = dict(self._stats)
            discards = dict(self._discards)
        counters[_keys.REQUESTS_WAIT_MS] = round(counters.pop(WAIT_TIME) * 1000, 3)
        counters[_keys.CONNECTIONS_MS] = round(counters.pop(_keys.CONNECT_TIME) * 1000, 3)
        stats.update(counters)
        stats[_keys.CONNECTIONS_DISCARDED] = sum(discards.values())
        stats.update({_keys.discarded(reason): n for reason, n in discards.items()})
        return stats

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else (
            f"size={self._size} idle={len(self.idle_connections)} max={self.maxconn}")
        return f"<{type(self).__name__} {self.name!r} {state}>"

    # -- checkout --------------------------------------------------------------------------
    # A checkout that found no idle connection at hand, or one that failed its checks.

    def _getconn_slow(self, key: Hashable | None, timeout: float | None, *,
                      counted: bool) -> Connection:
        """Checkout when no idle connection is at hand: wait (for a return or a background
        open), open one here (``timeout=0``), or fail."""
        if key is not None:
            return self._getconn_keyed(key, timeout)
        if not counted:
            if self._closed:  # misuse, not a request (as for a keyed getconn): not counted
                raise self._closed_error()
            next(self._requests)
        limit = self._timeout if timeout is None else timeout  # validated by getconn
        started = 0.0
        while True:
            handed_over = False
            with self._lock:
                if self._closed:
                    raise self._closed_error()
                if self._collected:
                    self._drain_collected()
                if self.idle_connections and not self._waiters:
                    conn = self._take_one_idle()
                    self._ensure_opening()  # minconn, after a discard of this checkout
                elif limit <= 0:  # may not wait: open one here, as psycopg2-pool 1.2 did
                    if self._take_reserved():
                        pass  # a refill had not started: this caller opens it instead
                    elif self._size < self.maxconn:
                        self._size += 1
                        self._opening += 1
                    elif self._bg_connecting and not self._waiters \
                            and not self._backoff.failing:
                        # A refill is opening the connection this caller would get: rather
                        # than fail beside it, take it when it is ready (bounded: a server
                        # that does not answer fails the caller as a waiter would).
                        started = monotonic()
                        conn = self._wait(started, NOT_ANSWERING)
                        handed_over = True
                    else:
                        self._stats[EXHAUSTED] += 1
                        raise self._exhausted(monotonic(), 0.0)
                    if not handed_over:
                        self._connecting += 1
                        conn = None
                else:
                    if not started:
                        started = monotonic()
                        if self._size >= self.maxconn:
                            self._stats[EXHAUSTED] += 1
                    conn = self._wait(started, limit)
                    handed_over = True
            # Outside the lock from here on: listeners may use the pool.
            if handed_over:  # by putconn or a background open: already reset and checked
                return self._checked_out(conn, started)
            if conn is None:
                opening = monotonic()
                return self._checked_out(self._open_inline(idle=False), opening, opened=True)
            rec = conn._pool_rec
            reason = self._unusable(conn, rec, rec.since, rec.returned_at)
            if reason is None:
                return self._checked_out(conn, started)
            self._discard(conn, rec, reason)

    def _take_one_idle(self) -> Connection:
        """Pop the newest idle connection and mark it checked out (lock held)."""
        conn = self.idle_connections.pop()
        rec = conn._pool_rec
        rec.returned_at = self.return_times.pop(conn, 0.0)
        rec.since = monotonic()
        self._out[rec.conn_id] = rec
        return conn

    def _checked_out(self, conn: Connection, started: float, *, opened: bool = False
                     ) -> Connection:
        """Finish the checkout of a new or handed-over connection (outside the lock)."""
        if self._checkout_hooked:
            if self._stack_depth:  # from here: the pool's own frames are trimmed by readers
                rec = conn._pool_rec
                rec.taken = (_stack(_getframe(1), self._stack_depth),
                             _threads_get(_get_ident()) or _current_thread(), rec.since)
            wait = monotonic() - started if started else 0.0
            waited = bool(started) and not opened
            self._emit_fields(self._on_checkout_fields, conn, wait, waited, opened)
            if self._on_checkout:
                self._emit(self._on_checkout, CheckoutEvent(self, conn, wait, waited, opened))
        return conn

    def _unusable(self, conn: Connection, rec: Record, now: float,
                  returned: float) -> str | None:
        """Why an idle connection must not be handed out, or None when it is fine."""
        if conn.get_transaction_status() != _IDLE:
            return closed_reason(conn)
        if self.idle_timeout and now - returned > self.idle_timeout:
            return DiscardReason.IDLE_TIMEOUT
        if now >= rec.expires:
            return DiscardReason.MAX_LIFETIME
        if self.check_idle_after is not None and now - returned >= self.check_idle_after:
            try:
                self._bounded(self.check, conn)
            except Exception:  # noqa: BLE001 - any failure means "do not hand it out"
                return DiscardReason.FAILED_CHECK
            if conn.get_transaction_status() != _IDLE:
                return DiscardReason.FAILED_CHECK
        return None

    def _discard(self, conn: Connection, rec: Record, reason: str) -> None:
        """Drop a connection that failed its checkout checks. Its slot is not refilled in the
        background: the caller goes on to take another, open one or wait (which refills)."""
        with self._lock:
            self._out.pop(rec.conn_id, None)
            self._size -= 1
        self._close_connection(conn, rec, reason, monotonic())

    def _getconn_keyed(self, key: Hashable, timeout: float | None) -> Connection:
        """psycopg2.pool's keys: one connection per key, whoever asks and however many at once."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            conn = self._keys.get(key)
        if conn is not None:
            return conn
        conn = self.getconn(timeout=timeout)
        with self._lock:
            existing = self._keys.get(key)
            if existing is None:
                self._keys[key] = conn
                conn._pool_rec.key = key
        if existing is not None:  # another thread got one for this key meanwhile: use theirs
            self.putconn(conn)
            return existing
        return conn

    def _closed_error(self) -> PoolClosed:
        return PoolClosed(f"the connection pool {self.name!r} is closed; getconn() cannot be "
                          f"used after close() — create a new pool")

    # -- waiting and hand-over -------------------------------------------------------------
    # A caller that may wait queues as a _Waiter; putconn and the background opens hand
    # connections to the first in the queue, so nobody barges ahead of a waiter.

    def _wait(self, started: float, timeout: float) -> Connection:
        """Queue for a connection; called and returns with the lock held.

        Returns the connection handed over by ``putconn`` or by a background open.
        """
        lock = self._lock
        if self.max_waiting and len(self._waiters) >= self.max_waiting:
            raise self._refused()
        waiter = _Waiter()
        self._waiters.append(waiter)
        self._stats[WAITS] += 1
        self._ensure_opening()  # room in the pool: a background open serves the queue
        deadline = started + timeout
        try:
            while True:
                remaining = deadline - monotonic()
                lock.release()
                try:
                    # Bounded slices: a connection collected while another thread held the
                    # lock frees its slot only when someone drains it (rare; see _collected).
                    got = remaining > 0 and waiter.lock.acquire(timeout=min(remaining, 1.0))
                finally:
                    lock.acquire()
                if got or waiter.conn is not None or waiter.error is not None:
                    break
                if self._collected:
                    self._drain_collected()
                    continue
                if monotonic() >= deadline:
                    self._waiters.remove(waiter)
                    self._trim_opening()
                    raise self._timed_out(started, timeout)
        except BaseException:  # timed out, or interrupted: leave nothing behind (lock held)
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                self._trim_opening()
            elif waiter.conn is not None:  # served at the last moment: pass it on
                conn, rec = waiter.conn, waiter.conn._pool_rec
                if self._waiters:
                    self._hand_over(conn, rec, monotonic())
                else:
                    self._out.pop(rec.conn_id, None)
                    self.return_times[conn] = monotonic()
                    self.idle_connections.append(conn)
            raise
        finally:
            self._stats[WAIT_TIME] += monotonic() - started
        if waiter.error is not None:
            raise waiter.error
        return waiter.conn

    def _hand_over(self, conn: Connection, rec: Record, now: float) -> None:
        """Give a checked-in (or new) connection to the first waiter (lock held)."""
        waiter = self._waiters.popleft()
        rec.since = now
        self._out[rec.conn_id] = rec
        waiter.conn = conn
        waiter.lock.release()

    def _hand_over_idle(self) -> None:
        """Serve waiters from the idle connections, or close them if the pool closed."""
        with self._lock:
            conns = self._take_idle() if self._closed else []
            while self._waiters and self.idle_connections:
                conn = self.idle_connections.pop()
                self.return_times.pop(conn, None)
                self._hand_over(conn, conn._pool_rec, monotonic())
        now = monotonic()
        for conn in conns:
            self._close_connection(conn, conn._pool_rec, DiscardReason.POOL_CLOSED, now)

    def _place(self, conn: Connection, rec: Record, now: float) -> None:
        """A new connection for the pool: to the first waiter, else idle (lock held)."""
        if self._waiters:
            self._hand_over(conn, rec, now)
        else:
            self.return_times[conn] = now  # first: a lock-free getconn may pop it at once
            self.idle_connections.append(conn)

    def _timed_out(self, started: float, timeout: float) -> psycopg2.OperationalError:
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
        self._announce_timeout(TimeoutEvent(self, waited, timeout, error))
        return error

    def _exhausted(self, started: float, timeout: float) -> PoolExhausted:
        """Build the exhaustion error (lock held) and announce it (listeners run unlocked)."""
        waited = monotonic() - started if timeout > 0 else 0.0
        in_use = self._size - len(self.idle_connections) - self._opening
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
        self._announce_timeout(TimeoutEvent(self, waited, timeout, error))
        return error

    def _refused(self) -> TooManyRequests:
        """The error of a caller refused because ``max_waiting`` wait already (lock held)."""
        in_use = self._size - len(self.idle_connections) - self._opening
        self._stats[REQUESTS_REFUSED] += 1
        error = TooManyRequests(
            f"the pool {self.name!r} refused the request: max_waiting={self.max_waiting} "
            f"requests are already waiting for a connection (maxconn={self.maxconn:g}, "
            f"{in_use} in use). Retry later, shed load, or raise max_waiting or maxconn.",
            maxconn=self.maxconn, in_use=in_use, waited=0.0, timeout=self._timeout)
        self._announce_timeout(TimeoutEvent(self, 0.0, self._timeout, error))
        return error

    def _announce_timeout(self, event: TimeoutEvent) -> None:
        """Send ``on_timeout`` (lock held: released around the listeners)."""
        if self._on_timeout:
            self._lock.release()
            try:
                self._emit(self._on_timeout, event)
            finally:
                self._lock.acquire()

    # -- return ----------------------------------------------------------------------------

    def _claim_return(self, conn: Connection, rec: Record | None,
                      key: Hashable | None) -> Record:
        """The slow path of putconn: keys, and every kind of misuse, with precise errors."""
        if rec is not None and rec.ref() is not conn:  # not ours after all: put it back
            self._out[rec.conn_id] = rec
            rec = None
        if rec is None:
            if not isinstance(conn, extensions.connection):
                raise TypeError(f"putconn() takes a connection from this pool's getconn(), "
                                f"got {type(conn).__name__}")
            if getattr(conn, "_pool", None) is self:
                if _forking.inherited(self, conn):
                    raise PoolError("this connection was checked out in the parent process "
                                    "before os.fork(); the child cannot use or return it — "
                                    "check out a new one in the child")
                raise PoolError("this connection was already returned to the pool; "
                                "return each connection once")
            raise PoolError("this connection does not belong to this pool (it was not "
                            "checked out with this pool's getconn()); close it yourself or "
                            "return it to the pool it came from")
        with self._lock:
            if key is not None and rec.key != key:
                self._out[rec.conn_id] = rec
                raise PoolError(f"this connection was not checked out under key {key!r}")
            if rec.key is not None:
                self._keys.pop(rec.key, None)
                rec.key = None
        return rec

    def _putconn_slow(self, conn: Connection, rec: Record, now: float, close: bool) -> None:
        """Return with a reset, a discard, a waiter to serve, or the pool closed."""
        reason: str | None = DiscardReason.CLOSED_BY_USER if close else None
        if reason is None:
            status = conn.get_transaction_status()
            if status:
                reason = self._reset(conn, status)
        if reason is None and now >= rec.expires:
            reason = DiscardReason.MAX_LIFETIME
        if reason is None and self._closed:
            reason = DiscardReason.POOL_CLOSED
        if reason is None and self._size > self.maxconn:
            reason = DiscardReason.RESIZED
        if reason is None and self._idle_zero and len(self.idle_connections) >= self.minconn:
            reason = DiscardReason.IDLE_TIMEOUT
        if reason is None and self._reset_hook is not None:
            reason = self._run_reset(conn, rec)
        if self._checkin_hooked:  # before anyone else can check it out: events stay in order
            use_time, kept = now - rec.since, reason is None
            self._emit_fields(self._on_checkin_fields, conn, use_time, kept, reason)
            if self._on_checkin:
                self._emit(self._on_checkin, CheckinEvent(self, conn, use_time, kept, reason))
        with self._lock:
            if reason is None and self._closed:  # close() ran since the check above
                reason = DiscardReason.POOL_CLOSED
            if reason is not None:
                self._free_slot()
                self._update_slow_return()
            elif self._waiters:
                self._hand_over(conn, rec, now)
            else:
                self.return_times[conn] = now
                self.idle_connections.append(conn)
        if reason is not None:
            self._close_connection(conn, rec, reason, now)

    def _run_reset(self, conn: Connection, rec: Record) -> str | None:
        """Call the ``reset`` hook on a returned connection; the discard reason if it fails."""
        rec.hook = True
        try:
            self._bounded(self._reset_hook, conn)  # type: ignore[arg-type]
            if conn.get_transaction_status() == _IDLE:
                return None
            problem = "left a transaction open"
        except Exception as exc:  # noqa: BLE001 - a connection that cannot be reset goes
            problem = f"raised {type(exc).__name__}"
        finally:
            rec.hook = False
        if not self._reset_failed_logged:  # once per pool: discard events count the rest
            self._reset_failed_logged = True
            logger.warning("pool %r: the reset callable %s; the connection was discarded "
                           "(reported once; see the discarded_failed_reset statistic)",
                           self.name, problem)
        return DiscardReason.FAILED_RESET

    def _reset(self, conn: Connection, status: int) -> str | None:
        """Roll back a connection returned inside a transaction; the discard reason if it fails."""
        if status == _UNKNOWN:
            return closed_reason(conn)
        if status == _ACTIVE:
            return DiscardReason.BROKEN  # a command is still running on it
        try:
            self._bounded(conn.__class__.rollback, conn)
        except Exception:  # noqa: BLE001 - a connection that cannot roll back is broken
            return DiscardReason.BROKEN
        with self._lock:
            self._stats[ROLLBACKS] += 1
        return None if conn.get_transaction_status() == _IDLE else DiscardReason.BROKEN

    def _bounded(self, call: Callable[[Connection], object], conn: Connection) -> None:
        """``call(conn)``, its socket shut down should it take longer than ``io_timeout``."""
        seconds = self.io_timeout
        if seconds is None:
            call(conn)
            return
        token = WATCHDOG.arm(conn.fileno(), seconds)
        try:
            call(conn)
        finally:
            if WATCHDOG.disarm(token):
                logger.warning("pool %r: a %s took longer than io_timeout=%gs; the connection "
                               "was shut down and will be discarded", self.name,
                               getattr(call, "__name__", "round trip"), seconds)

    def _update_slow_return(self) -> None:
        """Whether every ``putconn`` must take the slow path (lock held)."""
        self._slow_return = (self._closed or self._reset_hook is not None
                             or self._size > self.maxconn)

    def _take_idle(self) -> list[Connection]:
        """Take every idle connection out of the pool (lock held)."""
        conns = []
        while True:
            try:
                conns.append(self.idle_connections.popleft())
            except IndexError:
                break
        for conn in conns:
            self.return_times.pop(conn, None)
        self._size -= len(conns)
        return conns

    # -- fork ------------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """Forget every inherited connection without touching the parent's sessions."""
        self._lock = threading.Lock()
        self._opened = threading.Condition(self._lock)
        self._waiters = deque()
        self._collected = deque()
        conns = list(self.idle_connections)
        conns += [c for r in list(self._out.values()) if (c := r.ref()) is not None]
        self.idle_connections.clear()
        self.return_times.clear()
        self._out.clear()
        self._keys.clear()
        self._size = 0
        self._reset_openings()
        _forking.detach(self, conns)
        now = monotonic()
        for conn in conns:
            self._close_connection(conn, conn._pool_rec, DiscardReason.FORK, now)
        SCHEDULER.register(self, self.num_workers)  # the child's scheduler starts empty
        with self._lock:
            self._ensure_opening()  # back to minconn, in the child's background
        self._start_upkeep()


def _count(counter: itertools.count[int]) -> int:
    """The next value an ``itertools.count`` would give, i.e. how many were taken."""
    return int(repr(counter)[6:-1])


#: psycopg2.pool's name; the same thread-safe class.
ThreadedConnectionPool = ConnectionPool
#: psycopg2.pool's name of its unlocked pool: thread safety costs nothing uncontended here,
#: so there is no unsafe variant to pick.
SimpleConnectionPool = ConnectionPool
#: psycopg2.pool's base class, for ``isinstance`` checks and annotations written against it.
AbstractConnectionPool = ConnectionPool
#: psycopg2-pool 1.2's name; the same thread-safe class.
ThreadSafeConnectionPool = ConnectionPool

__all__ = ["AbstractConnectionPool", "ConnectionPool", "SimpleConnectionPool",
           "ThreadSafeConnectionPool", "ThreadedConnectionPool", "check_connection"]
