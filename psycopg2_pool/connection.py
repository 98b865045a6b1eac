"""Connections that know their pool, so ``with pool.getconn() as conn:`` returns them.

psycopg2's own ``with conn:`` ends the transaction but keeps the connection checked out. The
pool opens its connections through a subclass of the connection class (psycopg2's, or the
``connection_factory`` the user passed) whose ``__exit__`` also hands the connection back,
and whose ``__enter__`` refuses a connection that was already returned.
"""

from __future__ import annotations

import contextlib
from functools import cache
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._driver import extensions
from .errors import PoolError

if TYPE_CHECKING:  # pragma: no cover
    from .pool import ConnectionPool


RETURNED_INSIDE_WITH = (
    "the connection was returned to the pool inside its with block, so its transaction was "
    "rolled back, not committed; let the with block return it")


def _enter(self: Any) -> Any:
    pool: ConnectionPool = self._pool
    if not pool._is_checked_out(self):
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
    if not pool._is_checked_out(conn) or conn._pool_rec.since != checkout:
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

    def cursor(self: Any, *args: Any, **kwargs: Any) -> Any:
        """psycopg2's ``cursor()``, refused once the connection was returned to the pool."""
        rec = self._pool_rec
        if self._pool._out.get(rec.conn_id) is not rec and not rec.hook:
            raise PoolError(RETURNED)
        return base_cursor(self, *args, **kwargs)

    return type(f"Pooled{factory.__name__}", (factory,), {
        "__slots__": ("_pool", "_pool_rec", "_pool_with"),
        "__module__": __name__,
        "__enter__": _enter,
        "__exit__": _exit,
        "cursor": cursor,
        "__doc__": f"A {factory.__name__} opened by a psycopg2_pool pool; "
                   "``with conn:`` returns it to the pool.",
    })


PooledConnection = pooled_class(extensions.connection)

__all__ = ["RETURNED", "RETURNED_INSIDE_WITH", "PooledConnection", "end_transaction", "leave",
           "pooled_class"]
