"""Fork safety: a child process never uses, nor closes, its parent's connections.

A connection is a socket shared with the parent after ``os.fork()``. Closing it in the
child makes libpq send a Terminate message that ends the *parent's* session; and closing or
freeing it takes psycopg2's per-connection mutex, which a thread of the parent that was
running a query at the fork holds for ever in the child (that thread is not there to release
it): the child would hang. So, in the child, every inherited connection's socket descriptor
is pointed at ``/dev/null`` with ``dup2``, and the connection object is kept, never closed
nor freed (:data:`_kept`; a few objects per fork, at most the pool's size).

Each pool registers itself with the function that resets it in a child (:func:`track`): this
module knows no more of a pool than that function.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .pool import ConnectionPool

#: Each live pool, and what to call on it in a child (held weakly: a pool may be collected).
_pools: weakref.WeakKeyDictionary[ConnectionPool, Callable[[ConnectionPool], None]] = (
    weakref.WeakKeyDictionary())
_inherited: weakref.WeakKeyDictionary[ConnectionPool, set[int]] = weakref.WeakKeyDictionary()
#: Inherited connections, kept in the child so that they are never freed (see above).
_kept: list[Any] = []


def track(pool: ConnectionPool, reset: Callable[[ConnectionPool], None]) -> None:
    """Call ``reset(pool)`` in every child forked from now on (``reset`` must not hold the
    pool: pass a function, not a bound method)."""
    _pools[pool] = reset


def untrack(pool: ConnectionPool) -> None:
    _pools.pop(pool, None)


def pools() -> list[ConnectionPool]:
    """The pools tracked now: every pool of this process that is not closed."""
    return list(_pools)


def inherited(pool: ConnectionPool, conn: Any) -> bool:
    """True when ``conn`` was one of ``pool``'s connections in the parent process."""
    return id(conn) in _inherited.get(pool, ())


def detach(pool: ConnectionPool, conns: list[Any]) -> None:
    """Point each connection's socket at /dev/null, and keep the connection for ever."""
    _inherited[pool] = {id(c) for c in conns}
    _kept.extend(conns)
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for conn in conns:
            try:
                fd = conn.fileno()
            except Exception:  # noqa: BLE001 - already closed: nothing to detach
                continue
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _after_fork_in_child() -> None:
    from .scheduler import SCHEDULER  # first: the pools schedule their tasks anew

    SCHEDULER.reset()
    for pool, reset in list(_pools.items()):
        reset(pool)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
