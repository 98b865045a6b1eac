"""Everything a pool does in the background, one named task each.

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
a health check or rollback that outlives ``io_timeout``. Tasks hold their pool weakly: a
pool that is garbage-collected or closed stops its tasks.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from .scheduler import SCHEDULER

if TYPE_CHECKING:  # pragma: no cover
    from .pool import ConnectionPool


class OpenConnection:
    """Open a connection into a reserved slot; ``reconnect`` marks the retry of an outage."""

    __slots__ = ("pool_ref", "reconnect")
    name = "open_connection"

    def __init__(self, pool: ConnectionPool, *, reconnect: bool = False) -> None:
        self.pool_ref: weakref.ref[Any] = pool._self_ref
        self.reconnect = reconnect

    def run(self) -> None:
        pool = self.pool_ref()
        if pool is not None:
            pool._open_reserved(reconnect=self.reconnect)


class _Periodic:
    """A task that runs when its pool says it is next due; ``generation`` retires old
    chains when a setting changes and a new chain is started."""

    __slots__ = ("generation", "pool_ref")
    name = "periodic"

    def __init__(self, pool: ConnectionPool, generation: int) -> None:
        self.pool_ref: weakref.ref[Any] = pool._self_ref
        self.generation = generation

    def run(self) -> None:
        pool = self.pool_ref()
        if pool is None:
            return
        due = self._step(pool)
        if due is not None:
            SCHEDULER.call_at(due, self)

    def _step(self, pool: ConnectionPool) -> float | None:  # pragma: no cover - abstract
        raise NotImplementedError


class PruneIdle(_Periodic):
    """Close connections idle past ``idle_timeout``; next due when the oldest idle one is."""

    __slots__ = ()
    name = "prune_idle"

    def _step(self, pool: ConnectionPool) -> float | None:
        return pool._prune_idle_due(self.generation)


class RetireExpired(_Periodic):
    """Replace idle connections that reached ``max_lifetime``; next due at the next expiry."""

    __slots__ = ()
    name = "retire_expired"

    def _step(self, pool: ConnectionPool) -> float | None:
        return pool._retire_expired_due(self.generation)


#: Every kind of background task, for a reader and for ``SCHEDULER.pending()``.
TASKS = (OpenConnection, PruneIdle, RetireExpired)

__all__ = ["TASKS", "OpenConnection", "PruneIdle", "RetireExpired"]
