"""``close_returns=True`` (psycopg_pool's option): ``conn.close()`` returns a checked-out
connection, as SQLAlchemy's ``NullPool`` releases a connection from ``creator=``."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from psycopg2_pool import ConnectionPool
from tests.support.pools import MakePool, backend_count


def test_close_returns_a_checked_out_connection(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, close_returns=True)
    conn = pool.getconn()
    conn.close()
    assert not conn.closed  # returned, not closed
    assert pool.get_stats()["pool_available"] == 1
    conn.close()  # returned already: the pool's, left alone
    assert not conn.closed
    again = pool.getconn()
    assert again is conn
    with again.cursor() as cur:
        cur.execute("SELECT 1")
    pool.putconn(again)
    assert pool.get_stats()["connections_discarded"] == 0


def test_without_it_close_closes_and_the_return_discards(make_pool: MakePool) -> None:
    pool = make_pool(1, 1)
    conn = pool.getconn()
    conn.close()
    assert conn.closed
    pool.putconn(conn)
    assert pool.get_stats()["discarded_closed_by_user"] == 1


def test_the_pool_still_closes_its_connections(make_pool: MakePool) -> None:
    pool = make_pool(2, 2, close_returns=True)
    conns = list(pool.idle_connections)
    pool.close()
    assert all(conn.closed for conn in conns)


def test_close_returns_must_be_a_bool(make_pool: MakePool) -> None:
    with pytest.raises(TypeError, match="close_returns must be True or False"):
        make_pool(0, 1, close_returns="yes")


def test_sqlalchemy_nullpool_recipe_pools(dsn: str, admin: Any, app_name: str) -> None:
    """The recipe of docs/api.md under 8 threads, 1,000 requests through a real SQLAlchemy 2
    ORM session: at most maxconn connections opened, none collected as a leak."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from sqlalchemy import orm, text

    pool = ConnectionPool(1, 4, dsn=dsn, timeout=10, close_returns=True,
                          application_name=app_name)
    engine = sqlalchemy.create_engine("postgresql+psycopg2://", creator=pool.getconn,
                                      poolclass=sqlalchemy.pool.NullPool)
    errors: list[BaseException] = []

    def requests(count: int) -> None:
        try:
            for _ in range(count):
                with orm.Session(engine) as session:
                    assert session.execute(text("SELECT 1")).scalar() == 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=requests, args=(125,)) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors[:3]
        stats = pool.get_stats()
        assert stats["returns"] == stats["requests"] == 1000
        assert stats["connections_num"] <= 4
        assert stats["discarded_garbage_collected"] == 0
        assert stats["connections_discarded"] == 0
        assert backend_count(admin, app_name) <= 4
    finally:
        engine.dispose()
        pool.close()
