"""Code written for psycopg2.pool runs unchanged on this pool (issue 14, item 4).

Every test but the last few is run twice, against ``psycopg2.pool`` itself and against
``psycopg2_pool``: the code is psycopg2.pool's, so whatever passes on the original must pass on
the drop-in. Only what psycopg2.pool documents is exercised (its docs and source: the
``(minconn, maxconn, *args, **kwargs)`` signature whose ``args`` go to ``psycopg2.connect``,
``getconn(key)``, ``putconn(conn, key, close)``, ``closeall()``, ``closed``, ``PoolError``).
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool
import pytest

import psycopg2_pool
from psycopg2_pool import ConnectionPool
from tests.support.pools import backend_count, settled_backend_count


@pytest.fixture(params=["psycopg2.pool", "psycopg2_pool"])
def pool_module(request: pytest.FixtureRequest) -> ModuleType:
    """psycopg2.pool, or this package standing in for it."""
    return importlib.import_module(request.param)


class CountingConnection(psycopg2.extensions.connection):
    """A connection_factory, as psycopg2.pool users pass one (positionally, fourth)."""


def select_one(conn: Any) -> Any:
    with conn.cursor() as cur:
        cur.execute("SELECT 1 AS one")
        return cur.fetchone()


@pytest.mark.parametrize("cls", ["ThreadedConnectionPool", "SimpleConnectionPool"])
def test_positional_dsn(pool_module: ModuleType, cls: str, dsn: str) -> None:
    pool = getattr(pool_module, cls)(1, 20, dsn)
    conn = pool.getconn()
    assert select_one(conn) == (1,)
    pool.putconn(conn)
    pool.closeall()
    assert pool.closed


def test_minconn_opened_at_construction(pool_module: ModuleType, dsn: str, admin: Any,
                                        app_name: str) -> None:
    pool = pool_module.ThreadedConnectionPool(2, 5, dsn, application_name=app_name)
    assert backend_count(admin, app_name) == 2
    pool.closeall()
    assert settled_backend_count(admin, app_name, 0) == 0


def test_positional_connection_and_cursor_factories(pool_module: ModuleType, dsn: str) -> None:
    pool = pool_module.ThreadedConnectionPool(0, 2, dsn, CountingConnection,
                                              psycopg2.extras.RealDictCursor)
    conn = pool.getconn()
    assert isinstance(conn, CountingConnection)
    assert select_one(conn) == {"one": 1}
    pool.putconn(conn)
    pool.closeall()


def test_dsn_and_keywords_together(pool_module: ModuleType, dsn: str, app_name: str) -> None:
    pool = pool_module.ThreadedConnectionPool(1, 2, dsn, application_name=app_name)
    conn = pool.getconn()
    with conn.cursor() as cur:
        cur.execute("SHOW application_name")
        assert cur.fetchone() == (app_name,)
    pool.putconn(conn)
    pool.closeall()


def test_keyword_only_connection_arguments(pool_module: ModuleType, dsn: str) -> None:
    options = psycopg2.extensions.parse_dsn(dsn)
    pool = pool_module.ThreadedConnectionPool(minconn=0, maxconn=1, **options)
    assert select_one(pool.getconn(key=1)) == (1,)
    pool.putconn(pool.getconn(key=1), key=1)
    pool.closeall()


def test_keys(pool_module: ModuleType, dsn: str) -> None:
    pool = pool_module.ThreadedConnectionPool(0, 3, dsn)
    a = pool.getconn("a")
    assert pool.getconn("a") is a  # the key's connection, while it is out
    other = pool.getconn()
    assert other is not a
    pool.putconn(a, "a")
    again = pool.getconn("a")
    assert not again.closed and select_one(again) == (1,)
    pool.putconn(again)  # without its key: the pool knows it
    pool.putconn(other)
    pool.closeall()


def test_putconn_close(pool_module: ModuleType, dsn: str) -> None:
    pool = pool_module.ThreadedConnectionPool(0, 2, dsn)
    conn = pool.getconn()
    pool.putconn(conn, close=True)
    assert conn.closed
    fresh = pool.getconn()
    assert fresh is not conn and not fresh.closed
    pool.putconn(fresh, None, False)
    pool.closeall()


def test_exhaustion_is_a_pool_error(pool_module: ModuleType, dsn: str) -> None:
    pool = pool_module.SimpleConnectionPool(0, 2, dsn)
    held = [pool.getconn(), pool.getconn()]
    with pytest.raises(psycopg2.pool.PoolError):
        pool.getconn()
    for conn in held:
        pool.putconn(conn)
    pool.closeall()


def test_getconn_after_closeall_is_a_pool_error(pool_module: ModuleType, dsn: str) -> None:
    pool = pool_module.ThreadedConnectionPool(1, 2, dsn)
    pool.closeall()
    assert pool.closed
    with pytest.raises(psycopg2.pool.PoolError):
        pool.getconn()


def test_isinstance_abstract_connection_pool(pool_module: ModuleType, dsn: str) -> None:
    for cls in (pool_module.ThreadedConnectionPool, pool_module.SimpleConnectionPool):
        pool = cls(0, 1, dsn)
        assert isinstance(pool, pool_module.AbstractConnectionPool)
        pool.closeall()


# -- this pool only ---------------------------------------------------------------------------


def test_the_psycopg2_pool_names_are_the_one_thread_safe_class() -> None:
    assert psycopg2_pool.SimpleConnectionPool is ConnectionPool
    assert psycopg2_pool.AbstractConnectionPool is ConnectionPool
    assert psycopg2_pool.ThreadedConnectionPool is ConnectionPool
    assert {"SimpleConnectionPool", "AbstractConnectionPool"} <= set(psycopg2_pool.__all__)


def test_positional_dsn_with_our_keywords(dsn: str) -> None:
    pool = psycopg2_pool.ThreadedConnectionPool(1, 2, dsn, idle_timeout=60, timeout=0.5,
                                                name="dropin")
    assert pool.idle_timeout == 60 and pool.timeout == 0.5 and pool.name == "dropin"
    assert pool.connect_kwargs["dsn"] == dsn
    held = [pool.getconn(), pool.getconn()]
    with pytest.raises(psycopg2_pool.PoolExhausted):
        pool.getconn()  # waited timeout=0.5 first
    for conn in held:
        pool.putconn(conn)
    pool.close()


@pytest.mark.parametrize("third", [0, 30, 2.5, None, math.inf])
def test_a_number_or_none_third_is_still_idle_timeout(dsn: str, third: float | None) -> None:
    """psycopg2-pool 1.2's signature: ConnectionPool(minconn, maxconn, idle_timeout)."""
    pool = ConnectionPool(0, 2, third, dsn=dsn)
    assert pool.idle_timeout == third
    pool.close()


def test_idle_timeout_default_is_600_when_the_third_is_a_dsn(dsn: str) -> None:
    pool = ConnectionPool(0, 2, dsn)
    assert pool.idle_timeout == 600 and type(pool.idle_timeout) is float
    pool.close()
