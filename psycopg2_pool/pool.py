"""The connection pool's core: checkout and return.

One implementation, thread-safe. Callers that find the pool exhausted queue in arrival order
and are handed a connection directly by ``putconn`` or by a background open, so nobody
barges ahead of a waiter. Callers never open connections when they may wait (``timeout >
0``) and never prune: that upkeep runs in the background (:mod:`psycopg2_pool.upkeep`).

The rules (docs/layout.md repeats them; tests/pool/test_core_*.py and test_interruptions.py
hold the pool to them):

**One lock.** ``_lock`` guards every field of the books: ``idle_connections``,
``return_times`` (a view of the idle records, :class:`~psycopg2_pool.connection.ReturnTimes`),
``_records``, ``_waiters``, ``_keys``, ``_size``, ``_closing``, the counters of reserved slots
and ``_attempts`` (upkeep.py), ``_stats``, ``_discards``, ``_closed``, ``_announcers``,
``_fast``'s counters and flag, ``_drains``, ``_moving`` and ``_replacing``
(replacement.py: the role change's closes not run yet, and each task's ``conns``), and each
record's ``state``, ``returning``, ``lent``, ``since``, ``returned_at``, ``key``,
``doomed`` and ``expires`` (``drain()`` and a role change doom a checked-out record from
another thread: ``doomed`` set, ``expires`` put in the past). Both fast paths (an idle
connection at hand; a return with nothing to do) take it once, for a handful of
``deque``/``dict`` operations: the critical sections of :mod:`psycopg2_pool.critical`
(``_fast``, which also keeps the counters of checkouts and returns and the ``slow_return``
flag), one C call each where the package was built with its C part, else the same steps
in Python.
The lock is never held across I/O (connecting, rolling back, closing, health checks) nor
while a listener or a user callback runs, the announcement of collected connections
included, and Python code takes it only with ``with``: a blocking acquire that a signal
interrupts raises before the block is entered, so no code ever releases a lock it does not
hold; inside a C section no signal's exception is delivered at all. Lock order: a pool's
``_lock``, then the scheduler's; the watchdog's and the collector's locks are never held
with another. The cost, measured by benchmarks/run.py, is one C call per checkout and per
return, or an uncontended ``with`` each in pure Python (docs/performance.md).

**What runs without it.** Nothing of ours on the garbage collector's callback: a record's
weak reference has a C method as its callback (``SimpleQueue.put``, reentrant), which
queues the dead reference for the collector thread (:mod:`psycopg2_pool._collector`); no
Python code runs there, so nothing can take a lock on a thread that may hold any lock at
all (the pool's, the scheduler's, a listener's), and no signal can cut it short. The
collector, and every snapshot first, settles the records whose connection is dead
(:meth:`Upkeep._reclaim`, under the lock). Besides that, only *reads* are made without the
lock, each to decide whether to take a path whose locked part checks again:
``putconn`` reads the record's ``lent``/``since``/``expires``, ``_fast.slow_return`` and
the return's conditions to decide whether the return is plain (and announce it to checkin
listeners before it locks); a record doomed after that read is caught under the lock,
where the return's section refuses a doomed record and the slow path closes it. A plain
return also reads, and writes, its record's ``role_due`` (only the returning thread
touches it) and the server's reported role (``roles.FAST``); a checkout
reads the ``returned_at`` of the OUT record it has just been lent (only the thread it is
lent to writes it); a pooled connection's ``close()``
(``close_returns``) reads the record's ``state``; the periodic tasks read and write
``_periodic_due``, which only their own chain touches; a background open reads ``_drains``
as it begins (placing it compares again under the lock) and ``_moving`` as it ends (the
role-restored check takes the lock). The watchdog's disarm is one
``dict.pop`` (:mod:`psycopg2_pool._watchdog`).

**What may raise into the pool, where.** Listeners and the ``check``, ``reset`` and
``configure`` callables may raise anything; an ``Exception`` is contained (logged, counted,
the connection discarded where its state is in doubt), a ``BaseException``
(KeyboardInterrupt, SystemExit, gevent.Timeout) propagates to the caller after the pool's
books are settled: an interrupted return or checkout discards its connection
(``DiscardReason.INTERRUPTED``), an interrupted wait leaves the queue and passes on a
connection it was handed at the last moment, an interrupted open closes what it opened.
psycopg2 raises on I/O only, outside the lock. A signal handler's exception is delivered
on entry to a Python function, after a C call returns, or out of a blocking ``acquire()``
(CPython's eval breaker; never between two stores): so changes that must go together are
written with no call between them, and a record's state changes in an order that keeps
one rule, *a record in the idle deque is IDLE*: marked IDLE, then appended; popped, then
marked OUT (or CLOSING). A raise between the two leaves an IDLE record outside the deque,
which nothing holds but the raising frame. That is where the last rule comes in: **every
record that owns a slot and is not in the deque (IDLE popped, OUT, CLOSING) has its slot
given back when its connection is collected**, so a connection dropped by a raise the
handlers could not settle (two signals at once, a raise inside an ``except`` block) is
never a lost slot, only a late one (a ``garbage_collected`` or ``interrupted`` discard),
as for any connection dropped without ``putconn``. The pool holds a checked-out connection
weakly for that reason. tests/pool/test_interruptions.py raises at every such point of
``getconn``, ``putconn`` and ``close()``, and checks these rules after each.

**Reservations.** A slot reserved for a background open is counted as deferred in the
statement that reserves it, and only then started (``Upkeep._ensure_opening``): each task is
scheduled before its slot moves from deferred to queued, and a task whose slot still reads
deferred takes it when it runs. So a raise at any call leaves every reserved slot accounted
for (deferred, parked or queued with its task), and the next ``_ensure_opening``, on any
thread, starts what was left deferred. The scheduler wakes a sleeping worker before it
unlists it, and a sleeping worker looks at its heap at least every 0.5 s
(``scheduler.WAKE_CHECK``): a wake-up a raise cut short makes a task late, never lost. A
raise while a worker is started uncounts it, so the count of workers can err low (one
worker too many), never high (no worker started again).

**Invariant.** Under the lock: ``_size`` = idle + checked out (OUT, including returning
and handed over) + ``_opening`` + ``_closing``; idle connections and waiters never coexist
(a connection that becomes idle goes to the first waiter; a caller queues only when none
is idle; a closed pool has none idle), which is why the checkout's fast path tests only
the deque.

**On a free-threaded CPython** (3.13t and later) the same rules hold, since none of them
rests on the GIL: the books are changed under the lock only; the three things done without
it each rely on one ``dict``, ``set`` or ``SimpleQueue`` operation being atomic, which those
builds keep with a lock per object (the collector's registry, written when a record is made
and when it is gone; the weak reference's callback; the watchdog's disarm, whose thread
marks a token fired *before* it takes it off ``_armed``, so that a disarm which finds
nothing there finds the mark, an order those per-object locks preserve). What would change
is speed: an uncontended lock costs about the same, but two threads can then run the
critical section's neighbours truly at once, which the benchmarks cannot measure here.
The C sections (``_critical.c``) write the books under the same lock only, and so would
hold there too, but they do not declare free-threading support: such a build turns the GIL
back on when it imports them (with a warning), until they are built and tested for it.

**Fork.** A forked child (``_after_fork_in_child``) never closes nor frees an inherited
connection: psycopg2 takes a per-connection mutex to close one, and a thread of the parent
that was running a query at the fork holds it for ever in the child. The child points each
inherited socket at ``/dev/null`` and keeps the objects (:mod:`psycopg2_pool._forking`).

The other parts, each in its module (none imports this one at run time):
:mod:`~psycopg2_pool.critical` the fast paths' critical sections and their lock,
:mod:`~psycopg2_pool.connection` the record of a connection and its states, what the caller
holds, :mod:`~psycopg2_pool.options` the arguments' validation, and the pool's base classes:
:mod:`~psycopg2_pool.replacement` ``drain()``, ``check()`` and a role change,
:mod:`~psycopg2_pool.waiting` the queue of waiters, the hand-over and a timed-out wait's
error, :mod:`~psycopg2_pool.upkeep` opening, reconnecting, pruning, retiring and closing,
:mod:`~psycopg2_pool.listeners` the listener registration and dispatch;
:mod:`~psycopg2_pool.stats` the keys of ``get_stats()``.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from time import monotonic
from types import FrameType, TracebackType
from typing import Any

from . import _collector, _forking
from . import arguments as _arguments
from . import options as _options
from . import roles as _roles
from . import stats as _keys
from ._driver import extensions
from ._watchdog import WATCHDOG
from .arguments import Kwargs
from .connection import CLOSING as _CLOSING
from .connection import GONE as _GONE
from .connection import OUT as _OUT
from .connection import (
    ConnectionContext,
    Record,
    ReturnTimes,
    check_connection,
    closed_reason,
    pooled_class,
)
from .critical import FastPaths as _FastPaths
from .critical import Lock as _Lock
from .critical import PyFastPaths as _PyFastPaths
from .dsn import default_pool_name, parse_options
from .errors import (
    IOTimeout,
    PoolClosed,
    PoolError,
    ServerUnavailable,
    one_line,
)
from .events import (
    CheckinEvent,
    Checkout,
    CheckoutEvent,
    CloseEvent,
    DiscardEvent,
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
from .reconnect import FACTOR, INITIAL_DELAY, MAX_DELAY, NOT_ANSWERING
from .replacement import CloseReplaced, Replacement
from .scheduler import SCHEDULER
from .stacks import stack as _stack
from .stats import EXHAUSTED, ROLLBACKS, WAIT_TIME
from .upkeep import AnnounceFork
from .waiting import Waiter

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


class ConnectionPool(Replacement):
    """A thread-safe pool of psycopg2 connections.

    ``ConnectionPool(minconn=1, maxconn=inf, idle_timeout=600, **connect_kwargs)`` as in
    psycopg2-pool 1.2, and ``(minconn, maxconn, dsn, ...)`` as in psycopg2.pool: a str third
    positional argument is the DSN. See docs/api.md for every argument, attribute and error.

    Concurrency: one lock guards the books, taken once by the common checkout and return, and
    never held across I/O or while a listener runs (the module docstring has the rules).
    """

    def __init__(self, minconn: int = 1, maxconn: float = _INF, *args: Any,
                 idle_timeout: float | None = IDLE_TIMEOUT,
                 timeout: float = 0.0, max_lifetime: float | None = None,
                 check_idle_after: float | None = None,
                 check: Callable[[Connection], object] | None = None,
                 io_timeout: float | None = 5.0, max_waiting: int = 0, num_workers: int = 3,
                 configure: Callable[[Connection], object] | None = None,
                 reset: Callable[[Connection], object] | None = None,
                 close_returns: bool = False,
                 kwargs: Kwargs | None = None,
                 name: str | None = None, **connect_kwargs: Any) -> None:
        sizes(minconn, maxconn)
        # After maxconn: psycopg2-pool 1.2's idle_timeout, or psycopg2.pool's arguments of
        # psycopg2.connect (a str first: the DSN), which land in connect_kwargs.
        idle_timeout = _options.positional(args, idle_timeout, connect_kwargs)
        _options.hook("check", check)
        _options.hook("configure", configure)
        _options.hook("reset", reset)
        _options.flag("close_returns", close_returns)
        _options.pool_name(name)
        _options.synchronous(connect_kwargs)
        factory = connect_kwargs.get("connection_factory")
        if factory is None:
            factory = extensions.connection
        dsn_source, kwargs_source, changing = _arguments.split(connect_kwargs, kwargs)
        options = parse_options(connect_kwargs)
        connect_kwargs.setdefault("dsn", "")

        self.minconn = minconn
        self.maxconn = maxconn
        self._closed = False
        self._close_announced = False  # on_close sent (close() may run again after a raise)
        self.idle_timeout = idle_timeout
        self.timeout = timeout
        self.max_lifetime = optional_seconds("max_lifetime", max_lifetime, positive=True)
        self.check_idle_after = check_idle_after
        if check is not None and check_idle_after is None:
            self.check_idle_after = 0.0
        self._check = check if check is not None else check_connection
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
        #: ``conn.close()`` on a checked-out connection returns it (psycopg_pool's option):
        #: for code that releases a connection by closing it, such as SQLAlchemy's NullPool.
        self.close_returns = close_returns
        self.connect_kwargs = connect_kwargs
        self.name = name or default_pool_name(options)

        #: Idle connections, last in first out (psycopg2-pool 1.2's attribute).
        self.idle_connections: deque[Connection] = deque()
        #: Connection -> monotonic time it became idle (psycopg2-pool 1.2's attribute).
        self._lock = _Lock()
        self.return_times = ReturnTimes(self.idle_connections, self._lock)

        self._connect_args = {k: v for k, v in connect_kwargs.items()
                              if k != "connection_factory"}
        self._connect_args.update(connect_timeout_default(options))
        self._connect_bound = connect_timeout_text(options, self._connect_args)
        self._arguments = _arguments.ConnectArguments(self._connect_args, dsn_source,
                                                      kwargs_source, changing)
        #: The role libpq was asked to pick a server for (``target_session_attrs``), which
        #: the pool keeps its connections to (roles.py), or None.
        self.role = _roles.wanted_role(options)
        self._role_lost = _roles.LOST.get(self.role or "")
        # The one parameter a plain return reads (~165 ns; at most every ROLE_SAMPLE seconds
        # per connection), and the value that sends it to the slow path, where _role_lost
        # decides (every return with a rollback is checked there): None without a role.
        self._role_param, self._role_sign = _roles.FAST.get(self.role or "", (None, None))
        self._drains = 0  # drain() calls: a connection opened before the last is not used
        self._moving: tuple[str, float] | None = None  # a role change not yet moved away from
        self._replacing: list[CloseReplaced] = []  # closes of a role change, not run yet
        self._factory = pooled_class(factory)
        self._open_signals: list[threading.Lock] = []  # wait()'s: released at each open
        # Checked-out connections' records, by id(); never replaced: each record holds it.
        # Every connection of the pool (IDLE, OUT, CLOSING) by id(): entered when a new one
        # is placed, left when it is gone; never replaced (each record holds it).
        self._records: dict[int, Record] = {}
        self._waiters: deque[Waiter] = deque()
        self._keys: dict[Hashable, Connection] = {}
        self._size = 0  # open connections (closing ones too) + slots reserved for opening
        self._closing = 0  # connections being closed: their slots are free once closed
        self._self_ref = weakref.ref(self)  # what the collector is woken with
        self._init_upkeep()
        self._starting = True  # __init__ opens minconn itself and raises on failure
        # The fast paths' critical sections, with the counters of checkouts and returns and
        # whether putconn must take its slow path (_update_slow_return): critical.py.
        self._fast = _FastPaths(self._lock, self.idle_connections, self._records,
                                self._waiters)
        self._reset_failed_logged = False
        self._stats: dict[str, float] = dict.fromkeys(_keys.COUNTERS, 0)
        self._discards = dict.fromkeys(DiscardReason.ALL, 0)
        self._init_listeners()
        self._update_slow_return()
        _forking.track(self, type(self)._after_fork_in_child)
        _collector.start()
        SCHEDULER.register(self, self.num_workers)

        try:
            for _ in range(minconn):
                with self._lock:
                    self._size += 1
                    self._opening += 1
                    self._connecting += 1
                self._open_inline()
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
        if hasattr(self, "_fast"):
            with self._lock:
                self._update_slow_return()

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
        if key is None:
            now = monotonic()  # outside the lock: the shorter it is held, the less it convoys
            # Idle connections and waiters never coexist under the lock (a connection that
            # becomes idle goes to the first waiter; a caller queues only when none is idle);
            # and a closed pool has none idle: the section tests only the idle deque.
            conn = self._fast.take(now)
            if conn is not None:  # from here a raise cannot lose it: it is OUT (see rules)
                rec = conn._pool_rec
                returned = rec.returned_at  # an OUT record's, read by the thread it is lent to
                if conn.get_transaction_status() or now - returned > self._recheck \
                        or now >= rec.expires:
                    return self._finish_checkout(conn, rec, now, returned, timeout)
                if self._checkout_hooked:  # inlined dispatch: the path every checkout takes
                    try:
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
                    except BaseException:  # interrupted before the caller got it: discarded
                        self._abandon(rec, now)
                        raise
                return conn
        return self._getconn_slow(key, timeout, counted=False)

    def _finish_checkout(self, conn: Connection, rec: Record, now: float, returned: float,
                         timeout: float | None) -> Connection:
        """A checkout from the idle deque whose connection needs its checks (status, idle
        time, lifetime, health check) before it is handed out."""
        try:
            reason = self._unusable(conn, rec, now, returned)
            if reason is not None:
                self._discard(conn, rec, reason)
        except BaseException:  # interrupted before the caller got it: discarded
            self._abandon(rec, now)
            raise
        if reason is not None:
            return self._getconn_slow(None, timeout, counted=True)
        return self._checked_out(conn, 0.0, depth=3)  # the stack from getconn's caller

    def putconn(self, conn: Connection, key: Hashable | None = None, close: bool = False) -> None:
        """Return a connection to the pool.

        An open transaction is rolled back and ``reset`` is called; a closed or broken
        connection is discarded, as is one past ``max_lifetime`` or returned with
        ``close=True``. It never opens a connection: refilling to ``minconn`` and closing
        idle connections happen in the background.
        """
        try:
            rec = conn._pool_rec
        except AttributeError:  # not a pooled connection
            with self._lock:
                self._claim_return(conn, None, key)  # raises
        now = monotonic()
        announced = False
        # Tested once, outside the lock: what only the returning thread changes, and its
        # record's expiry (drain() or a role change may doom it meanwhile: caught under the
        # lock, see the rules).
        plain = key is None and not (close or now >= rec.expires
                                     or conn.get_transaction_status()
                                     or (self._role_param is not None
                                         and now >= rec.role_due
                                         and self._role_sampled(conn, rec, now)))
        if plain and self._checkin_hooked and rec.lent is self._records \
                and not self._fast.slow_return:
            # A plain return, announced before anyone else can check it out (events stay in
            # order), outside the lock; inlined dispatch: the path every return takes.
            since = rec.since
            use_time = now - since
            try:
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
                        except Exception:  # noqa: BLE001 - never break the pool
                            self._listener_failed(method)
            except BaseException:  # interrupted: the connection is discarded, its slot kept
                self._abandon(rec, since)
                raise
            announced = True
        if plain and self._fast.keep(conn, rec, now):  # kept, unless a waiter is to be served
            return
        with self._lock:
            if rec.lent is not self._records or key is not None:  # see Record.lent
                self._claim_return(conn, rec, key)  # raises on misuse; forgets a key
            self._fast.returns += 1
            if plain and not self._fast.slow_return and rec.doomed is None:  # just keep it
                self._settle(conn, rec, now)  # a waiter was queued (the section refused)
                return
            rec.returning, rec.lent = True, None
            since = rec.since
        self._putconn_slow(conn, rec, now, since, close, announced)

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
        while True:
            with self._lock:
                self._ensure_opening()
                if self._closed:
                    raise self._closed_error()
                opened = self._size - self._opening - self._closing
                if opened >= self.minconn:
                    return
                remaining = deadline - monotonic()
                if remaining <= 0:
                    now = monotonic()
                    cause = (self._backoff.describe(now) if self._backoff.failing
                             else "the server has not answered yet")
                    error = self._backoff.last_error
                    attempts = self._backoff.failures
                    unavailable = self._backoff.unavailable_for(now)
                    break
                signal = threading.Lock()  # released by the next open (see _opened_one)
                signal.acquire()
                self._open_signals.append(signal)
            # Outside the lock: interruptible, harmless; capped as acquire requires.
            signal.acquire(timeout=min(remaining, threading.TIMEOUT_MAX))
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
            while self._size - self._closing > self.maxconn and self.idle_connections:
                to_close.append(self._take_oldest_idle())
            self._update_slow_return()
            self._ensure_opening()
        self._close_all(to_close, DiscardReason.RESIZED)

    def clear(self) -> None:
        """Close every idle connection, whatever ``minconn`` and ``idle_timeout`` say."""
        with self._lock:
            conns = self._take_idle()
        self._close_all(conns, DiscardReason.CLEARED, refill=False)  # as asked: no refill

    def close(self) -> None:
        """Close the pool: idle connections now, checked-out ones when they are returned.

        Idempotent. Queued ``getconn`` calls fail with :class:`PoolClosed`, as do later ones;
        background tasks stop.
        """
        with self._lock:  # every step below may run again: a later call finishes the work
            self._closed = self._fast.slow_return = True
            conns = self._take_idle()
            in_use = self._close_books()
            announce, self._close_announced = not self._close_announced, True
            replacing, self._replacing = self._replacing, []
            replaced = [(task.conns, task.reason) for task in replacing]
            for task in replacing:
                task.conns = []
        SCHEDULER.unregister(self)
        _forking.untrack(self)
        for taken, reason in replaced:  # a role change's closes the scheduler now drops
            self._close_all(taken, reason)
        self._close_all(conns, DiscardReason.POOL_CLOSED)
        if announce and self._on_close:
            self._emit(self._on_close, CloseEvent(self, in_use))

    def _close_books(self) -> int:
        """close(): give back the reservations whose open has not started and fail the
        waiters (lock held; idempotent); the number of connections in use."""
        # Attempts in progress give back their own slots when they end.
        unstarted = self._opening - self._connecting
        self._size, self._opening = self._size - unstarted, self._opening - unstarted
        self._parked = self._queued = self._taken = self._deferred = 0
        # Attempts in progress and connections being closed are not in use.
        in_use = self._size - self._connecting - self._closing
        errors = [self._closed_error() for _ in self._waiters]  # made first: no call below
        for error in errors:  # as a hand-over: set, woken, then off the queue
            waiter = self._waiters[0]
            waiter.error = error
            waiter.lock.release()
            self._waiters.popleft()
        self._release_open_signals()
        return in_use

    closeall = close  #: psycopg2.pool's name for :meth:`close`

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def checkouts(self) -> list[Checkout]:
        """The checked-out connections as the pool recorded their checkout (a snapshot):
        when, and, while a listener asks for it (``checkout_stack_depth``), who took them."""
        self._reclaim()  # connections dropped meanwhile: announced first, not lost
        self._announced()
        with self._lock:
            recs = [rec for rec in self._records.values() if rec.is_out()]
        out = []
        for rec in recs:
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
        with self._lock:
            recs = [rec for rec in self._records.values() if rec.state is _OUT]
        return frozenset(c for r in recs if (c := r.ref()) is not None)

    def get_stats(self) -> dict[str, Any]:
        """A snapshot of the pool's state and counters since it was created (docs/api.md)."""
        self._reclaim()
        with self._lock:
            available = len(self.idle_connections)
            stats: dict[str, Any] = {
                _keys.NAME: self.name,
                _keys.POOL_MIN: self.minconn,
                _keys.POOL_MAX: self.maxconn,
                _keys.POOL_SIZE: self._size - self._closing,
                _keys.POOL_AVAILABLE: available,
                _keys.POOL_IN_USE: self._size - available - self._opening - self._closing,
                _keys.POOL_OPENING: self._opening,
                _keys.REQUESTS_WAITING: len(self._waiters),
                _keys.REQUESTS: self._fast.requests,
                _keys.RETURNS: self._fast.returns,
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
            f"size={self._size - self._closing} idle={len(self.idle_connections)} "
            f"max={self.maxconn}")
        return f"<{type(self).__name__} {self.name!r} {state}>"

    # -- checkout --------------------------------------------------------------------------
    # A checkout that found no idle connection at hand, or one that failed its checks.

    def _getconn_slow(self, key: Hashable | None, timeout: float | None, *,
                      counted: bool) -> Connection:
        """Checkout when no idle connection is at hand: wait (for a return or a background
        open), open one here (``timeout=0``), or fail."""
        if key is not None:
            return self._getconn_keyed(key, timeout)
        limit = self._timeout if timeout is None else timeout  # validated by getconn
        started = 0.0
        rescanned = False
        while True:
            if not _collector.QUEUE.empty():  # slots of dropped connections: back first
                self._reclaim()
            conn: Connection = None
            waiter: Waiter | None = None
            error: Exception | None = None
            event: TimeoutEvent | None = None
            reserved = retry = False
            try:
                with self._lock:
                    if self._closed:  # misuse, not a request (as for a keyed getconn)
                        raise self._closed_error()
                    if not counted:
                        self._fast.requests, counted = self._fast.requests + 1, True
                    if self.idle_connections and (not self._waiters
                                                  or self._first_waiter() is None):
                        conn = self._take_one_idle()
                        self._ensure_opening()  # minconn, after a discard of this checkout
                    elif limit <= 0:  # may not wait: open one here, as psycopg2-pool 1.2 did
                        reserved = self._reserve_inline()
                        if reserved:
                            pass
                        elif self._bg_connecting and not self._waiters \
                                and not self._backoff.failing:
                            # A refill is opening the connection this caller would get:
                            # rather than fail beside it, take it when it is ready (bounded:
                            # a server that does not answer fails the caller as a waiter
                            # would).
                            started = monotonic()
                            waiter, limit = Waiter(), NOT_ANSWERING
                            self._enqueue(waiter)
                        elif not rescanned:  # a connection dropped just now frees a slot
                            rescanned = retry = True
                        else:
                            self._stats[EXHAUSTED] += 1
                            error, event = self._exhausted(monotonic(), 0.0)
                    else:
                        if not started:
                            started = monotonic()
                            if self._size >= self.maxconn:
                                self._stats[EXHAUSTED] += 1
                        if self.max_waiting and len(self._waiters) >= self.max_waiting:
                            error, event = self._refused()
                        else:
                            waiter = Waiter()
                            self._enqueue(waiter)
                # Outside the lock from here on: listeners may use the pool.
                if event is not None:
                    self._emit(self._on_timeout, event)
                if error is not None:
                    raise error
                if retry:  # once: settle what was collected, then look again
                    self._reclaim()
                    continue
                if reserved:
                    opening = monotonic()
                    conn = self._attempt()
                    rec = conn._pool_rec
                    now = monotonic()
                    with self._lock:  # one line: no raise can split the hand-out
                        self._connecting, self._opening, rec.state, rec.since, reserved = (
                            self._connecting - 1, self._opening - 1, _OUT, now, False)
                        rec.lent = self._records
                        self._records[rec.conn_id] = rec
                        self._mark_if_drained(rec)  # opened across a drain(): closed
                        # when it is returned
                        self._ensure_opening()  # minconn, after a discard of this checkout
                        self._opened_one()
                    return self._checked_out(conn, opening, opened=True)
            except BaseException:
                if reserved:  # the slot this thread reserved to open into, not handed out
                    self._unreserve_inline(conn)
                if waiter is not None:  # queued, and nobody will wait: leave, pass it on
                    self._leave_queue(waiter)
                raise
            if waiter is not None:
                conn = self._await(waiter, started, limit)
            rec = conn._pool_rec
            since = rec.since
            try:
                reason = self._unusable(conn, rec, since, rec.returned_at)
                if reason is None:
                    return self._checked_out(conn, started)
                self._discard(conn, rec, reason)
            except BaseException:
                self._abandon(rec, since)
                raise

    def _take_one_idle(self) -> Connection:
        """Take the newest idle connection and mark it checked out (lock held)."""
        conn = self.idle_connections.pop()  # out of the deque, then marked (as in getconn)
        rec = conn._pool_rec
        rec.state, rec.lent = _OUT, self._records
        rec.since = monotonic()
        return conn

    def _take_oldest_idle(self) -> Connection:
        """Take the oldest idle connection out of the pool to close it (lock held)."""
        conn = self.idle_connections.popleft()  # out of the deque, then marked
        rec = conn._pool_rec
        rec.state, self._closing = _CLOSING, self._closing + 1  # one line
        return conn

    def _checked_out(self, conn: Connection, started: float, *, opened: bool = False,
                     depth: int = 1) -> Connection:
        """Finish the checkout of a new or handed-over connection (outside the lock)."""
        if self._checkout_hooked:
            rec = conn._pool_rec
            since = rec.since
            try:
                if self._stack_depth:  # from here: the pool's own frames are trimmed by readers
                    try:
                        frame: FrameType | None = _getframe(depth)
                    except ValueError:  # called from C, with no Python caller
                        frame = None
                    rec.taken = (_stack(frame, self._stack_depth),
                                 _threads_get(_get_ident()) or _current_thread(), since)
                wait = monotonic() - started if started else 0.0
                waited = bool(started) and not opened
                self._emit_fields(self._on_checkout_fields, conn, wait, waited, opened)
                if self._on_checkout:
                    self._emit(self._on_checkout, CheckoutEvent(self, conn, wait, waited, opened))
            except BaseException:  # interrupted before the caller got it: discarded
                self._abandon(rec, since)
                raise
        return conn

    def _unusable(self, conn: Connection, rec: Record, now: float,
                  returned: float) -> str | None:
        """Why a connection must not be handed out, or None when it is fine: every checkout
        from the idle deque, a hand-over and a background open alike."""
        if conn.get_transaction_status() != _IDLE:
            return closed_reason(conn)
        if self.idle_timeout and now - returned > self.idle_timeout:
            return DiscardReason.IDLE_TIMEOUT
        if now >= rec.expires:
            return rec.doomed or DiscardReason.MAX_LIFETIME
        if self.check_idle_after is not None and now - returned >= self.check_idle_after:
            reason = self._health_check(conn)
            if reason is not None:
                return reason
            if self._check_failures:  # checks pass again: replacements open at once
                with self._lock:
                    self._check_failures = 0
        return None

    def _health_check(self, conn: Connection) -> str | None:
        """The ``check`` callable, bounded by ``io_timeout``: ``failed_check`` if it raised or
        left a transaction open, else None (outside the lock)."""
        try:
            self._bounded(self._check, conn)
        except Exception:  # noqa: BLE001 - any failure means "do not hand it out"
            return DiscardReason.FAILED_CHECK
        return None if conn.get_transaction_status() == _IDLE else DiscardReason.FAILED_CHECK

    def _discard(self, conn: Connection, rec: Record, reason: str) -> None:
        """Drop a checked-out connection that failed its checkout checks. Its slot is not
        refilled in the background: the caller goes on to take another, open one or wait
        (which refills)."""
        now = monotonic()
        with self._lock:
            self._begin_close(rec)
            if reason == DiscardReason.FAILED_CHECK:  # back off the opens that replace it
                self._check_failures += 1
                delay = min(MAX_DELAY, INITIAL_DELAY * FACTOR ** (self._check_failures - 2))
                self._check_retry_at = now + random.uniform(delay / 2, delay)
        self._close_connection(conn, rec, reason, now, refill=False)

    def _abandon(self, rec: Record, since: float) -> None:
        """Settle the checked-out connection of a checkout or return that a BaseException
        interrupted: closed (its state is in doubt), unless it was settled already (kept,
        handed over, closed) or belongs to a later checkout."""
        conn = rec.ref()
        with self._lock:
            if rec.state is not _OUT or rec.since != since or conn is None:
                return
            self._begin_close(rec)
        self._close_connection(conn, rec, DiscardReason.INTERRUPTED, monotonic())

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
                conn._pool_rec.key, conn._pool_rec.lent = key, None  # returns: the keyed path
        if existing is not None:  # another thread got one for this key meanwhile: use theirs
            self.putconn(conn)
            return existing
        return conn

    def _closed_error(self) -> PoolClosed:
        return PoolClosed(f"the connection pool {self.name!r} is closed; getconn() cannot be "
                          f"used after close() — create a new pool")

    # -- return ----------------------------------------------------------------------------

    def _claim_return(self, conn: Connection, rec: Record | None, key: Hashable | None) -> None:
        """The slow path of putconn (lock held): keys, and every kind of misuse, with precise
        errors."""
        if rec is None or rec.owner is not self._records:
            if not isinstance(conn, extensions.connection):
                raise TypeError(f"putconn() takes a connection from this pool's getconn(), "
                                f"got {type(conn).__name__}")
            raise PoolError("this connection does not belong to this pool (it was not "
                            "checked out with this pool's getconn()); close it yourself or "
                            "return it to the pool it came from")
        if rec.state is not _OUT or rec.returning:
            if _forking.inherited(self, conn):
                raise PoolError("this connection was checked out in the parent process "
                                "before os.fork(); the child cannot use or return it — "
                                "check out a new one in the child")
            raise PoolError("this connection was already returned to the pool; "
                            "return each connection once")
        if key is not None and rec.key != key:
            raise PoolError(f"this connection was not checked out under key {key!r}")
        if rec.key is not None:
            self._keys.pop(rec.key, None)
            rec.key = None

    def _putconn_slow(self, conn: Connection, rec: Record, now: float, since: float,
                      close: bool, announced: bool = False) -> None:
        """Return with a reset or a discard (``rec.returning`` is set); ``announced``: the
        checkin listeners ran already (a plain return that a concurrent change, close() or
        resize(), sent here)."""
        try:
            reason: str | None = DiscardReason.CLOSED_BY_USER if close else None
            if reason is None:
                status = conn.get_transaction_status()
                if status:
                    reason = self._reset(conn, status)
            if reason is None and now >= rec.expires:
                reason = rec.doomed or DiscardReason.MAX_LIFETIME
            if reason is None and self._role_lost is not None and not self._closed \
                    and self._role_lost(conn):  # a closed pool has nothing to replace
                reason = self._role_changed(conn, rec)  # and every connection to its server
            if reason is None:
                with self._lock:
                    reason = self._surplus()
            if reason is None and self._reset_hook is not None:
                reason = self._run_reset(conn, rec)
            if self._checkin_hooked and not announced:  # before anyone else can check it out
                use_time, kept = now - rec.since, reason is None
                self._emit_fields(self._on_checkin_fields, conn, use_time, kept, reason)
                if self._on_checkin:
                    self._emit(self._on_checkin, CheckinEvent(self, conn, use_time, kept, reason))
            with self._lock:
                if reason is None and self._closed:  # close() ran since the check above
                    reason = DiscardReason.POOL_CLOSED
                if reason is None and rec.doomed is not None:  # drained or swept meanwhile
                    reason = rec.doomed
                if reason is None:
                    self._settle(conn, rec, now)
                    return
                self._begin_close(rec)
                self._update_slow_return()
        except BaseException:  # interrupted: the connection is discarded, its slot kept
            if rec.state is _CLOSING:  # this return began its close (only it does): finish
                self._close_connection(conn, rec, reason or DiscardReason.INTERRUPTED,
                                       monotonic())
            else:
                self._abandon(rec, since)
            raise
        self._close_connection(conn, rec, reason, now)

    def _surplus(self) -> str | None:
        """Why a returned connection is not kept although it is fine (lock held)."""
        if self._closed:
            return DiscardReason.POOL_CLOSED
        if self._size - self._closing > self.maxconn:
            return DiscardReason.RESIZED
        if self._idle_zero and len(self.idle_connections) >= self.minconn:
            return DiscardReason.IDLE_TIMEOUT
        return None

    def _run_reset(self, conn: Connection, rec: Record) -> str | None:
        """Call the ``reset`` hook on a returned connection; the discard reason if it fails."""
        rec.hook = True
        error: Exception | None = None
        try:
            self._bounded(self._reset_hook, conn)  # type: ignore[arg-type]
            if conn.get_transaction_status() == _IDLE:
                return None
            problem = "left a transaction open"
        except Exception as exc:  # noqa: BLE001 - a connection that cannot be reset goes
            problem = f"raised {type(exc).__name__}: {one_line(exc)}"
            error = exc
        finally:
            rec.hook = False
        if not self._reset_failed_logged:  # once per pool: discard events count the rest
            self._reset_failed_logged = True
            logger.warning("pool %r: the reset callable %s; the connection was discarded "
                           "(reported once; see the discarded_failed_reset statistic)",
                           self.name, problem, exc_info=error)
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
        """``call(conn)``, its socket shut down should it take longer than ``io_timeout``;
        raises :class:`IOTimeout` then, whatever ``call`` did, so that the connection is
        discarded (its session may look idle, but its socket is gone)."""
        seconds = self.io_timeout
        if seconds is None:
            call(conn)
            return
        token = WATCHDOG.token()
        try:
            WATCHDOG.arm(token, conn.fileno(), seconds)
            call(conn)
        finally:
            WATCHDOG._armed.pop(token, None)  # disarmed in one C call: no signal can skip it
        if WATCHDOG.fired(token):
            logger.warning("pool %r: a %s took longer than io_timeout=%gs; the connection "
                           "was shut down and will be discarded", self.name,
                           getattr(call, "__name__", "round trip"), seconds)
            raise IOTimeout(f"{getattr(call, '__name__', 'round trip')} took longer than "
                            f"io_timeout={seconds:g}s")

    def _update_slow_return(self) -> None:
        """Whether every ``putconn`` must take the slow path (lock held)."""
        self._fast.slow_return = bool(self._closed or self._reset_hook is not None
                                      or self._idle_zero
                                      or self._size - self._closing > self.maxconn)

    def _take_idle(self) -> list[Connection]:
        """Take every idle connection out of the pool to close them (lock held)."""
        conns = []
        while self.idle_connections:
            conns.append(self._take_oldest_idle())
        return conns

    # -- fork ------------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """Forget every inherited connection without touching it: no close, no free (a
        parent's thread may hold psycopg2's mutex of one for ever), no listener (its locks
        may be held too); the discards are announced later, by a task."""
        fast = self._fast  # a new lock and sections of the same kinds (C or Python)
        # threading.Lock's type cannot be instantiated before 3.13: the Python sections' lock
        # comes from threading.Lock(), the C sections' from their own type.
        self._lock = threading.Lock() if isinstance(fast, _PyFastPaths) else type(fast.lock)()
        self.return_times = ReturnTimes(self.idle_connections, self._lock)
        self._announcers = {}
        self._waiters = deque()
        self._fast = type(fast)(self._lock, self.idle_connections, self._records, self._waiters)
        self._fast.requests, self._fast.returns = fast.requests, fast.returns
        self._fast.slow_return = fast.slow_return
        self._open_signals = []
        self._replacing = []  # their connections are the parent's: forgotten below
        recs = [rec for rec in self._records.values() if rec.state is not _GONE]
        pairs = [(c, rec) for rec in recs if (c := rec.ref()) is not None]
        conns = [c for c, _ in pairs]
        for rec in recs:
            rec.state, rec.lent = _GONE, None
        self.idle_connections.clear()
        self._records.clear()
        self._keys.clear()
        self._size = self._closing = 0
        self._reset_openings()
        _forking.detach(self, conns)  # kept for ever, their sockets pointed at /dev/null
        self._discards[DiscardReason.FORK] += len(conns)
        _collector.start()
        SCHEDULER.register(self, self.num_workers)  # the child's scheduler starts empty
        if conns and self._on_discard:
            SCHEDULER.call_soon(AnnounceFork(self, [
                DiscardEvent(self, conn, rec.conn_id, rec.backend_pid, DiscardReason.FORK,
                             monotonic() - rec.created) for conn, rec in pairs]))
        with self._lock:
            self._ensure_opening()  # back to minconn, in the child's background
        self._start_upkeep()


#: psycopg2.pool's name; the same thread-safe class.
ThreadedConnectionPool = ConnectionPool
#: psycopg2.pool's name of its unlocked pool: an uncontended lock costs ~0.1 µs a cycle here,
#: so there is no unsafe variant to pick.
SimpleConnectionPool = ConnectionPool
#: psycopg2.pool's base class, for ``isinstance`` checks and annotations written against it.
AbstractConnectionPool = ConnectionPool
#: psycopg2-pool 1.2's name; the same thread-safe class.
ThreadSafeConnectionPool = ConnectionPool

__all__ = ["AbstractConnectionPool", "ConnectionPool", "SimpleConnectionPool",
           "ThreadSafeConnectionPool", "ThreadedConnectionPool", "check_connection"]
