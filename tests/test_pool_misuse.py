"""Every misuse and bad argument gets a precise error that says what to do."""

from __future__ import annotations

import math
from typing import Any

import psycopg2
import pytest

from psycopg2_pool import ConnectionPool, PoolError

SECRET = "pa55-w0rd-XYZ"


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    ((2, 1), {}, ValueError, r"minconn \(2\) must not be greater than maxconn \(1\)"),
    ((-1, 5), {}, ValueError, "minconn must be >= 0"),
    ((0, 0), {}, ValueError, "maxconn must be >= 1"),
    ((0, -3), {}, ValueError, "maxconn must be >= 1"),
    (("1", 5), {}, TypeError, "minconn must be an int"),
    ((True, 5), {}, TypeError, "minconn must be an int"),
    ((1.5, 5), {}, TypeError, "minconn must be an int"),
    ((0, "5"), {}, TypeError, "maxconn must be an int"),
    ((0, 2.5), {}, TypeError, "maxconn must be an int"),
    ((0, math.nan), {}, TypeError, "maxconn must be an int"),
    ((0, 5, -1), {}, ValueError, "idle_timeout must be >= 0"),
    ((0, 5, math.nan), {}, ValueError, "idle_timeout must be a number of seconds, got NaN"),
    ((0, 5, "dbname=app"), {}, TypeError, r"idle_timeout must be a number of seconds, got "
                                          r"str \(pass the DSN as dsn=...\)"),
    ((0, 5), {"timeout": -0.5}, ValueError, "timeout must be >= 0"),
    ((0, 5), {"timeout": math.nan}, ValueError, "timeout must be a number of seconds, got NaN"),
    ((0, 5), {"timeout": "1"}, TypeError, "timeout must be a number of seconds"),
    ((0, 5), {"max_lifetime": 0}, ValueError, "max_lifetime must be > 0"),
    ((0, 5), {"max_lifetime": -1}, ValueError, "max_lifetime must be > 0"),
    ((0, 5), {"check_idle_after": -1}, ValueError, "check_idle_after must be >= 0"),
    ((0, 5), {"check": "SELECT 1"}, TypeError, "check must be a callable"),
    ((0, 5), {"name": ""}, TypeError, "name must be a non-empty str"),
    ((0, 5), {"nosuchoption": 1}, TypeError, 'unknown connection argument: invalid '
                                             'connection option "nosuchoption"'),
    ((0, 5), {"dsn": 42}, TypeError, "dsn must be a str"),
    ((0, 5), {"dsn": f"host=x password={SECRET} oops"}, ValueError,
     "invalid connection string"),
    ((0, 5), {"dsn": f"postgresql://u:{SECRET}@[::1"}, ValueError,
     "invalid connection string"),
    ((0, 5), {"dsn": "postgresql://u:%zz@h/db"}, ValueError, "invalid connection string"),
    ((0, 5), {"async": True}, TypeError, "asynchronous connections cannot be pooled"),
    ((0, 5), {"connection_factory": dict}, TypeError, "connection_factory must be a subclass"),
])
def test_bad_constructor_arguments(args: tuple[Any, ...], kwargs: dict[str, Any],
                                   error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match) as raised:
        ConnectionPool(*args, **kwargs)
    assert SECRET not in str(raised.value)
    assert raised.value.__context__ is None  # libpq's unredacted message is not attached


def test_foreign_connection(dsn: str) -> None:
    pool = ConnectionPool(0, 2, dsn=dsn)
    other_pool = ConnectionPool(0, 2, dsn=dsn)
    plain = psycopg2.connect(dsn)
    for foreign in (plain, other_pool.getconn()):
        with pytest.raises(PoolError, match="does not belong to this pool"):
            pool.putconn(foreign)
    plain.close()
    pool.close()
    other_pool.close()


@pytest.mark.parametrize("thing", [None, "conn", 42, object()])
def test_returning_something_that_is_not_a_connection(dsn: str, thing: Any) -> None:
    pool = ConnectionPool(0, 1, dsn=dsn)
    with pytest.raises(TypeError, match="putconn\\(\\) takes a connection"):
        pool.putconn(thing)
    pool.close()


def test_double_return(dsn: str) -> None:
    pool = ConnectionPool(0, 2, dsn=dsn)
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(PoolError, match="already returned to the pool; return each "
                                        "connection once"):
        pool.putconn(conn)
    assert len(pool.idle_connections) == 1  # not added twice
    pool.close()


def test_double_return_after_discard(dsn: str) -> None:
    pool = ConnectionPool(0, 2, dsn=dsn)
    conn = pool.getconn()
    pool.putconn(conn, close=True)
    with pytest.raises(PoolError, match="already returned"):
        pool.putconn(conn)
    assert pool.get_stats()["pool_size"] == 0
    pool.close()


def test_use_after_close(dsn: str) -> None:
    pool = ConnectionPool(0, 2, dsn=dsn)
    pool.close()
    with pytest.raises(PoolError, match="is closed; getconn\\(\\) cannot be used after "
                                        "close\\(\\) — create a new pool"):
        pool.getconn()
    with pytest.raises(PoolError, match="is closed"), pool.connection():
        pass


def test_listener_interface_misuse(dsn: str) -> None:
    pool = ConnectionPool(0, 1, dsn=dsn)
    with pytest.raises(TypeError, match="a listener needs at least one of the methods"):
        pool.add_listener(object())

    class Listener:
        def on_checkout(self, event: Any) -> None:
            pass

    listener = Listener()
    pool.add_listener(listener)
    with pytest.raises(ValueError, match="already attached"):
        pool.add_listener(listener)
    pool.remove_listener(listener)
    pool.remove_listener(listener)  # not attached: ignored
    pool.close()
