"""Misuse gets a precise error, and leaves the pool as it was."""

from __future__ import annotations

import math
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from conftest import MakePool, backend_count

from psycopg2_pool import ConnectionPool, PoolError, ThreadedConnectionPool

PASSWORD = "s3cret-pw"


def snapshot(pool: ConnectionPool) -> dict[str, Any]:
    stats = pool.get_stats()
    stats.pop("connections_ms")
    return stats


# -- putconn of what the pool did not hand out ---------------------------------------------


def test_putconn_of_a_foreign_connection(make_pool: MakePool, dsn: str) -> None:
    pool = make_pool(1, 2)
    before = snapshot(pool)
    foreign = psycopg2.connect(dsn)
    try:
        with pytest.raises(PoolError, match="does not belong"):
            pool.putconn(foreign)
        assert not foreign.closed  # the pool did not touch it
        with foreign.cursor() as cur:
            cur.execute("SELECT 1")
        assert foreign not in pool.idle_connections
        assert snapshot(pool) == before
    finally:
        foreign.close()


def test_putconn_of_another_pools_connection(make_pool: MakePool) -> None:
    pool = make_pool(0, 2)
    other = make_pool(0, 2)
    conn = other.getconn()
    with pytest.raises(PoolError, match="does not belong"):
        pool.putconn(conn)
    assert not conn.closed
    assert conn not in pool.idle_connections
    assert other.connections_in_use == {conn}  # still checked out of its own pool
    other.putconn(conn)
    assert list(other.idle_connections) == [conn]
    assert pool.get_stats()["returns"] == 0


@pytest.mark.parametrize("thing", [None, object(), "conn", 42])
def test_putconn_of_a_non_connection(make_pool: MakePool, thing: Any) -> None:
    pool = make_pool(0, 2)
    conn = pool.getconn()
    before = snapshot(pool)
    with pytest.raises(TypeError):
        pool.putconn(thing)
    assert snapshot(pool) == before
    pool.putconn(conn)


def test_double_return(make_pool: MakePool) -> None:
    pool = make_pool(0, 2)
    conn = pool.getconn()
    pool.putconn(conn)
    before = snapshot(pool)
    with pytest.raises(PoolError, match="already returned"):
        pool.putconn(conn)
    assert list(pool.idle_connections) == [conn]  # not in the idle queue twice
    assert snapshot(pool) == before
    assert pool.getconn() is conn
    second = pool.getconn()
    assert second is not conn  # the double return did not make it available twice
    pool.putconn(conn)
    pool.putconn(second)


def test_double_return_after_close_true(make_pool: MakePool) -> None:
    pool = make_pool(0, 2)
    conn = pool.getconn()
    pool.putconn(conn, close=True)
    with pytest.raises(PoolError, match="already returned"):
        pool.putconn(conn)
    assert pool.get_stats()["pool_size"] == 0


def test_getconn_with_bad_timeout(make_pool: MakePool) -> None:
    pool = make_pool(0, 1)
    conn = pool.getconn()
    with pytest.raises(ValueError):
        pool.getconn(timeout=-1)
    with pytest.raises(ValueError):
        pool.getconn(timeout=math.nan)
    with pytest.raises(TypeError):
        pool.getconn(timeout="1")  # type: ignore[arg-type]
    pool.putconn(conn)


# -- constructor arguments -----------------------------------------------------------------


@pytest.mark.parametrize(("args", "kwargs"), [
    ((5, 2), {}),  # minconn > maxconn
    ((-1, 2), {}),  # negative minconn
    ((0, 0), {}),  # maxconn 0
    ((0, -3), {}),
    ((0, 2), {"timeout": math.nan}),
    ((0, 2), {"timeout": -1}),
    ((0, 2), {"idle_timeout": math.nan}),
    ((0, 2), {"idle_timeout": -5}),
    ((0, 2, -5), {}),
    ((0, 2), {"max_lifetime": math.nan}),
    ((0, 2), {"max_lifetime": -1}),
    ((0, 2), {"max_lifetime": 0}),
    ((0, 2), {"check_idle_after": math.nan}),
    ((0, 2), {"check_idle_after": -1}),
], ids=lambda v: repr(v))
def test_out_of_range_arguments_raise_value_error(dsn: str, args: tuple[Any, ...],
                                                  kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ConnectionPool(*args, dsn=dsn, **kwargs)


@pytest.mark.parametrize(("args", "kwargs"), [
    (("1", 2), {}),
    ((1, "2"), {}),
    ((True, 2), {}),
    ((0, True), {}),
    ((1.5, 2), {}),
    ((0, 2.5), {}),
    ((None, 2), {}),
    ((0, 2), {"timeout": "1"}),
    ((0, 2), {"timeout": True}),
    ((0, 2), {"timeout": None}),
    ((0, 2), {"idle_timeout": "600"}),
    ((0, 2), {"idle_timeout": False}),
    ((0, 2), {"max_lifetime": "60"}),
    ((0, 2), {"max_lifetime": True}),
    ((0, 2), {"check_idle_after": "0"}),
    ((0, 2), {"check": "SELECT 1"}),
    ((0, 2), {"name": 3}),
], ids=lambda v: repr(v))
def test_wrong_types_raise_type_error(dsn: str, args: tuple[Any, ...],
                                      kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        ConnectionPool(*args, dsn=dsn, **kwargs)


@pytest.mark.parametrize("cls", [ConnectionPool, ThreadedConnectionPool])
def test_positional_dsn_as_third_argument_hints_dsn_keyword(dsn: str, cls: type) -> None:
    """psycopg2.pool takes the DSN third; here the third argument is idle_timeout."""
    with pytest.raises(TypeError, match="dsn=") as info:
        cls(1, 5, dsn)
    assert dsn not in str(info.value)


def test_positional_dsn_with_password_does_not_leak(dsn: str) -> None:
    secret = psycopg2.extensions.make_dsn(dsn, password=PASSWORD)
    with pytest.raises(TypeError) as info:
        ConnectionPool(1, 5, secret)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize("option", ["foo_bar", "idle_timout", "max_conn", "min_conn"])
def test_unknown_keyword_names_the_option(dsn: str, option: str) -> None:
    with pytest.raises(TypeError, match=option):
        ConnectionPool(0, 2, dsn=dsn, **{option: 5})


def test_async_connections_are_refused(dsn: str) -> None:
    with pytest.raises(TypeError, match="async"):
        ConnectionPool(0, 2, dsn=dsn, **{"async": True})


def test_bad_connection_factory(dsn: str) -> None:
    with pytest.raises(TypeError, match="connection_factory"):
        ConnectionPool(0, 2, dsn=dsn, connection_factory=dict)


@pytest.mark.parametrize("bad", [
    f"host=/tmp password={PASSWORD} port",
    f"host=/tmp password='{PASSWORD}",
    f"host=/tmp password {PASSWORD}",
    f"postgresql://u:{PASSWORD}@[h/db",
    f"postgresql://u:{PASSWORD}@h/db?sslmode",
    f"postgresql://u:{PASSWORD}@h/db?x=",
    f"postgresql://u:{PASSWORD}%zz@h/db",
])
def test_malformed_dsn_raises_value_error_without_the_password(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        ConnectionPool(0, 2, dsn=bad)
    assert PASSWORD not in str(info.value)
    assert PASSWORD not in repr(info.value)
    assert info.value.__cause__ is None


def test_dsn_of_the_wrong_type(dsn: str) -> None:
    with pytest.raises(TypeError, match="dsn"):
        ConnectionPool(0, 2, dsn=b"host=/tmp")


def test_live_settings_are_validated(make_pool: MakePool) -> None:
    pool = make_pool(0, 2)
    with pytest.raises(ValueError):
        pool.idle_timeout = math.nan
    with pytest.raises(ValueError):
        pool.check_idle_after = -1
    with pytest.raises(TypeError):
        pool.idle_timeout = "10"  # type: ignore[assignment]
    assert pool.idle_timeout == 600
    assert pool.check_idle_after is None


def test_failed_construction_leaves_no_connection(dsn: str, admin: Any, app_name: str) -> None:
    with pytest.raises(ValueError):
        ConnectionPool(3, 2, dsn=dsn, application_name=app_name)
    assert backend_count(admin, app_name) == 0
