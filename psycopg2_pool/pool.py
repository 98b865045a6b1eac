"""The connection pool.

One implementation, thread-safe: a single lock guards the bookkeeping and is never held
across I/O (connecting, rolling back, closing, health checks). Callers that find the pool
exhausted queue in arrival order and are handed a connection (or a free slot to open one)
directly by ``putconn``, so nobody barges ahead of a waiter.

The pool holds idle connections strongly and checked-out ones only weakly: a connection the
application drops without ``putconn`` is garbage-collected, closed by psycopg2, reported as a
``garbage_collected`` discard, and its slot is given back.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import threading
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from time import monotonic
from types import TracebackType
from typing import Any

from . import _forking
from ._driver import extensions, psycopg2
from ._watchdog import WATCHDOG
from .connection import leave, pooled_class
from .dsn import default_pool_name, parse_options
from .errors import PoolClosed, PoolError, PoolExhausted
from .events import (
    HOOKS,
    CheckinEvent,
    CheckoutEvent,
    CloseEvent,
    ConnectEvent,
    DiscardEvent,
    DiscardReason,
    PoolListener,
    TimeoutEvent,
)

logger = logging.getLogger("psycopg2_pool")

#: Builds an event (a NamedTuple) without the Python-level ``__new__`` NamedTuple adds.
_new_event = tuple.__new__

_IDLE = extensions.TRANSACTION_STATUS_IDLE
_ACTIVE = extensions.TRANSACTION_STATUS_ACTIVE
_UNKNOWN = extensions.TRANSACTION_STATUS_UNKNOWN
_INF = math.inf

Connection = Any  # a psycopg2 connection opened by the pool


class _Record:
    """What the pool knows of one open connection (reachable as ``conn._pool_rec``)."""

    __slots__ = (
        "backend_pid",
        "conn_id",
        "created",
        "expires",
        "key",
        "pool_ref",
        "ref",
        "returned_at",
        "since",
    )

    def __init__(self, pool: ConnectionPool, conn: Connection, created: float,
                 expires: float) -> None:
        self.pool_ref = pool._self_ref
        self.ref = weakref.ref(conn, self._collected)
        self.conn_id = id(conn)
        self.backend_pid: int = conn.info.backend_pid
        self.created = created
        self.expires = expires
        self.since = 0.0  # time of the last checkout
        self.returned_at = 0.0  # time it last became idle (slow checkout path only)
        self.key: Hashable | None = None

    def _collected(self, _ref: weakref.ref[Any]) -> None:
        pool = self.pool_ref()
        if pool is not None and pool._out.pop(self.conn_id, None) is self:
            pool._connection_collected(self)


class _Waiter:
    """A getconn queued for a connection; ``putconn`` fills one field and releases ``lock``."""

    __slots__ = ("conn", "error", "lock", "slot")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.conn: Connection = None  # a strong reference: the giver may drop its own
        self.slot = False  # True: a slot was freed for this waiter to open a connection
        self.error: BaseException | None = None


def _seconds(name: str, value: Any, *, positive: bool = False, optional: bool = False) -> float:
    """Validate a duration argument: a real number of seconds, not NaN, not negative."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        accepted = "a number of seconds or None" if optional else "a number of seconds"
        raise TypeError(f"{name} must be {accepted}, got {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{name} must be a number of seconds, got NaN")
    if value < 0 or (positive and value == 0):
        hint = "; pass None for no limit" if positive and optional else ""
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} seconds, "
                         f"got {value!r}{hint}")
    return float(value)


def _optional_seconds(name: str, value: Any, *, positive: bool = False) -> float | None:
    return None if value is None else _seconds(name, value, positive=positive, optional=True)


def _closed_reason(conn: Connection) -> str:
    """Why an unusable connection goes: psycopg2 sets ``closed`` to 1 after ``close()``, to 2
    when the session was lost (server gone, backend terminated)."""
    return DiscardReason.CLOSED_BY_USER if conn.closed == 1 else DiscardReason.BROKEN


def check_connection(conn: Connection) -> None:
    """The default health check: one ``SELECT 1`` round trip, leaving no transaction open."""
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        conn.autocommit = autocommit


class ConnectionPool:
    """A thread-safe pool of psycopg2 connections.

    ``ConnectionPool(minconn=1, maxconn=inf, idle_timeout=600, **connect_kwargs)`` as in
    psycopg2-pool 1.2; see docs/api.md for every argument, attribute and error.

    Concurrency: the common checkout (an idle connection is there) and return (nobody is
    waiting) touch only ``deque``/``dict`` operations that are atomic in CPython, as
    psycopg2-pool 1.2 did; everything else (opening, discarding, waiting, closing) runs under
    one lock that is never held across I/O.
    """

    def __init__(self, minconn: int = 1, maxconn: float = _INF, idle_timeout: float | None = 600,
                 *, timeout: float = 0.0, max_lifetime: float | None = None,
                 check_idle_after: float | None = None,
                 check: Callable[[Connection], object] | None = None,
                 io_timeout: float | None = 5.0,
                 name: str | None = None, **connect_kwargs: Any) -> None:
        if isinstance(minconn, bool) or not isinstance(minconn, int):
            raise TypeError(f"minconn must be an int, got {type(minconn).__name__}")
        if minconn < 0:
            raise ValueError(f"minconn must be >= 0, got {minconn}")
        if isinstance(maxconn, bool) or not isinstance(maxconn, (int, float)) or (
                isinstance(maxconn, float) and maxconn != _INF):
            shown = repr(maxconn) if isinstance(maxconn, (int, float)) else (
                type(maxconn).__name__)  # a str may be a DSN with a password: never quote it
            raise TypeError(f"maxconn must be an int (or float('inf') for no limit), "
                            f"got {shown}")
        if maxconn < 1:
            raise ValueError(f"maxconn must be >= 1, got {maxconn}")
        if minconn > maxconn:
            raise ValueError(f"minconn ({minconn}) must not be greater than maxconn ({maxconn})")
        if check is not None and not callable(check):
            raise TypeError(f"check must be a callable taking a connection, "
                            f"got {type(check).__name__}")
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError("name must be a non-empty str")
        if connect_kwargs.get("async") or connect_kwargs.get("async_"):
            raise TypeError("asynchronous connections cannot be pooled; drop async=True")
        if isinstance(idle_timeout, str):  # psycopg2.pool's positional DSN; never quote it
            raise TypeError("idle_timeout must be a number of seconds or None, got str "
                            "(pass the DSN as dsn=...)")
        factory = connect_kwargs.get("connection_factory")
        if factory is None:
            factory = extensions.connection
        options = parse_options(connect_kwargs)
        connect_kwargs.setdefault("dsn", "")

        self.minconn = minconn
        self.maxconn = maxconn
        self.idle_timeout = idle_timeout
        self.timeout = timeout
        self.max_lifetime = _optional_seconds("max_lifetime", max_lifetime, positive=True)
        self.check_idle_after = check_idle_after
        if check is not None and check_idle_after is None:
            self.check_idle_after = 0.0
        self.check = check if check is not None else check_connection
        #: Seconds the pool's own round trips (``check``, rollback on return) may take before
        #: the connection is deemed broken: its socket is shut down and it is discarded.
        self.io_timeout = _optional_seconds("io_timeout", io_timeout, positive=True)
        self.connect_kwargs = connect_kwargs
        self.name = name or default_pool_name(options)

        #: Idle connections, last in first out (psycopg2-pool 1.2's attribute).
        self.idle_connections: deque[Connection] = deque()
        #: Connection -> monotonic time it became idle (psycopg2-pool 1.2's attribute).
        self.return_times: dict[Connection, float] = {}

        self._self_ref = weakref.ref(self)
        self._connect_args = {k: v for k, v in connect_kwargs.items()
                              if k != "connection_factory"}
        self._factory = pooled_class(factory)
        self._lock = threading.Lock()
        self._out: dict[int, _Record] = {}  # checked-out connections, by id()
        self._waiters: deque[_Waiter] = deque()
        self._keys: dict[Hashable, Connection] = {}
        self._collected: deque[_Record] = deque()
        self._size = 0  # open connections + connections being opened
        self._opening = 0
        self._closed = False
        self._requests = itertools.count()  # next() is atomic: no lock on the fast path
        self._returns = itertools.count()
        self._stats: dict[str, float] = dict.fromkeys(_COUNTERS, 0)
        self._discards = dict.fromkeys(DiscardReason.ALL, 0)
        self._listeners: tuple[object, ...] = ()
        self._on_connect: tuple[Callable[[Any], None], ...] = ()
        self._on_checkout: tuple[Callable[[Any], None], ...] = ()
        self._on_checkin: tuple[Callable[[Any], None], ...] = ()
        self._on_timeout: tuple[Callable[[Any], None], ...] = ()
        self._on_discard: tuple[Callable[[Any], None], ...] = ()
        self._on_close: tuple[Callable[[Any], None], ...] = ()
        _forking.track(self)

        try:
            for _ in range(minconn):
                with self._lock:
                    self._size += 1
                    self._opening += 1
                self._open(idle=True)
        except BaseException:
            self.close()
            raise

    @property
    def timeout(self) -> float:
        """Seconds ``getconn`` waits for a connection when all are in use (0: fail at once)."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._timeout = _seconds("timeout", value)  # NaN would make a waiter loop forever

    @property
    def idle_timeout(self) -> float | None:
        """Seconds an idle connection may stay idle before it is closed (None/0: no limit)."""
        return self._idle_timeout

    @idle_timeout.setter
    def idle_timeout(self, value: float | None) -> None:
        self._idle_timeout = _optional_seconds("idle_timeout", value)
        self._update_limits()

    @property
    def check_idle_after(self) -> float | None:
        """Idle seconds after which a checkout runs ``check`` first (None: never)."""
        return self._check_idle_after

    @check_idle_after.setter
    def check_idle_after(self, value: float | None) -> None:
        self._check_idle_after = _optional_seconds("check_idle_after", value)
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

        Reuses the most recently returned idle connection, else opens one while fewer than
        ``maxconn`` are open, else waits up to ``timeout`` seconds (the pool's ``timeout``
        when not given) for one to be returned, then raises :class:`PoolExhausted`.
        ``key`` (psycopg2.pool's) returns the connection already checked out under that key.
        """
        if timeout is not None:  # before anything is counted or handed out
            timeout = _seconds("timeout", timeout)
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
                listeners = self._on_checkout
                if listeners:  # inlined _emit: this is the path every checkout takes
                    event = _new_event(CheckoutEvent, (self, conn, 0.0, False))
                    for method in listeners:
                        try:
                            method(event)
                        except Exception:  # noqa: BLE001 - a listener must never break the pool
                            self._listener_failed(method)
                return conn
        return self._getconn_slow(key, timeout, counted=False)

    def putconn(self, conn: Connection, key: Hashable | None = None, close: bool = False) -> None:
        """Return a connection to the pool.

        An open transaction is rolled back; a closed or broken connection is discarded, as is
        one past ``max_lifetime`` or returned with ``close=True``. Connections idle past
        ``idle_timeout`` are closed, and the pool is refilled to ``minconn``.
        """
        rec = self._out.pop(id(conn), None)  # atomic: of two racing returns, one wins
        if rec is None or rec.ref() is not conn or key is not None or rec.key is not None:
            rec = self._claim_return(conn, rec, key)
        next(self._returns)
        now = monotonic()
        if close or conn.get_transaction_status() or now >= rec.expires or self._waiters \
                or self._closed or (self._idle_zero
                                    and len(self.idle_connections) >= self.minconn):
            self._putconn_slow(conn, rec, now, close)
            return
        listeners = self._on_checkin
        if listeners:  # before anyone else can check it out, so that events stay in order
            event = _new_event(CheckinEvent, (self, conn, now - rec.since, True, None))
            for method in listeners:
                try:
                    method(event)
                except Exception:  # noqa: BLE001 - a listener must never break the pool
                    self._listener_failed(method)
        self.return_times[conn] = now
        idle = self.idle_connections
        idle.append(conn)
        if self._waiters or self._closed:  # a waiter or close() came in meanwhile
            self._hand_over_idle()
            return
        try:
            oldest = idle[0]
        except IndexError:  # emptied by a concurrent getconn
            return
        if now - self.return_times.get(oldest, now) > self._idle_limit \
                or self._size < self.minconn:
            self._maintain(now)

    def connection(self, timeout: float | None = None) -> _ConnectionContext:
        """``with pool.connection() as conn:`` checks out, commits or rolls back, returns."""
        return _ConnectionContext(self, timeout)

    def clear(self) -> None:
        """Close every idle connection, whatever ``minconn`` and ``idle_timeout`` say."""
        with self._lock:
            conns = self._take_idle()
        now = monotonic()
        for conn in conns:
            self._close_connection(conn, conn._pool_rec, DiscardReason.CLEARED, now)

    def close(self) -> None:
        """Close the pool: idle connections now, checked-out ones when they are returned.

        Idempotent. Queued ``getconn`` calls fail with :class:`PoolClosed`, as do later ones.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns = self._take_idle()
            in_use = self._size
            while self._waiters:
                waiter = self._waiters.popleft()
                waiter.error = self._closed_error()
                waiter.lock.release()
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
                "name": self.name,
                "pool_min": self.minconn,
                "pool_max": self.maxconn,
                "pool_size": self._size,
                "pool_available": available,
                "pool_in_use": self._size - available - self._opening,
                "pool_opening": self._opening,
                "requests_waiting": len(self._waiters),
                "requests": _count(self._requests),
                "returns": _count(self._returns),
            }
            counters = dict(self._stats)
            discards = dict(self._discards)
        counters["requests_wait_ms"] = round(counters.pop("wait_time") * 1000, 3)
        counters["connections_ms"] = round(counters.pop("connect_time") * 1000, 3)
        stats.update(counters)
        stats["connections_discarded"] = sum(discards.values())
        stats.update({f"discarded_{reason}": n for reason, n in discards.items()})
        return stats

    def add_listener(self, listener: object) -> None:
        """Attach a listener (see :mod:`psycopg2_pool.events`); its ``on_*`` methods are used."""
        if isinstance(listener, type):
            raise TypeError(f"add_listener() takes a listener object, got the class "
                            f"{listener.__name__}; pass an instance: {listener.__name__}()")
        if not any(callable(getattr(listener, hook, None)) for hook in HOOKS):
            raise TypeError(f"a listener needs at least one of the methods {', '.join(HOOKS)}")
        with self._lock:
            if listener in self._listeners:
                raise ValueError("this listener is already attached to the pool")
            self._set_listeners((*self._listeners, listener))

    def remove_listener(self, listener: object) -> None:
        """Detach a listener; a listener that is not attached is ignored."""
        with self._lock:
            self._set_listeners(tuple(x for x in self._listeners if x is not listener))

    @property
    def listeners(self) -> tuple[object, ...]:
        """The attached listeners, in the order they are called."""
        return self._listeners

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else (
            f"size={self._size} idle={len(self.idle_connections)} max={self.maxconn}")
        return f"<{type(self).__name__} {self.name!r} {state}>"

    # -- checkout internals ------------------------------------------------------------------

    def _getconn_slow(self, key: Hashable | None, timeout: float | None, *,
                      counted: bool) -> Connection:
        """Checkout when no idle connection is at hand: open, wait, or fail."""
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
                elif self._size < self.maxconn:
                    self._size += 1
                    self._opening += 1
                    conn = None
                else:
                    if not started:
                        started = monotonic()
                        self._stats["exhausted"] += 1
                    conn = self._wait(started, limit)
                    handed_over = conn is not None
            # Outside the lock from here on: listeners may use the pool.
            if handed_over:  # by putconn: already reset and checked
                return self._checked_out(conn, started)
            if conn is None:
                return self._checked_out(self._open(idle=False), started)
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

    def _checked_out(self, conn: Connection, started: float) -> Connection:
        """Finish the checkout of a new or handed-over connection (outside the lock)."""
        if self._on_checkout:
            wait = monotonic() - started if started else 0.0
            self._emit(self._on_checkout, CheckoutEvent(self, conn, wait, bool(started)))
        return conn

    def _unusable(self, conn: Connection, rec: _Record, now: float,
                  returned: float) -> str | None:
        """Why an idle connection must not be handed out, or None when it is fine."""
        if conn.get_transaction_status() != _IDLE:
            return _closed_reason(conn)
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

    def _wait(self, started: float, timeout: float) -> Connection:
        """Queue for a connection; called and returns with the lock held.

        Returns the handed-over connection, or None when a slot was handed over instead.
        """
        lock = self._lock
        if timeout <= 0:
            raise self._exhausted(started, timeout)
        waiter = _Waiter()
        self._waiters.append(waiter)
        self._stats["waits"] += 1
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
                if got or waiter.conn is not None or waiter.slot or waiter.error is not None:
                    break
                if self._collected:
                    self._drain_collected()
                    continue
                if monotonic() >= deadline:
                    self._waiters.remove(waiter)
                    raise self._exhausted(started, timeout)
        except BaseException:  # timed out, or interrupted: leave nothing behind (lock held)
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.conn is not None:  # served at the last moment: pass it on
                conn, rec = waiter.conn, waiter.conn._pool_rec
                if self._waiters:
                    self._hand_over(conn, rec, monotonic())
                else:
                    self._out.pop(rec.conn_id, None)
                    self.return_times[conn] = monotonic()
                    self.idle_connections.append(conn)
            elif waiter.slot:
                self._opening -= 1
                self._free_slot()
            raise
        finally:
            self._stats["wait_time"] += monotonic() - started
        if waiter.error is not None:
            raise waiter.error
        return waiter.conn

    def _exhausted(self, started: float, timeout: float) -> PoolExhausted:
        """Build the exhaustion error (lock held) and announce it (listeners run unlocked)."""
        waited = monotonic() - started if timeout > 0 else 0.0
        in_use = self._size - len(self.idle_connections) - self._opening
        self._stats["timeouts"] += 1
        queued = len(self._waiters)
        wait_text = (f"waited {waited:.3g} s (timeout={timeout:g} s)" if timeout > 0 else
                     "did not wait (timeout=0)")
        error = PoolExhausted(
            f"no more connections in the pool {self.name!r}: maxconn={self.maxconn:g}, "
            f"{in_use} in use, {self._opening} opening, {queued} other request(s) waiting; "
            f"{wait_text}. Return every connection (use `with pool.connection() as conn:` "
            f"or putconn() in a finally block), raise maxconn, or pass timeout= to wait longer.",
            maxconn=self.maxconn, in_use=in_use, waited=waited, timeout=timeout)
        if self._on_timeout:
            self._lock.release()
            try:
                self._emit(self._on_timeout, TimeoutEvent(self, waited, timeout, error))
            finally:
                self._lock.acquire()
        return error

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

    # -- return internals --------------------------------------------------------------------

    def _claim_return(self, conn: Connection, rec: _Record | None,
                      key: Hashable | None) -> _Record:
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

    def _putconn_slow(self, conn: Connection, rec: _Record, now: float, close: bool) -> None:
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
        if reason is None and self._idle_zero and len(self.idle_connections) >= self.minconn:
            reason = DiscardReason.IDLE_TIMEOUT
        if self._on_checkin:  # before anyone else can check it out: events stay in order
            self._emit(self._on_checkin, CheckinEvent(self, conn, now - rec.since,
                                                      reason is None, reason))
        to_close: list[Connection] = []
        with self._lock:
            if reason is None and self._closed:  # close() ran since the check above
                reason = DiscardReason.POOL_CLOSED
            if reason is not None:
                self._free_slot()
            elif self._waiters:
                self._hand_over(conn, rec, now)
            else:
                self.return_times[conn] = now
                self.idle_connections.append(conn)
                to_close = self._prune_idle(now)
            refill = self._reserve_refill()
        if reason is not None:
            self._close_connection(conn, rec, reason, now)
        self._finish(now, to_close, refill)

    def _hand_over(self, conn: Connection, rec: _Record, now: float) -> None:
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

    def _maintain(self, now: float) -> None:
        """Close connections idle past ``idle_timeout``, then refill to ``minconn``."""
        with self._lock:
            to_close = self._prune_idle(now)
            refill = self._reserve_refill()
        self._finish(now, to_close, refill)

    def _finish(self, now: float, to_close: list[Connection], refill: int) -> None:
        for old in to_close:
            self._close_connection(old, old._pool_rec, DiscardReason.IDLE_TIMEOUT, now)
        if refill:
            self._refill(refill)

    def _reset(self, conn: Connection, status: int) -> str | None:
        """Roll back a connection returned inside a transaction; the discard reason if it fails."""
        if status == _UNKNOWN:
            return _closed_reason(conn)
        if status == _ACTIVE:
            return DiscardReason.BROKEN  # a command is still running on it
        try:
            self._bounded(conn.__class__.rollback, conn)
        except Exception:  # noqa: BLE001 - a connection that cannot roll back is broken
            return DiscardReason.BROKEN
        with self._lock:
            self._stats["rollbacks"] += 1
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

    def _prune_idle(self, now: float) -> list[Connection]:
        """Take the connections idle past ``idle_timeout`` out of the pool (lock held)."""
        idle = self.idle_connections
        limit = self._idle_limit
        pruned = []
        while idle:
            oldest = idle[0]
            returned = self.return_times.get(oldest)
            if returned is None or now - returned <= limit:
                break
            try:
                popped = idle.popleft()
            except IndexError:  # a lock-free getconn emptied it meanwhile
                break
            if popped is not oldest:  # a lock-free getconn took the oldest meanwhile
                idle.appendleft(popped)
                continue
            self.return_times.pop(oldest, None)
            pruned.append(oldest)
        self._size -= len(pruned)
        return pruned

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

    # -- opening and closing -----------------------------------------------------------------

    def _reserve_refill(self) -> int:
        """Reserve the slots needed to get back to ``minconn`` (lock held)."""
        missing = self.minconn - self._size
        if missing <= 0 or self._closed:
            return 0
        self._size += missing
        self._opening += missing
        return missing

    def _refill(self, count: int) -> None:
        """Open ``count`` reserved idle connections; failures are reported, not raised."""
        for done in range(count):
            try:
                self._open(idle=True)
            except Exception:  # noqa: BLE001 - already counted and announced by _open
                with self._lock:
                    for _ in range(count - done - 1):
                        self._opening -= 1
                        self._free_slot()
                return

    def _open(self, *, idle: bool) -> Connection:
        """Open a connection in a reserved slot; on failure give the slot back and raise."""
        started = monotonic()
        try:
            conn = psycopg2.connect(connection_factory=self._factory, **self._connect_args)
        except BaseException as exc:
            duration = monotonic() - started
            with self._lock:
                self._opening -= 1
                self._stats["connections_errors"] += 1
                self._free_slot()
            if self._on_connect:
                self._emit(self._on_connect, ConnectEvent(self, None, duration, exc))
            raise
        now = monotonic()
        expires = _INF if self.max_lifetime is None else (
            now + self.max_lifetime * random.uniform(0.9, 1.0))  # jitter: no mass reconnect
        rec = _Record(self, conn, now, expires)
        conn._pool = self
        conn._pool_rec = rec
        if self._on_connect:  # before anyone can check it out: events stay in order
            self._emit(self._on_connect, ConnectEvent(self, conn, now - started, None))
        close = False
        with self._lock:
            self._opening -= 1
            self._stats["connections_num"] += 1
            self._stats["connect_time"] += now - started
            rec.since = now
            if self._closed and idle:
                close = True
                self._size -= 1
            elif idle and not self._waiters:
                self.return_times[conn] = now  # first: a lock-free getconn may pop it at once
                self.idle_connections.append(conn)
            elif idle:  # opened for the pool, but somebody is waiting: serve them
                self._hand_over(conn, rec, now)
            else:
                self._out[rec.conn_id] = rec
        if close:
            self._close_connection(conn, rec, DiscardReason.POOL_CLOSED, now)
        return conn

    def _discard(self, conn: Connection, rec: _Record, reason: str) -> None:
        """Drop a checked-out connection that failed its checkout checks."""
        with self._lock:
            self._out.pop(rec.conn_id, None)
            self._free_slot()
        self._close_connection(conn, rec, reason, monotonic())

    def _free_slot(self) -> None:
        """A connection left the pool: hand its slot to the first waiter, if any (lock held)."""
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.slot = True
            self._opening += 1
            waiter.lock.release()
        else:
            self._size -= 1

    def _close_connection(self, conn: Connection, rec: _Record, reason: str, now: float) -> None:
        """Close a connection already taken out of the books, and announce it."""
        with contextlib.suppress(Exception):  # a broken connection may fail to close; it is gone
            conn.close()
        with self._lock:
            self._discards[reason] += 1
        if self._on_discard:
            self._emit(self._on_discard, DiscardEvent(self, conn, rec.conn_id, rec.backend_pid,
                                                      reason, now - rec.created))

    def _connection_collected(self, rec: _Record) -> None:
        """Weakref callback: a checked-out connection was garbage-collected (any thread).

        It may run while this very thread holds the lock, so it only queues the record and
        drains the queue if the lock is free at once.
        """
        self._collected.append(rec)
        if self._lock.acquire(blocking=False):
            try:
                self._drain_collected()
            finally:
                self._lock.release()

    def _drain_collected(self) -> None:
        """Give back the slots of collected connections and announce them (lock held)."""
        events = []
        while self._collected:
            rec = self._collected.popleft()
            if rec.key is not None:
                self._keys.pop(rec.key, None)
            self._discards[DiscardReason.GARBAGE_COLLECTED] += 1
            self._free_slot()
            events.append(DiscardEvent(self, None, rec.conn_id, rec.backend_pid,
                                       DiscardReason.GARBAGE_COLLECTED,
                                       monotonic() - rec.created))
        if events and self._on_discard:
            self._lock.release()
            try:
                for event in events:
                    self._emit(self._on_discard, event)
            finally:
                self._lock.acquire()

    def _closed_error(self) -> PoolClosed:
        return PoolClosed(f"the connection pool {self.name!r} is closed; getconn() cannot be "
                          f"used after close() — create a new pool")

    def _is_checked_out(self, conn: Connection) -> bool:
        rec = self._out.get(id(conn))
        return rec is not None and rec.ref() is conn

    # -- listeners ---------------------------------------------------------------------------

    def _set_listeners(self, listeners: tuple[object, ...]) -> None:
        self._listeners = listeners
        for hook in HOOKS:
            methods = []
            for listener in listeners:
                method = getattr(listener, hook, None)
                if not callable(method):
                    continue
                if getattr(type(listener), hook, None) is getattr(PoolListener, hook):
                    continue  # PoolListener's no-op: skip it, it costs a call per event
                methods.append(method)
            setattr(self, f"_{hook}", tuple(methods))

    def _emit(self, methods: tuple[Callable[[Any], None], ...], event: object) -> None:
        for method in methods:
            try:
                method(event)
            except Exception:  # noqa: BLE001 - a listener must never break the pool
                self._listener_failed(method)

    def _listener_failed(self, method: Callable[[Any], None]) -> None:
        with self._lock:
            self._stats["listener_errors"] += 1
            count = self._stats["listener_errors"]
        if count <= 10:
            logger.exception("pool %r: listener %r raised; the pool carries on", self.name,
                             method)

    # -- fork --------------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """Forget every inherited connection without touching the parent's sessions."""
        self._lock = threading.Lock()
        self._waiters = deque()
        self._collected = deque()
        conns = list(self.idle_connections)
        conns += [c for r in list(self._out.values()) if (c := r.ref()) is not None]
        self.idle_connections.clear()
        self.return_times.clear()
        self._out.clear()
        self._keys.clear()
        self._size = self._opening = 0
        _forking.detach(self, conns)
        now = monotonic()
        for conn in conns:
            self._close_connection(conn, conn._pool_rec, DiscardReason.FORK, now)


def _count(counter: itertools.count[int]) -> int:
    """The next value an ``itertools.count`` would give, i.e. how many were taken."""
    return int(repr(counter)[6:-1])


class _ConnectionContext:
    """The context manager of :meth:`ConnectionPool.connection`."""

    __slots__ = ("checkout", "conn", "pool", "timeout")

    def __init__(self, pool: ConnectionPool, timeout: float | None) -> None:
        self.pool = pool
        self.timeout = timeout
        self.conn: Connection = None
        self.checkout = 0.0

    def __enter__(self) -> Connection:
        self.conn = conn = self.pool.getconn(timeout=self.timeout)
        self.checkout = conn._pool_rec.since  # this checkout, not a later one by someone else
        return conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        conn, self.conn = self.conn, None
        leave(self.pool, conn, self.checkout, exc_type)


_COUNTERS = ("exhausted", "waits", "wait_time", "timeouts", "rollbacks", "connections_num",
             "connections_errors", "connect_time", "listener_errors")

#: psycopg2.pool's name; the same thread-safe class.
ThreadedConnectionPool = ConnectionPool
#: psycopg2-pool 1.2's name; the same thread-safe class.
ThreadSafeConnectionPool = ConnectionPool

__all__ = ["ConnectionPool", "ThreadSafeConnectionPool", "ThreadedConnectionPool",
           "check_connection"]
