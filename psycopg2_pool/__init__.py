"""psycopg2_pool: an observable connection pool for psycopg2.

``from psycopg2_pool import ConnectionPool`` — the API of psycopg2-pool 1.2 and that of
``psycopg2.pool`` (its class names and positional signature), plus waiting with a timeout,
health checks, statistics and a listener interface (:mod:`psycopg2_pool.events`) that the
``telemetry`` package turns into metrics, spans, logs and leak reports.
"""

from __future__ import annotations

from .connection import PooledConnection
from .errors import PoolClosed, PoolError, PoolExhausted, ServerUnavailable, TooManyRequests
from .events import (
    CheckinEvent,
    Checkout,
    CheckoutEvent,
    CloseEvent,
    ConnectEvent,
    DiscardEvent,
    DiscardReason,
    PoolListener,
    RecoveredEvent,
    RoleChangeEvent,
    RoleRestoredEvent,
    TimeoutEvent,
    UnavailableEvent,
)
from .pool import (
    AbstractConnectionPool,
    ConnectionPool,
    SimpleConnectionPool,
    ThreadedConnectionPool,
    ThreadSafeConnectionPool,
    check_connection,
)

__version__ = "2.0.0.dev0"

__all__ = [
    "AbstractConnectionPool",
    "CheckinEvent",
    "Checkout",
    "CheckoutEvent",
    "CloseEvent",
    "ConnectEvent",
    "ConnectionPool",
    "DiscardEvent",
    "DiscardReason",
    "PoolClosed",
    "PoolError",
    "PoolExhausted",
    "PoolListener",
    "PooledConnection",
    "RecoveredEvent",
    "RoleChangeEvent",
    "RoleRestoredEvent",
    "ServerUnavailable",
    "SimpleConnectionPool",
    "ThreadSafeConnectionPool",
    "ThreadedConnectionPool",
    "TimeoutEvent",
    "TooManyRequests",
    "UnavailableEvent",
    "check_connection",
]
