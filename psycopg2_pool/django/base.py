"""``ENGINE: "psycopg2_pool.django"``: Django's PostgreSQL backend on psycopg2, pooled.

``DatabaseWrapper`` is Django's own PostgreSQL wrapper (``django.db.backends.postgresql``,
loaded on psycopg2 by ``loading.py``) with what Django's pool for psycopg 3 does, done with
a ``psycopg2_pool.ConnectionPool``:

- ``pool``: the alias's pool (``pools.py``), built on the first connection from
  ``get_connection_params()``; None without ``OPTIONS["pool"]``, and then every method is
  Django's own.
- ``get_new_connection``: ``getconn()`` from the pool, instead of ``psycopg2.connect``.
- ``_close``: ``putconn()`` (a transaction left open is rolled back by the pool) instead of
  closing. With ``CONN_MAX_AGE = 0`` Django closes, hence returns, the connection at the end
  of each request (``request_finished``) and of each Celery task (Celery's Django fix-up).
- Django's session setup (the time zone, ``assume_role``, the isolation level, the jsonb
  loader) runs once per new connection, as the pool's ``configure`` callback, not at each
  checkout: the ``configure`` of Django's psycopg 3 pool. (Django's psycopg 3 pool sets the
  isolation level at each checkout; psycopg2 would send a ``SET`` for it each time, the
  connection being in autocommit then.)
- ``CONN_HEALTH_CHECKS = True``: the pool checks each connection as it hands it out
  (``check_idle_after=0``), so Django's own per-request check is skipped, as with psycopg 3.
- Fork: a child forgets the Django connections it inherited (``os.register_at_fork``), and
  never returns one to the pool; the pool forgets its own connections there too.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, ClassVar

import psycopg2.extras
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.backends.base.base import NO_DB_ALIAS
from django.utils.asyncio import async_unsafe

from ..pool import ConnectionPool
from . import pools
from .features import DatabaseFeatures
from .loading import postgresql_base

_postgresql = postgresql_base()
PostgreSQLWrapper: Any = _postgresql.DatabaseWrapper  # Django ships no type hints
IsolationLevel: Any = _postgresql.IsolationLevel  # psycopg2's levels, as Django names them


class DatabaseWrapper(PostgreSQLWrapper):  # type: ignore[misc]
    """Django's PostgreSQL wrapper, with connections from a ``ConnectionPool`` per alias."""

    _connection_pools: ClassVar[dict[str, Any]] = {}  # Django's psycopg 3 pools: never used here
    features_class = DatabaseFeatures  # Django's, and the one test of its suite not ours
    # Set by Django's wrapper; declared for the type checker.
    alias: str
    settings_dict: dict[str, Any]
    connection: Any
    run_on_commit: list[Any]
    in_atomic_block: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The pool the current connection came from, and the process that took it out.
        self._pooled: tuple[ConnectionPool, int] | None = None

    # -- the pool ---------------------------------------------------------------------------

    def _pool_wanted(self) -> bool:
        return self.alias != NO_DB_ALIAS and bool(self.settings_dict["OPTIONS"].get("pool"))

    @property
    def pool(self) -> ConnectionPool | None:
        """This alias's ``ConnectionPool`` (built now if there is none yet), or None when the
        settings ask for no pool."""
        if not self._pool_wanted():
            return None
        pool = pools.POOLS.get(self.alias)
        return pool if pool is not None else self._pool_for(self.get_connection_params())

    def _pool_for(self, params: dict[str, Any]) -> ConnectionPool:
        def build() -> ConnectionPool:
            settings = pools.pool_settings(self.alias, self.settings_dict)
            return pools.build_pool(self.alias, settings, params, self._session_setup())

        return pools.POOLS.get_or_build(self.alias, params, build)

    def close_pool(self) -> None:
        """Close this alias's pool, if built (the next connection builds a new one).

        Except when Celery's Django fix-up asks: Celery 5.6+ closes Django's pool in each
        prefork child at every task's start and end, so that a psycopg 3 pool, which a fork
        breaks, is never shared with the parent (celery/celery#10554: the pool is rebuilt for
        every task, a new server session each time). This pool survives a fork (the child
        forgets the parent's connections) and the connection has just been returned, so it
        stays open for the child's next tasks; its sessions end when the child exits.
        """
        if _called_by_celery(sys._getframe(1)):
            return
        pools.POOLS.close(self.alias)

    def _session_setup(self) -> Callable[[Any], None]:
        """Django's setup of a new connection (``_configure_connection`` with psycopg2, the
        jsonb loader and the isolation level of ``get_new_connection``), for the pool to run
        once per connection. It reads the settings now: a pool serves one time zone and role
        (Django closes the pool when the time zone setting changes, ``ensure_timezone``)."""
        timezone_name = self.timezone_name
        set_time_zone = self.ops.set_time_zone_sql()
        role = self.settings_dict["OPTIONS"].get("assume_role")
        isolation_level, explicit = self._isolation_level()

        def setup(conn: Any) -> None:
            conn.autocommit = True  # the pool wants no transaction left; Django sets its own
            if explicit:
                # In autocommit, psycopg2 sends SET default_transaction_isolation now (at
                # every assignment: once here, rather than at every checkout), and names the
                # level in each BEGIN after.
                conn.isolation_level = isolation_level
            with conn.cursor() as cursor:
                if timezone_name and conn.info.parameter_status("TimeZone") != timezone_name:
                    cursor.execute(set_time_zone, [timezone_name])
                if role:
                    cursor.execute("SET ROLE %s", [role])
            psycopg2.extras.register_default_jsonb(conn_or_curs=conn, loads=lambda x: x)

        return setup

    def _isolation_level(self) -> tuple[Any, bool]:
        """As Django's get_new_connection: OPTIONS' level (and True), else READ COMMITTED."""
        options = self.settings_dict["OPTIONS"]
        if "isolation_level" not in options:
            return IsolationLevel.READ_COMMITTED, False
        try:
            return IsolationLevel(options["isolation_level"]), True
        except ValueError:
            raise ImproperlyConfigured(
                f"Invalid transaction isolation level {options['isolation_level']} specified. "
                f"Use one of the psycopg2.extensions.ISOLATION_LEVEL_* values.") from None

    def get_connection_params(self) -> dict[str, Any]:
        """Django's parameters, without ``pool`` (which Django refuses with psycopg2)."""
        settings_dict = self.settings_dict
        if "pool" not in settings_dict["OPTIONS"]:
            return super().get_connection_params()  # type: ignore[no-any-return]
        self.settings_dict = {**settings_dict, "OPTIONS": {
            key: value for key, value in settings_dict["OPTIONS"].items() if key != "pool"}}
        try:
            return super().get_connection_params()  # type: ignore[no-any-return]
        finally:
            self.settings_dict = settings_dict

    # -- checkout and return ----------------------------------------------------------------

    @async_unsafe  # type: ignore[untyped-decorator]
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not self._pool_wanted():
            return super().get_new_connection(conn_params)
        pool = self._pool_for(conn_params)
        self.isolation_level = self._isolation_level()[0]  # set on the connection once
        conn = pool.getconn()
        self._pooled = (pool, os.getpid())
        return conn

    def _close(self) -> None:
        pooled, self._pooled = self._pooled, None
        if self.connection is None:
            return
        if pooled is None:  # not from a pool: Django's own close
            with self.wrap_database_errors:
                self.connection.close()
            return
        pool, pid = pooled
        try:
            if pid == os.getpid():  # a child never returns its parent's connection
                with self.wrap_database_errors:
                    pool.putconn(self.connection)
        finally:
            self.connection = None  # it may be someone else's now

    def close_if_health_check_failed(self) -> None:
        if self._pool_wanted():
            return  # the pool checked it at checkout when CONN_HEALTH_CHECKS asks
        super().close_if_health_check_failed()

    def _forget_inherited(self) -> None:
        """In a forked child: drop the parent's connection without touching it."""
        if self._pooled is None:
            return
        self._pooled = None
        self.connection = None
        self.run_on_commit = []
        if self.in_atomic_block:
            self.closed_in_transaction = True
            self.needs_rollback = True


def _called_by_celery(frame: FrameType | None) -> bool:
    """Whether ``frame`` is Celery's Django fix-up (``celery.fixups.django``)."""
    return frame is not None and frame.f_globals.get("__name__") == "celery.fixups.django"


def _forget_in_child() -> None:
    try:
        wrappers = connections.all(initialized_only=True)
    except Exception:  # noqa: BLE001 - settings not configured: nothing to forget
        return
    for wrapper in wrappers:
        if isinstance(wrapper, DatabaseWrapper):
            wrapper._forget_inherited()


def _return_at_exit() -> None:
    """Return the exiting thread's connections (a management command's), so that closing
    the pools closes them too."""
    for wrapper in connections.all(initialized_only=True):
        if isinstance(wrapper, DatabaseWrapper) and wrapper._pooled is not None:
            with contextlib.suppress(Exception):  # at exit: the pool closes the rest
                wrapper.close()


os.register_at_fork(after_in_child=_forget_in_child)
pools.before_exit.append(_return_at_exit)
