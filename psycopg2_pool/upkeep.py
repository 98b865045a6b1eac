"""Everything a pool does in the background, one named task each, and the code they run.

Callers' threads only check connections out and in: they never open a connection, nor
close one for being idle or old. That work is done by these tasks, run by the process's
:data:`~psycopg2_pool.scheduler.SCHEDULER`:

``OpenConnection``
    Opens one connection into a slot the pool reserved (for a waiting ``getconn``, or to
    get back to ``minconn`` after a discard), and hands it to the first waiter or makes it
    idle. When the attempt fails, the pool's :class:`~psycopg2_pool.reconnect.Backoff`
    decides when one slot tries again (``reconnect``): one attempt at a time, however many
    wait, until the server answers; then every slot still needed opens at once.
``PruneIdle``
    Closes connections idle past ``idle_timeout`` (then refills to ``minconn``), at the
    moment the oldest one passes it, whether or not anybody calls the pool.
``RetireExpired``
    Closes idle connections that reached their ``max_lifetime`` (minus up to 10 % jitter)
    and opens their replacements, before a caller would meet them.

Besides these, one daemon thread (:mod:`psycopg2_pool._watchdog`) shuts down the socket of
a health check or rollback that outlives ``io_timeout``, and the slot of a checked-out
connection the application drops is given back by one collector thread
(:mod:`psycopg2_pool._collector`, :meth:`Upkeep._reclaim`). Tasks hold their pool weakly: a
pool that is garbage-collected or closed stops its tasks.

What the tasks run is :class:`Upkeep`, a base class of
:class:`~psycopg2_pool.pool.ConnectionPool`: keeping the pool at its size, i.e. reserving slots
and opening connections into them (in a task, or on the caller's thread for ``__init__`` and
a ``timeout=0`` checkout), the reconnect backoff, pruning and retiring, and closing what
leaves the pool. Where a new connection goes, to a waiter or the idle deque, is decided in
:mod:`psycopg2_pool.waiting` (:meth:`Upkeep._settle`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from time import monotonic
from typing import TYPE_CHECKING, Any, cast

from . import _collector
from ._driver import extensions, psycopg2
from .connection import CLOSING, GONE, IDLE, OUT, Record
from .errors import PoolError, one_line
from .events import (
    Checkout,
    ConnectEvent,
    DiscardEvent,
    DiscardReason,
    RecoveredEvent,
    UnavailableEvent,
)
from .listeners import Listeners
from .reconnect import Backoff
from .scheduler import SCHEDULER
from .stats import CONNECT_TIME, CONNECTIONS_ERRORS, CONNECTIONS_NUM, OUTAGES

if TYPE_CHECKING:  # pragma: no cover
    from .arguments import ConnectArguments
    from .pool import ConnectionPool

logger = logging.getLogger("psycopg2_pool")

_IDLE = extensions.TRANSACTION_STATUS_IDLE
_INF = math.inf

Connection = Any  # a psycopg2 connection opened by the pool

class OpenConnection:
    """Open a connection into a reserved slot; ``reconnect`` marks the retry of an outage."""

    __slots__ = ("pool_ref", "reconnect")
    name = "open_connection"

    def __init__(self, pool: Upkeep, *, reconnect: bool = False) -> None:
        self.pool_ref: weakref.ref[Any] = weakref.ref(pool)
        self.reconnect = reconnect

    def run(self) -> None:
        pool = self.pool_ref()
        if pool is not None:
            pool._open_reserved(reconnect=self.reconnect)


class _Periodic:
    """A task that runs when its pool says it is next due. It schedules its own next run
    *before* its step (at the step's ``fallback`` period), so that a step that raises never
    ends the chain; a step that finds an earlier due time schedules that too, and the
    ``due`` it was scheduled for tells a superseded run to do nothing. ``generation`` retires
    old chains when a setting changes and a new chain is started."""

    __slots__ = ("due", "generation", "pool_ref")
    name = "periodic"

    def __init__(self, pool: Upkeep, generation: int, due: float) -> None:
        self.pool_ref: weakref.ref[Any] = weakref.ref(pool)
        self.generation = generation
        self.due = due

    def run(self) -> None:
        pool = self.pool_ref()
        if pool is None or not pool._periodic_current(self):
            return
        fallback = self._fallback(pool)
        if fallback is None:
            return
        self._schedule(pool, monotonic() + fallback)  # first: a raising step goes on
        due = self._step(pool)
        if due is not None and due < monotonic() + fallback:
            self._schedule(pool, due)

    def _schedule(self, pool: Upkeep, due: float) -> None:
        pool._periodic_due[self.name] = due
        SCHEDULER.call_at(due, type(self)(pool, self.generation, due))

    def _fallback(self, pool: Upkeep) -> float | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _step(self, pool: Upkeep) -> float | None:  # pragma: no cover - abstract
        raise NotImplementedError


class PruneIdle(_Periodic):
    """Close connections idle past ``idle_timeout``; next due when the oldest idle one is."""

    __slots__ = ()
    name = "prune_idle"

    def _fallback(self, pool: Upkeep) -> float | None:
        limit = pool._idle_limit
        return None if limit == _INF else limit

    def _step(self, pool: Upkeep) -> float | None:
        return pool._prune_idle_due(self.generation)


class RetireExpired(_Periodic):
    """Replace idle connections that reached ``max_lifetime``; next due at the next expiry."""

    __slots__ = ()
    name = "retire_expired"

    def _fallback(self, pool: Upkeep) -> float | None:
        lifetime = pool.max_lifetime
        return None if lifetime is None else lifetime * 0.9

    def _step(self, pool: Upkeep) -> float | None:
        return pool._retire_expired_due(self.generation)


class AnnounceFork:
    """In a forked child: announce the inherited connections as ``fork`` discards, on a
    worker rather than inside ``os.fork()`` (a listener's lock may have been held there)."""

    __slots__ = ("events", "pool_ref")
    name = "announce_fork"

    def __init__(self, pool: Upkeep, events: list[DiscardEvent]) -> None:
        self.pool_ref: weakref.ref[Any] = weakref.ref(pool)
        self.events = events

    def run(self) -> None:
        pool = self.pool_ref()
        if pool is not None:
            for event in self.events:
                pool._emit(pool._on_discard, event)


#: Every kind of background task, for a reader and for ``SCHEDULER.pending()``.
TASKS = (OpenConnection, PruneIdle, RetireExpired, AnnounceFork)


class Upkeep(Listeners):
    """The pool's size kept: slots reserved and opened, connections pruned, retired, closed.

    The counters of reserved slots are this class's own (:meth:`_init_upkeep`); the books it
    shares with the pool's core, annotated below, are set up by ``ConnectionPool.__init__``.
    Every method with "(lock held)" in its docstring is called with ``_lock`` held.
    """

    # The pool's books, shared with the core.
    _lock: threading.Lock
    _open_signals: list[threading.Lock]  #: wait()'s, released at each open
    _self_ref: weakref.ref[Any]  #: the pool, weakly: what the collector is woken with
    _closed: bool
    _starting: bool  #: in __init__: open minconn on this thread, raise on failure
    _size: int  #: open connections (closing ones too) + reserved slots
    _closing: int  #: connections being closed (CLOSING): counted in _size until closed
    _waiters: deque[Any]
    _records: dict[int, Record]  #: every connection's record (IDLE, OUT, CLOSING), by id()
    _keys: dict[Hashable, Connection]
    _stats: dict[str, float]
    _discards: dict[str, int]
    idle_connections: deque[Connection]
    return_times: Any  #: a view of the idle records' return times (connection.ReturnTimes)
    minconn: int
    maxconn: float
    num_workers: int
    max_lifetime: float | None
    _idle_limit: float
    # How to connect.
    _factory: type
    _connect_args: dict[str, Any]
    _arguments: ConnectArguments
    _drains: int
    _moving: tuple[str, float] | None  #: (server, when) of the last role change, until moved
    _configure: Callable[[Connection], object] | None

    def _init_upkeep(self) -> None:
        self._generation = 0  # of the periodic tasks (see _start_upkeep)
        self._periodic_due: dict[str, float] = {}  # task name -> the run that is current
        self._attempt_ids = itertools.count()
        self._reset_openings()
        self._announcers: dict[int, int] = {}  # thread ident -> announcements under way

    def _reset_openings(self) -> None:
        """No slot reserved, no attempt under way, no outage: at start and in a forked child
        (whose parent's attempts are not there)."""
        self._opening = 0  # reserved slots: queued, connecting or parked
        self._connecting = 0  # attempts in progress (any thread)
        self._parked = 0  # reserved slots waiting for the reconnect attempt of an outage
        self._queued = 0  # reserved slots whose OpenConnection task has not started
        self._deferred = 0  # reserved slots waiting for one of the pool's num_workers
        self._bg_connecting = 0  # background attempts in progress (at most num_workers)
        self._taken = 0  # of those, slots a timeout=0 caller took over (see _reserve_inline)
        self._retry_scheduled = False
        self._backoff = Backoff()
        self._attempts: dict[int, float] = {}  # attempt id -> when it started, while it runs
        self._check_failures = 0  # health checks failed in a row (see _start_open)
        self._check_retry_at = 0.0

    def _as_pool(self) -> ConnectionPool:
        """This object as the events name it: the pool (slow paths only)."""
        return cast("ConnectionPool", self)

    def _settle(self, conn: Connection, rec: Record, now: float) -> None:
        """Where a kept or new connection goes: to the first waiter, else idle (lock held).
        The core's decision (hand-over), implemented in :mod:`~psycopg2_pool.waiting`."""
        raise NotImplementedError  # pragma: no cover

    def _forget(self, rec: Record) -> None:
        """A GONE record leaves the pool's records and the collector's registry (lock held;
        last, after the books: left behind by a raise, a GONE record is skipped by every
        reader, and the collector drops its registry entry when the connection dies)."""
        if self._records.get(rec.conn_id) is rec:  # its id may be a new one's already
            del self._records[rec.conn_id]
        _collector.REGISTRY.pop(rec.ref, None)

    # -- opening ---------------------------------------------------------------------------
    # A slot (counted in _size) is reserved before a connection is opened into it. Reserved
    # slots are _opening; each is queued as an OpenConnection task, connecting, or parked
    # while connects fail (one reconnect attempt at a time is scheduled for all of them).

    def _excess(self) -> int:
        """Reserved slots beyond what waiters and ``minconn`` need (lock held; may be < 0)."""
        open_now = self._size - self._opening - self._closing
        needed = len(self._waiters) + max(0, self.minconn - open_now)
        return self._opening - needed

    def _ensure_opening(self) -> None:
        """Reserve and start the opens that waiters and ``minconn`` need (lock held).

        Reserved slots are counted as deferred in one statement, then started; a raise
        anywhere (a signal's, at any call) leaves them reserved and accounted for (deferred,
        parked or queued), never a count with nothing behind it, and the next call of this
        method, on any thread, starts what was left deferred."""
        if self._closed or self._starting:
            return
        missing = int(min(-self._excess(), self.maxconn - self._size))
        if missing > 0:
            self._size, self._opening, self._deferred = (
                self._size + missing, self._opening + missing, self._deferred + missing)
        self._start_deferred()

    def _start_open(self) -> None:
        """Schedule an OpenConnection now, or once the backoff of failing health checks
        allows (a server whose sessions fail their check is not hammered; lock held)."""
        if self._check_failures >= 2:
            SCHEDULER.call_at(self._check_retry_at, OpenConnection(self))
        else:
            SCHEDULER.call_soon(OpenConnection(self))

    def _attempt_ended(self) -> None:
        """A background attempt ended: start a deferred open in its place (lock held)."""
        self._bg_connecting -= 1
        self._start_deferred()

    def _start_deferred(self) -> None:
        """Start deferred opens while the pool's ``num_workers`` allow, or park them while
        connects fail (lock held). Each task is scheduled *before* its slot moves from
        deferred to queued: a raise between leaves a task whose slot still reads deferred,
        which the task takes when it runs (:meth:`_open_reserved`), never a queued slot with
        no task."""
        failing = self._backoff.failing  # first: a raise here has changed nothing
        while self._deferred:
            if failing:
                self._deferred, self._parked = self._deferred - 1, self._parked + 1
                continue
            if self._queued + self._bg_connecting >= self.num_workers:
                break
            self._start_open()
            self._deferred, self._queued = self._deferred - 1, self._queued + 1
        self._schedule_retry()

    def _reserve_inline(self) -> bool:
        """Reserve a slot for this ``timeout=0`` caller to open into (lock held): one whose
        background open has not started (so that a refill never fails it), else a new one
        below ``maxconn``. Each branch commits in one line: no raise can split it."""
        if not self._waiters:  # reserved slots are the waiters' otherwise
            if self._deferred:
                self._deferred, self._connecting = self._deferred - 1, self._connecting + 1
                return True
            if self._parked:
                self._parked, self._connecting = self._parked - 1, self._connecting + 1
                return True
            if self._queued:  # its OpenConnection task will find it taken and do nothing
                self._queued, self._taken, self._connecting = (
                    self._queued - 1, self._taken + 1, self._connecting + 1)
                return True
        if self._size < self.maxconn:
            self._size, self._opening, self._connecting = (
                self._size + 1, self._opening + 1, self._connecting + 1)
            return True
        return False

    def _unreserve_inline(self, conn: Connection | None) -> None:
        """Give back a slot reserved by :meth:`_reserve_inline` whose connection was not
        handed out (the open failed, or was interrupted); close the connection if it exists."""
        if conn is not None:  # opened (and counted): closed, counted as discarded
            self._drop_new(conn, conn._pool_rec, counted=True)
        with self._lock:
            self._connecting, self._opening = self._connecting - 1, self._opening - 1
            self._free_slot()

    def _trim_opening(self) -> None:
        """Give back parked slots nobody needs any more, e.g. after a waiter left (lock held)."""
        while self._excess() > 0 and (self._deferred or self._parked):
            if self._deferred:
                self._deferred -= 1
            else:
                self._parked -= 1
            self._opening -= 1
            self._size -= 1

    def _schedule_retry(self) -> None:
        """While connects fail: one reconnect attempt, when the backoff allows (lock held).
        Scheduled before it is marked: a raise between leaves an extra attempt, harmless (it
        finds no parked slot, or takes one), never parked slots with none scheduled."""
        if self._parked and not self._retry_scheduled:
            SCHEDULER.call_at(self._backoff.next_attempt,
                              OpenConnection(self, reconnect=True))
            self._retry_scheduled = True

    def _open_reserved(self, *, reconnect: bool) -> None:
        """The body of the OpenConnection task: open into a reserved slot, on a worker."""
        with self._lock:
            if reconnect:
                self._retry_scheduled = False
                if self._closed or not self._parked:
                    return
                self._parked -= 1
            elif self._closed:
                return  # close() gave the slot back
            elif self._taken:  # a timeout=0 caller opens into this slot itself
                self._taken -= 1
                return
            elif self._queued:
                self._queued -= 1
            elif self._deferred:  # scheduled, then a raise before its slot moved to queued
                self._deferred -= 1
            else:  # nothing reserved for it any more (trimmed, or taken inline)
                return
            self._trim_opening()  # surplus slots not started go first: this one runs already
            if self._excess() > 0 or self._size > self.maxconn:  # not needed any more
                self._opening, self._size = self._opening - 1, self._size - 1
                self._start_deferred()
                return
            self._connecting += 1
            self._bg_connecting += 1
        try:
            conn = self._attempt()
        except BaseException:  # noqa: BLE001 - counted and announced by _attempt
            with self._lock:
                self._connecting -= 1
                self._attempt_ended()
                if self._closed or self._excess() > 0:
                    self._opening, self._size = self._opening - 1, self._size - 1
                else:  # still needed: wait for the next attempt of the outage
                    self._parked += 1
                    self._schedule_retry()
            return
        now = monotonic()
        rec = conn._pool_rec
        with self._lock:
            self._connecting, self._opening = self._connecting - 1, self._opening - 1
            self._attempt_ended()
            rec.since = now
            # Read again: close(), drain() or a role change may have come during the attempt.
            reason = (DiscardReason.POOL_CLOSED if self._closed else
                      DiscardReason.DRAINED if rec.generation != self._drains else
                      self._stale_role(rec))
            self._records[rec.conn_id] = rec
            if reason is not None:
                self._begin_close(rec)
            else:
                self._settle(conn, rec, now)
            self._opened_one()
        if reason is not None:
            self._close_connection(conn, rec, reason, now)

    def _open_inline(self) -> None:
        """Open into a slot this thread reserved and counted as connecting (``__init__``) and
        make it idle; on failure give the slot back and raise psycopg2's error."""
        try:
            conn = self._attempt()
        except BaseException:
            with self._lock:
                self._connecting, self._opening = self._connecting - 1, self._opening - 1
                self._free_slot()
            raise
        now = monotonic()
        rec = conn._pool_rec
        with self._lock:
            self._connecting, self._opening = self._connecting - 1, self._opening - 1
            rec.since = now
            self._records[rec.conn_id] = rec
            self._settle(conn, rec, now)
            self._opened_one()

    def _opened_one(self) -> None:
        """A connection opened: wake every ``wait()`` to look again (lock held)."""
        self._release_open_signals()

    def _release_open_signals(self) -> None:
        """Release every ``wait()`` caller's signal (lock held)."""
        signals, self._open_signals = self._open_signals, []
        for signal in signals:
            signal.release()

    def _attempt(self) -> Connection:
        """One connection attempt, outside the lock: connect, then ``configure``.

        Counts it, sends ``on_connect`` (and ``on_unavailable``/``on_recovered`` when an
        outage begins or ends) and keeps the backoff; the caller owns the slot.
        """
        started = monotonic()
        generation = self._drains  # a drain() from here on makes this connection unusable
        attempt = next(self._attempt_ids)
        with self._lock:
            self._attempts[attempt] = started
        try:
            conn = psycopg2.connect(connection_factory=self._factory,
                                    **self._arguments.resolve())
        except Exception as exc:  # a KeyboardInterrupt is not the server's failure
            self._attempt_failed(exc, started)
            raise
        finally:
            with self._lock:
                self._attempts.pop(attempt, None)
        created = monotonic()
        expires = _INF if self.max_lifetime is None else (
            created + self.max_lifetime * random.uniform(0.9, 1.0))  # jitter: no mass reconnect
        rec = Record(conn, self._as_pool(), created, expires, self._records)
        rec.generation = generation
        try:
            if self._configure is not None:
                self._run_configure(conn, rec)
        except BaseException as exc:
            self._drop_new(conn, rec, counted=False)
            self._attempt_failed(exc, started)
            raise
        counted = False
        try:
            now = monotonic()
            if self._on_connect:  # before anyone can check it out: events stay in order
                self._emit(self._on_connect,
                           ConnectEvent(self._as_pool(), conn, now - started, None))
            with self._lock:
                self._stats[CONNECTIONS_NUM] += 1
                counted = True  # no call between: counted and known to be
                self._stats[CONNECT_TIME] += now - started
                ended = self._backoff.succeeded(now)
                if ended is not None:  # the outage is over: every parked slot opens now
                    self._retry_scheduled = False
                    self._deferred, self._parked = self._deferred + self._parked, 0
                    self._start_deferred()
            if ended is not None:
                outage, attempts, error = ended
                logger.warning("pool %r: connected again after %.3g s (%d failed attempt(s))",
                               self.name, outage, attempts)
                if self._on_recovered:
                    self._emit(self._on_recovered,
                               RecoveredEvent(self._as_pool(), outage, attempts, error))
            if self._moving is not None:  # after a role change: is this the way out?
                self._role_restored(conn, rec)
        except BaseException:
            self._drop_new(conn, rec, counted=counted)
            raise
        return conn

    def _role_restored(self, conn: Connection, rec: Record) -> None:
        """A new connection after a role change (replacement.py)."""
        raise NotImplementedError  # pragma: no cover - the pool's (replacement.py)

    def _stale_role(self, rec: Record) -> str | None:
        """``role_changed`` for a new connection to a server that lost the role, opened
        before that was noticed (lock held; replacement.py)."""
        raise NotImplementedError  # pragma: no cover - the pool's (replacement.py)

    def _drop_new(self, conn: Connection, rec: Record, *, counted: bool) -> None:
        """A NEW connection nobody will get (its open was interrupted): closed, and counted
        as an ``interrupted`` discard if it was counted as opened."""
        rec.state = GONE  # a NEW record is its opening thread's alone
        self._forget(rec)
        with contextlib.suppress(Exception):
            conn.close()
        if counted:
            with self._lock:
                self._discards[DiscardReason.INTERRUPTED] += 1

    def _run_configure(self, conn: Connection, rec: Record) -> None:
        """Call ``configure`` on a new connection; it must leave no transaction open."""
        rec.hook = True
        try:
            self._configure(conn)  # type: ignore[misc]
        finally:
            rec.hook = False
        status = conn.get_transaction_status()
        if status != _IDLE:
            raise PoolError(f"the configure callable left the new connection in a transaction "
                            f"(status {status}); commit it, or set autocommit, inside configure")

    def _attempt_failed(self, exc: BaseException, started: float) -> None:
        now = monotonic()
        with self._lock:
            self._stats[CONNECTIONS_ERRORS] += 1
            began = self._backoff.failed(now, exc)
            if began:
                self._stats[OUTAGES] += 1
        if self._on_connect:
            self._emit(self._on_connect, ConnectEvent(self._as_pool(), None, now - started, exc))
        if began and not self._starting and not self._closed:  # once per outage
            logger.warning("pool %r: cannot open connections (%s: %s); callers that may wait "
                           "keep waiting while the pool retries in the background",
                           self.name, type(exc).__name__, one_line(exc))
            if self._on_unavailable:
                self._emit(self._on_unavailable, UnavailableEvent(self._as_pool(), exc))

    # -- periodic: PruneIdle, RetireExpired ------------------------------------------------

    def _start_upkeep(self) -> None:
        """(Re)start the periodic tasks; an older chain sees its generation is stale."""
        with self._lock:
            if self._closed:
                return
            self._generation += 1
            generation = self._generation
        now = monotonic()
        if self._idle_limit < _INF:
            PruneIdle(self, generation, 0.0)._schedule(self, now + self._idle_limit)
        if self.max_lifetime is not None:
            RetireExpired(self, generation, 0.0)._schedule(self, now + self.max_lifetime * 0.9)

    def _periodic_current(self, task: Any) -> bool:
        """Whether a periodic run is the one its chain expects (not superseded, not stale)."""
        return (task.generation == self._generation and not self._closed
                and self._periodic_due.get(task.name) == task.due)

    def _prune_idle_due(self, generation: int) -> float | None:
        """PruneIdle: close what is idle past ``idle_timeout``; when to run next."""
        limit = self._idle_limit
        if generation != self._generation or self._closed or limit == _INF:
            return None
        now = monotonic()
        with self._lock:
            to_close = []
            idle = self.idle_connections
            while idle and now - idle[0]._pool_rec.returned_at > limit:
                to_close.append(self._take_oldest_idle())
            oldest = idle[0]._pool_rec.returned_at if idle else now
        self._close_all(to_close, DiscardReason.IDLE_TIMEOUT)  # then refills to minconn
        return oldest + limit + 0.005  # just past the moment the oldest one expires

    def _retire_expired_due(self, generation: int) -> float | None:
        """RetireExpired: close idle connections past their lifetime and replace them."""
        lifetime = self.max_lifetime
        if generation != self._generation or self._closed or lifetime is None:
            return None
        now = monotonic()
        with self._lock:
            expired = [c for c in self.idle_connections if c._pool_rec.expires <= now]
            for conn in expired:
                self.idle_connections.remove(conn)  # out of the deque, then marked
                rec = conn._pool_rec
                rec.state, self._closing = CLOSING, self._closing + 1  # one line
            recs = [c._pool_rec for c in self.idle_connections]
            recs += [r for r in self._records.values() if r.state is OUT]
        doomed = [c for c in expired if c._pool_rec.doomed is not None]  # drained, role lost
        for conn in doomed:
            self._close_connection(conn, conn._pool_rec, conn._pool_rec.doomed, now)
        self._close_all([c for c in expired if c._pool_rec.doomed is None],
                        DiscardReason.MAX_LIFETIME)  # and opens their replacements
        upcoming = [r.expires for r in recs if r.expires > now]
        return min(upcoming, default=now + lifetime * 0.9) + 0.005

    # -- closing ---------------------------------------------------------------------------
    # A connection leaves the pool in two steps: CLOSING (taken out of use; its slot still
    # counted, so that its replacement cannot exceed maxconn on the server), then, once
    # closed, GONE (its slot given back, the discard counted and announced).

    def _take_oldest_idle(self) -> Connection:
        """Take the oldest idle connection out of use, to be closed (lock held)."""
        raise NotImplementedError  # pragma: no cover - the pool's (pool.py)

    def _begin_close(self, rec: Record) -> None:
        """A checked-out or new connection is to be closed (lock held)."""
        rec.state, rec.returning, rec.lent, self._closing = CLOSING, False, None, self._closing + 1

    def _free_slot(self) -> None:
        """A reserved slot nothing was opened into is given back; open another in the
        background if waiters or ``minconn`` need it (lock held)."""
        self._size -= 1
        self._ensure_opening()

    def _close_all(self, conns: list[Connection], reason: str, *, refill: bool = True) -> None:
        """Close connections taken out of use (CLOSING), then announce them: a listener that
        raises cannot leave one of them unclosed."""
        now = monotonic()
        events = [self._close_quietly(conn, conn._pool_rec, reason, now, refill=refill)
                  for conn in conns]
        if self._on_discard:
            for event in events:
                self._emit(self._on_discard, event)

    def _close_connection(self, conn: Connection, rec: Record, reason: str, now: float, *,
                          refill: bool = True) -> None:
        """Close a CLOSING connection, then give its slot back (refilling to ``minconn`` and
        serving waiters unless ``refill`` is False) and announce the discard."""
        event = self._close_quietly(conn, rec, reason, now, refill=refill)
        if self._on_discard:
            self._emit(self._on_discard, event)

    def _close_quietly(self, conn: Connection, rec: Record, reason: str, now: float, *,
                       refill: bool) -> DiscardEvent:
        """:meth:`_close_connection` but the announcement: the discard event to send."""
        try:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                conn.close()
        finally:
            with self._lock:
                if rec.state is CLOSING:
                    rec.state, self._size, self._closing = GONE, self._size - 1, self._closing - 1
                    self._discards[reason] += 1
                    if refill or self._waiters:  # waiters are served in any case
                        self._ensure_opening()
                    self._forget(rec)
        return DiscardEvent(self._as_pool(), conn, rec.conn_id, rec.backend_pid, reason,
                            now - rec.created)

    # -- collected connections -------------------------------------------------------------

    def _reclaim(self) -> None:
        """Give back the slots of collected connections and announce them (lock not held):
        on the collector thread, and first thing in a slow checkout or a snapshot. No lock is
        held while the listeners run; the threads announcing are counted (``_announcers``),
        so that ``checkouts()`` can wait for another thread's announcements to end."""
        me = threading.get_ident()
        with self._lock:
            events = self._settle_collected()
            if not events:
                return
            self._announcers[me] = self._announcers.get(me, 0) + 1
        try:
            if self._on_discard:
                for event in events:
                    self._emit(self._on_discard, event)
        finally:
            with self._lock:
                left = self._announcers.pop(me, 1) - 1
                if left:
                    self._announcers[me] = left

    def _announced(self, limit: float = 1.0) -> None:
        """Wait (at most ``limit`` seconds, polling) until no *other* thread is announcing
        collected connections: a snapshot then tells of every connection collected before
        it. Never waits for this thread (a listener may ask for a snapshot)."""
        me = threading.get_ident()
        deadline = monotonic() + limit
        while True:
            with self._lock:
                others = any(ident != me for ident in self._announcers)
            if not others or monotonic() >= deadline:
                return
            time.sleep(0.001)

    def _settle_collected(self) -> list[DiscardEvent]:
        """Settle each record whose connection was collected before it was settled (lock
        held); the events to send. Found by their dead weak references: nothing depends on
        the collector's queue having been read."""
        events = []
        for rec in [r for r in self._records.values() if r.ref() is None]:
            if rec.state is OUT or rec.state is IDLE:
                rec.state, self._size = GONE, self._size - 1
                reason = DiscardReason.GARBAGE_COLLECTED
            elif rec.state is CLOSING:  # its closing thread dropped it before it was done
                rec.state, self._size, self._closing = GONE, self._size - 1, self._closing - 1
                reason = DiscardReason.INTERRUPTED
            else:
                continue
            self._forget(rec)
            if rec.key is not None:
                self._keys.pop(rec.key, None)
            self._discards[reason] += 1
            events.append(DiscardEvent(self._as_pool(), None, rec.conn_id, rec.backend_pid,
                                       reason, monotonic() - rec.created,
                                       Checkout(rec.conn_id, None, rec.backend_pid, rec.since,
                                                *rec.taken_by(rec.since))))
        if events:
            self._ensure_opening()
        return events


__all__ = ["TASKS", "AnnounceFork", "OpenConnection", "PruneIdle", "RetireExpired", "Upkeep"]
