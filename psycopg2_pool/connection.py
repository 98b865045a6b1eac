"""One pooled connection: the pool's record of it, and what the caller holds.

As in HikariCP (``PoolEntry`` apart from ``ProxyConnection``), what the pool knows of a
connection (:class:`Record`: when it was opened, checked out, returned, when it expires) is
apart from the object the caller holds. That object is the connection itself, not a proxy (a
proxy would cost every query an indirection): the pool opens it through a subclass of the
connection class (psycopg2's, or the ``connection_factory`` the user passed) that carries its
record and pool in slots, refuses ``cursor()`` once returned, and whose ``with`` block hands it
back (psycopg2's own ``with conn:`` ends the transaction but keeps it checked out).

A record answers "is this connection checked out right now?" itself (its ``state``), so no
module asks the pool through a private method. The connection's slots ``_pool_rec`` and
``_pool_with`` are this module's, and so is its ``_pool`` property (the pool while the
connection is checked out, None once returned: a returned connection does not keep its pool
alive). They are underscored because they sit on the caller's connection, beside
psycopg2's own attributes; the pool reads ``conn._pool_rec`` on every checkout and return (an
attribute read: the fast paths cannot afford a call).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import deque
from collections.abc import Hashable, Iterator, MutableMapping
from functools import cache
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _collector
from ._driver import extensions
from .errors import PoolError
from .events import DiscardReason
from .roles import server_of

if TYPE_CHECKING:  # pragma: no cover
    from .pool import ConnectionPool


#: The states of a :class:`Record` (``Record.state``), each changed only under its pool's lock.
#: NEW: opened into a reserved slot, not yet placed (held by the opening thread only);
#: IDLE: in the pool's ``idle_connections`` (held strongly by the pool);
#: OUT: checked out (held by the caller, weakly by the pool), returning or handed to a waiter;
#: GONE: out of the pool's books (closed, or inherited through a fork).
#: CLOSING: taken out of use to be closed; its slot is counted until the close is done.
NEW, IDLE, OUT, CLOSING, GONE = "new", "idle", "out", "closing", "gone"


class Record:
    """What the pool knows of one open connection (reachable as ``conn._pool_rec``).

    ``state`` (NEW, IDLE, OUT, GONE) is written only under the pool's lock; ``returning`` is
    True while ``putconn`` works on a checked-out connection (rollback, ``reset``,
    listeners). ``owner`` is the pool's dict of records, and identifies the pool a connection
    belongs to without keeping the pool alive; ``pool`` is a weak reference to the pool.
    The weak reference ``ref`` has the collector's queue as its callback
    (:mod:`psycopg2_pool._collector`): a collected IDLE, OUT or CLOSING connection's slot is
    given back by the collector thread, with no Python code run on the garbage collector's
    callback (see pool.py's rules).
    A NEW record belongs to the thread opening its connection, which settles it; OUT and
    CLOSING ones are settled by the thread holding the connection, or, should that thread
    drop it unsettled (two exceptions at once), by the collector.
    """

    __slots__ = (
        "backend_pid",
        "conn_id",
        "created",
        "doomed",
        "expires",
        "generation",
        "hook",
        "key",
        "lent",
        "owner",
        "pool",
        "ref",
        "returned_at",
        "returning",
        "role_due",
        "server",
        "since",
        "state",
        "taken",
    )

    def __init__(self, conn: Any, pool: ConnectionPool, created: float, expires: float,
                 owner: dict[int, Record]) -> None:
        conn._pool_rec = self  # a slot of the pooled class (see pooled_class)
        self.owner = owner
        self.pool = weakref.ref(pool)  # weak: a connection never keeps its pool alive
        self.state = NEW
        self.returning = False
        # Collected: the dead reference is queued by a C method, no Python code runs.
        self.ref = weakref.ref(conn, _collector.QUEUE.put)
        _collector.REGISTRY[self.ref] = self
        self.conn_id = id(conn)
        self.backend_pid: int = conn.info.backend_pid
        self.created = created
        self.expires = expires
        self.since = 0.0  # time of the last checkout
        self.returned_at = 0.0  # time it last became idle or was handed over
        # Who took it, kept at each checkout while a listener asks (checkout_stack_depth):
        # (stack as psycopg2_pool.stacks walks it, thread, ``since`` of that checkout), in one
        # tuple so that a reader on another thread never pairs one checkout's time with
        # another's stack (see taken_by).
        self.taken: tuple[tuple[Any, ...], threading.Thread, float] | None = None
        self.key: Hashable | None = None
        # The pool's ``_records`` while checked out by getconn with no key and not being
        # returned, else None: what putconn's fast path tests, once, for a plain return.
        self.lent: dict[int, Record] | None = None
        self.hook = False  # True while ``configure`` or ``reset`` runs on it
        # ``host:port`` of its server, as libpq chose it among the DSN's hosts (roles.py).
        self.server = server_of(conn)
        # The pool's count of drain() calls when its open began: opened before a later
        # drain(), it is not kept (see Replacement.drain).
        self.generation = 0
        # Set under the lock with ``expires = -inf`` when the connection must go at its next
        # return or checkout: the DiscardReason it goes with (drained, role changed).
        self.doomed: str | None = None
        # When a plain return next reads the server's role (replacement.ROLE_SAMPLE).
        self.role_due = 0.0

    def is_out(self) -> bool:
        """True while the connection is checked out (and not being returned)."""
        return self.state is OUT and not self.returning

    def taken_by(self, since: float) -> tuple[tuple[Any, ...] | None, threading.Thread | None]:
        """The stack and thread kept for the checkout made at ``since``, or (None, None): none
        was kept, or what is kept belongs to an earlier checkout (a hand-over or a health
        check may still be under way)."""
        taken = self.taken
        if taken is None or taken[2] != since:
            return None, None
        return taken[0], taken[1]


class ReturnTimes(MutableMapping[Any, float]):
    """psycopg2-pool 1.2's ``return_times`` (idle connection -> ``time.monotonic()`` when it
    was returned), as a view of the idle connections' records: the time is kept on each
    record, so that a checkout and a return touch no dict. Setting an entry shifts that
    record's time, as 1.2's tests do to simulate the passing of time."""

    __slots__ = ("_idle", "_lock")

    def __init__(self, idle: deque[Any], lock: threading.Lock) -> None:
        self._idle = idle
        self._lock = lock  # the pool's: the idle deque and the records' times are its books

    def __getitem__(self, conn: Any) -> float:
        with self._lock:
            if conn not in self._idle:
                raise KeyError(conn)
            return float(conn._pool_rec.returned_at)

    def __setitem__(self, conn: Any, when: float) -> None:
        with self._lock:
            if conn not in self._idle:
                raise KeyError(f"{conn!r} is not idle in this pool: only idle connections "
                               f"have a return time")
            conn._pool_rec.returned_at = when

    def __delitem__(self, conn: Any) -> None:
        raise TypeError("return_times follows the idle connections: take one out with "
                        "getconn(), or close them with clear()")

    def __iter__(self) -> Iterator[Any]:
        with self._lock:
            return iter(list(self._idle))

    def __len__(self) -> int:
        return len(self._idle)

    def __repr__(self) -> str:
        return repr(dict(self.items()))


def closed_reason(conn: Any) -> str:
    """Why an unusable connection goes: psycopg2 sets ``closed`` to 1 after ``close()``, to 2
    when the session was lost (server gone, backend terminated)."""
    return DiscardReason.CLOSED_BY_USER if conn.closed == 1 else DiscardReason.BROKEN


def check_connection(conn: Any) -> None:
    """The default health check: one ``SELECT 1`` round trip, leaving no transaction open."""
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        if not conn.closed:  # a lost connection: let psycopg2's own error through
            conn.autocommit = autocommit


RETURNED_INSIDE_WITH = (
    "the connection was returned to the pool inside its with block, so its transaction was "
    "rolled back, not committed; let the with block return it")


def _enter(self: Any) -> Any:
    if not self._pool_rec.is_out():
        raise PoolError(
            "this connection was already returned to the pool: using it in a with block "
            "would share it with whoever checks it out next; take a new one with "
            "`with pool.getconn() as conn:` or `with pool.connection() as conn:`")
    self._pool_with = self._pool_rec.since  # this checkout, not a later one by someone else
    return self


RETURNED = (
    "this connection was returned to the pool (putconn) and may now be someone else's: "
    "using it would run your statements in their session; check out a connection with "
    "pool.getconn() (or `with pool.connection() as conn:`) and use it only until you return it")


def _pool_of(self: Any) -> ConnectionPool | None:
    """The pool a checked-out connection belongs to; None once it was returned."""
    rec = self._pool_rec
    return rec.pool() if rec.state is OUT else None


def _exit(self: Any, exc_type: type[BaseException] | None, exc: BaseException | None,
          tb: TracebackType | None) -> None:
    leave(self._pool, self, self._pool_with, exc_type)


def leave(pool: ConnectionPool, conn: Any, checkout: float,
          exc_type: type[BaseException] | None) -> None:
    """End a with block: commit or roll back, then return the connection.

    ``checkout`` identifies the checkout the block began with: a connection returned inside
    the block (and perhaps checked out again by someone else) is left alone; leaving such a
    block normally raises, since its work was rolled back, not committed.
    """
    rec: Record | None = None if conn is None else conn._pool_rec  # None: exited twice
    if rec is None or not rec.is_out() or rec.since != checkout:
        if exc_type is None:
            raise PoolError(RETURNED_INSIDE_WITH)
        return
    try:
        end_transaction(conn, commit=exc_type is None)
    finally:
        pool.putconn(conn)


def end_transaction(conn: Any, *, commit: bool) -> None:
    """Commit (``commit=True``) or roll back; a failed rollback is left to ``putconn``."""
    if conn.closed:
        return
    if commit:
        conn.commit()
        return
    with contextlib.suppress(Exception):  # the caller's exception matters; putconn discards
        conn.rollback()


def pooled_class(factory: type) -> type:
    """The pooled subclass of a connection class (cached: one per class)."""
    valid = isinstance(factory, type) and issubclass(factory, extensions.connection)
    if not valid:  # checked outside the cache, which would choke on an unhashable value
        raise TypeError("connection_factory must be a subclass of "
                        "psycopg2.extensions.connection")
    return _pooled_class(factory)


@cache
def _pooled_class(factory: type) -> type:
    base_cursor = factory.cursor  # type: ignore[attr-defined]
    base_close = factory.close  # type: ignore[attr-defined]

    def close(self: Any) -> None:
        """psycopg2's ``close()``; with the pool's ``close_returns=True``, a checked-out
        connection is returned to the pool instead, and an idle one (returned already) is
        left alone: it is the pool's to close."""
        rec = getattr(self, "_pool_rec", None)
        if rec is not None and (rec.state is OUT or rec.state is IDLE):
            pool = rec.pool()
            if pool is not None and pool.close_returns:
                if rec.state is OUT and not rec.returning:
                    pool.putconn(self)
                return
        base_close(self)

    def cursor(self: Any, *args: Any, **kwargs: Any) -> Any:
        """psycopg2's ``cursor()``, refused once the connection was returned to the pool."""
        rec = self._pool_rec
        if (rec.state is not OUT or rec.returning) and not rec.hook:
            raise PoolError(RETURNED)
        return base_cursor(self, *args, **kwargs)

    return type(f"Pooled{factory.__name__}", (factory,), {
        "__slots__": ("_pool_rec", "_pool_with"),
        "_pool": property(_pool_of),
        "__module__": __name__,
        "__enter__": _enter,
        "__exit__": _exit,
        "cursor": cursor,
        "close": close,
        "__doc__": f"A {factory.__name__} opened by a psycopg2_pool pool; "
                   "``with conn:`` returns it to the pool.",
    })


PooledConnection = pooled_class(extensions.connection)


class ConnectionContext:
    """The context manager of :meth:`ConnectionPool.connection`."""

    __slots__ = ("checkout", "conn", "pool", "timeout")

    def __init__(self, pool: ConnectionPool, timeout: float | None) -> None:
        self.pool = pool
        self.timeout = timeout
        self.conn: Any = None
        self.checkout = 0.0

    def __enter__(self) -> Any:
        self.conn = conn = self.pool.getconn(timeout=self.timeout)
        self.checkout = conn._pool_rec.since  # this checkout, not a later one by someone else
        return conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        conn, self.conn = self.conn, None
        leave(self.pool, conn, self.checkout, exc_type)


__all__ = ["CLOSING", "GONE", "IDLE", "NEW", "OUT", "RETURNED", "RETURNED_INSIDE_WITH",
           "ConnectionContext", "PooledConnection", "Record", "ReturnTimes", "check_connection",
           "closed_reason", "end_transaction", "leave", "pooled_class"]
