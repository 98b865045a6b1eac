"""The pool's public listener interface: events and the listeners that receive them.

A listener is any object with some of the ``on_*`` methods of :class:`PoolListener`
(subclassing it is optional). The pool looks the methods up once, in
:meth:`ConnectionPool.add_listener`, and calls them synchronously on the thread that caused
the event, never while holding its lock. A method that raises is logged on the
``psycopg2_pool`` logger and otherwise ignored: a listener cannot break ``getconn`` or
``putconn``. With no listener the pool builds no event at all.

Events are small immutable records. Times are seconds (floats) from ``time.monotonic``.

The methods called on checkout and return have a second form, for listeners that pay for each
query (telemetry): ``on_checkout_fields(pool, connection, wait_time, waited, opened)`` and
``on_checkin_fields(pool, connection, use_time, kept, reason)`` receive the fields of
:class:`CheckoutEvent` and :class:`CheckinEvent` as arguments, so that the pool builds no event
object for them (a named tuple costs ~0.15 µs, as much as the rest of a bare checkout). Like
HikariCP's metrics tracker, it is the narrow seam for hot-path listeners; the event forms stay
the simple one.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # pragma: no cover
    from .pool import ConnectionPool


class DiscardReason:
    """Why the pool closed a connection (the ``reason`` of :class:`DiscardEvent`)."""

    BROKEN = "broken"  #: the connection was found unusable (lost, or left in a bad state)
    IDLE_TIMEOUT = "idle_timeout"  #: idle longer than ``idle_timeout``
    MAX_LIFETIME = "max_lifetime"  #: open longer than ``max_lifetime``
    CLOSED_BY_USER = "closed_by_user"  #: closed by the application, or ``putconn(close=True)``
    FAILED_CHECK = "failed_check"  #: the checkout health check failed
    POOL_CLOSED = "pool_closed"  #: the pool was closed
    FORK = "fork"  #: inherited through ``os.fork()``; detached in the child, never used
    GARBAGE_COLLECTED = "garbage_collected"  #: checked out, then dropped without putconn
    CLEARED = "cleared"  #: idle, closed by :meth:`ConnectionPool.clear`
    FAILED_RESET = "failed_reset"  #: the ``reset`` callable raised, or left a transaction
    RESIZED = "resized"  #: idle beyond a lower ``maxconn`` given to :meth:`ConnectionPool.resize`
    #: its checkout or return was interrupted by an exception (KeyboardInterrupt, a
    #: listener's BaseException...) at a point where its state is in doubt
    INTERRUPTED = "interrupted"
    #: its server no longer plays the role the pool's ``target_session_attrs`` asks for
    #: (a primary turned read-only or demoted, a standby promoted): every connection to that
    #: server is replaced (:class:`RoleChangeEvent`)
    ROLE_CHANGED = "role_changed"
    DRAINED = "drained"  #: replaced by :meth:`ConnectionPool.drain`

    ALL = (BROKEN, IDLE_TIMEOUT, MAX_LIFETIME, CLOSED_BY_USER, FAILED_CHECK, POOL_CLOSED,
           FORK, GARBAGE_COLLECTED, CLEARED, FAILED_RESET, RESIZED, INTERRUPTED, ROLE_CHANGED,
           DRAINED)


class ConnectEvent(NamedTuple):
    """A connection was opened (``error`` is None) or failed to open."""

    pool: ConnectionPool
    connection: Any  #: the new connection, or None on failure
    duration: float  #: seconds spent in ``psycopg2.connect``
    error: BaseException | None


class CheckoutEvent(NamedTuple):
    """``getconn`` handed out a connection."""

    pool: ConnectionPool
    connection: Any
    wait_time: float  #: seconds from the call to the hand-out (0.0 when served at once)
    waited: bool  #: True when the call queued for a connection
    opened: bool = False  #: True when the call opened its connection (``wait_time`` covers it)


class CheckinEvent(NamedTuple):
    """``putconn`` took a connection back (kept for reuse, or discarded)."""

    pool: ConnectionPool
    connection: Any
    use_time: float  #: seconds the connection was checked out
    kept: bool  #: False when it was closed instead of kept (see ``reason``)
    reason: str | None  #: a :class:`DiscardReason` when not kept


class TimeoutEvent(NamedTuple):
    """``getconn`` gave up: the pool was exhausted (at once when ``timeout`` is 0)."""

    pool: ConnectionPool
    wait_time: float  #: seconds waited before giving up
    timeout: float  #: the timeout that applied
    error: BaseException  #: the ``PoolExhausted`` about to be raised (listeners may add notes)


class Checkout(NamedTuple):
    """One checkout as the pool recorded it (:meth:`ConnectionPool.checkouts`).

    ``stack`` and ``thread`` are kept only while a listener asks for them with a
    ``checkout_stack_depth`` attribute (the leak detector does): None otherwise.
    """

    connection_id: int  #: ``id()`` of the connection
    connection: Any  #: None in the ``checkout`` of a garbage-collected connection's event
    backend_pid: int  #: the server process that serves it (0 if unknown)
    since: float  #: ``time.monotonic()`` at the checkout
    #: ``(code, offset, code, offset, ...)`` from the frame that called ``getconn`` outwards
    #: (a slower path adds the pool's own frames first), at most ``checkout_stack_depth``
    #: frames (:mod:`psycopg2_pool.stacks`)
    stack: tuple[Any, ...] | None
    thread: threading.Thread | None  #: the thread that checked it out


class DiscardEvent(NamedTuple):
    """The pool closed a connection, or lost one to the garbage collector."""

    pool: ConnectionPool
    connection: Any  #: None when the connection was garbage-collected
    connection_id: int  #: ``id()`` of the connection, valid even when it is gone
    backend_pid: int  #: the server process that served it (0 if unknown)
    reason: str  #: a :class:`DiscardReason`
    age: float  #: seconds since it was opened
    #: For a connection garbage-collected while checked out: that checkout (who took it).
    checkout: Checkout | None = None


class UnavailableEvent(NamedTuple):
    """Opening connections started to fail: the server is down or unreachable.

    Sent once per outage, at its first failed attempt; the pool then retries in the
    background with a shared backoff until an attempt succeeds (:class:`RecoveredEvent`).
    """

    pool: ConnectionPool
    error: BaseException  #: the first failure (libpq's message names no password)


class RecoveredEvent(NamedTuple):
    """A connection opened again after an outage (:class:`UnavailableEvent`)."""

    pool: ConnectionPool
    outage: float  #: seconds from the first failed attempt to this success
    attempts: int  #: connection attempts that failed during the outage
    error: BaseException | None  #: the last failure of the outage


class RoleChangeEvent(NamedTuple):
    """A server no longer plays the role the pool asks libpq for (``target_session_attrs``):
    the pool replaces every connection to it, idle ones at once and checked-out ones when
    they are returned, and opens new ones through the DSN (libpq picks a server that has the
    role). Sent once per server and incident, by the thread whose connection noticed it.
    """

    pool: ConnectionPool
    server: str  #: ``host:port`` of that server, as libpq connected to it
    role: str  #: the ``target_session_attrs`` the pool asks for (``read-write``, ...)
    #: what the server now reports: ``default_transaction_read_only=on in_hot_standby=off``
    reported: str
    idle_closed: int  #: idle connections to it, closed now
    in_use: int  #: checked-out connections to it, closed when they are returned


class RoleRestoredEvent(NamedTuple):
    """After a :class:`RoleChangeEvent`: the first new connection to a server that has the
    role the pool asks for. The pool has moved (``server`` is usually the new primary)."""

    pool: ConnectionPool
    lost: str  #: ``host:port`` of the server that lost the role
    server: str  #: ``host:port`` of the server this connection is on
    role: str  #: the ``target_session_attrs`` the pool asks for
    after: float  #: seconds from the notice of the change to this connection


class CloseEvent(NamedTuple):
    """The pool was closed."""

    pool: ConnectionPool
    in_use: int  #: connections still checked out (they are closed when returned)


class PoolListener:
    """Base class for listeners; override the methods you need, leave the others.

    Each method receives one event. Methods run on the caller's thread: keep them short and
    never block (hand expensive work to another thread).

    A listener may also set ``checkout_stack_depth`` (an int, 0 by default): while one
    attached listener sets it > 0, the pool keeps on each checkout the stack that took the
    connection, that many frames deep, and the thread (:meth:`ConnectionPool.checkouts`).
    """

    #: Frames of the checkout stack the pool should keep for this listener (0: none).
    checkout_stack_depth: int = 0

    def on_connect(self, event: ConnectEvent) -> None:
        """A connection was opened, or failed to open."""

    def on_checkout(self, event: CheckoutEvent) -> None:
        """``getconn`` returned a connection."""

    def on_checkin(self, event: CheckinEvent) -> None:
        """``putconn`` received a connection."""

    def on_checkout_fields(self, pool: ConnectionPool, connection: Any, wait_time: float,
                           waited: bool, opened: bool) -> None:
        """``on_checkout`` with the event's fields as arguments: no event object is built."""

    def on_checkin_fields(self, pool: ConnectionPool, connection: Any, use_time: float,
                          kept: bool, reason: str | None) -> None:
        """``on_checkin`` with the event's fields as arguments: no event object is built."""

    def on_timeout(self, event: TimeoutEvent) -> None:
        """``getconn`` is about to raise ``PoolExhausted``."""

    def on_discard(self, event: DiscardEvent) -> None:
        """A connection was closed by the pool, or collected while checked out."""

    def on_unavailable(self, event: UnavailableEvent) -> None:
        """Opening connections started to fail (once per outage)."""

    def on_recovered(self, event: RecoveredEvent) -> None:
        """A connection opened again after an outage."""

    def on_role_change(self, event: RoleChangeEvent) -> None:
        """A server lost the role the pool asks for; its connections are being replaced."""

    def on_role_restored(self, event: RoleRestoredEvent) -> None:
        """After a role change, the first new connection to a server with the role."""

    def on_close(self, event: CloseEvent) -> None:
        """The pool was closed."""


#: Listener method names, in the order the pool dispatches them.
HOOKS = ("on_connect", "on_checkout_fields", "on_checkout", "on_checkin_fields", "on_checkin",
         "on_timeout", "on_discard", "on_unavailable", "on_recovered", "on_role_change",
         "on_role_restored", "on_close")

__all__ = ["CheckinEvent", "Checkout", "CheckoutEvent", "CloseEvent", "ConnectEvent",
           "DiscardEvent", "DiscardReason", "HOOKS", "PoolListener", "RecoveredEvent",
           "RoleChangeEvent", "RoleRestoredEvent", "TimeoutEvent", "UnavailableEvent"]
