"""psycopg2-pool 1.2's own test suite (tests.py of its sdist), ported to pytest, against our pool.

1.2's tests relied on the PG* environment variables; here the DSN is passed as ``dsn=``.
"""

from __future__ import annotations

from typing import Any

import psycopg2.extensions as _ext
import pytest
from psycopg2.errors import ProgrammingError

from psycopg2_pool import ConnectionPool, PoolError


def test_getconn(dsn: str) -> None:
    pool = ConnectionPool(0, 1, dsn=dsn)
    conn = pool.getconn()
    assert not conn.closed
    with pytest.raises(PoolError):
        pool.getconn()
    pool.putconn(conn)
    assert conn in pool.return_times
    new_conn = pool.getconn()
    assert new_conn is conn
    pool.putconn(new_conn)
    pool.close()


def test_putconn(dsn: str) -> None:
    pool = ConnectionPool(0, 1, dsn=dsn)
    conn = pool.getconn()
    assert conn not in pool.idle_connections
    pool.putconn(conn)
    assert conn in pool.idle_connections
    pool.close()


def test_putconn_opens_new_connection_to_comply_with_minconn(dsn: str) -> None:
    pool = ConnectionPool(1, 1, idle_timeout=0, dsn=dsn)
    conn = pool.getconn()
    assert conn not in pool.idle_connections
    assert len(pool.idle_connections) == 0
    conn.close()
    pool.putconn(conn)
    assert conn not in pool.idle_connections
    assert len(pool.idle_connections) == 1
    pool.close()


def test_getconn_closed(dsn: str) -> None:
    pool = ConnectionPool(0, 1, dsn=dsn)
    conn = pool.getconn()
    pool.putconn(conn)
    conn.close()
    assert conn in pool.idle_connections
    new_conn = pool.getconn()
    assert new_conn is not conn
    assert conn not in pool.idle_connections
    assert conn not in pool.return_times
    assert conn.closed
    pool.putconn(new_conn)
    pool.close()


def test_getconn_expired(dsn: str) -> None:
    pool = ConnectionPool(0, 1, idle_timeout=30, dsn=dsn)
    conn = pool.getconn()
    pool.putconn(conn)
    pool.return_times[conn] -= 60
    new_conn = pool.getconn()
    assert new_conn is not conn
    assert conn not in pool.idle_connections
    assert conn not in pool.return_times
    assert conn.closed
    pool.putconn(new_conn)
    pool.close()


def test_putconn_error_state(dsn: str) -> None:
    pool = ConnectionPool(0, 1, dsn=dsn)
    conn = pool.getconn()
    cursor = conn.cursor()
    with pytest.raises(ProgrammingError):
        cursor.execute("INSERT INTO nonexistent (id) VALUES (1)")
    assert conn.get_transaction_status() != _ext.TRANSACTION_STATUS_IDLE
    pool.putconn(conn)
    assert conn.get_transaction_status() == _ext.TRANSACTION_STATUS_IDLE
    assert conn in pool.idle_connections
    pool.close()


def test_putconn_closed(dsn: str) -> None:
    pool = ConnectionPool(0, 1, dsn=dsn)
    conn = pool.getconn()
    assert not conn.closed
    assert conn not in pool.return_times
    conn.close()
    assert conn.closed
    pool.putconn(conn)
    assert conn not in pool.idle_connections
    assert conn not in pool.return_times
    pool.close()


def test_caching(dsn: str) -> None:
    pool = ConnectionPool(0, 10, dsn=dsn)
    check_conn = pool.getconn()
    check_conn.autocommit = True
    check_cursor = check_conn.cursor()
    sql = "SELECT numbackends FROM pg_stat_database WHERE datname = current_database()"

    def backends() -> int:
        check_cursor.execute("SELECT pg_stat_clear_snapshot()")
        check_cursor.execute(sql)
        return int(check_cursor.fetchone()[0])

    starting_conns = backends()
    conn2 = pool.getconn()
    conn3 = pool.getconn()
    assert conn2 != conn3
    assert backends() == starting_conns + 2
    pool.putconn(conn2)
    pool.putconn(conn3)
    assert backends() == starting_conns + 2
    conn4 = pool.getconn()
    assert conn4 in (conn2, conn3)
    assert backends() == starting_conns + 2
    pool.putconn(conn4)
    pool.putconn(check_conn)
    pool.close()


def test_extraneous_connections_are_discarded(dsn: str) -> None:
    pool = ConnectionPool(minconn=0, idle_timeout=120, dsn=dsn)
    conns: list[Any] = [pool.getconn() for _ in range(3)]
    for conn in conns:
        pool.putconn(conn)
    for conn in conns:
        pool.return_times[conn] -= 60
    last_conn = conns[-1]
    for _ in range(len(conns)):
        conn = pool.getconn()
        assert conn is last_conn
        pool.putconn(conn)
    for conn in conns:
        pool.return_times[conn] -= 60
    conn = pool.getconn()
    assert conn is last_conn
    assert list(pool.idle_connections) == conns[:2]
    assert set(pool.return_times) == set(conns[:2])
    pool.putconn(conn)
    assert list(pool.idle_connections) == [conn]
    assert set(pool.return_times) == {conn}
    pool.close()


def test_clear(dsn: str) -> None:
    pool = ConnectionPool(0, 10, dsn=dsn)
    conn1 = pool.getconn()
    conn2 = pool.getconn()
    pool.putconn(conn2)
    assert len(pool.idle_connections) == 1
    assert len(pool.connections_in_use) == 1
    assert not conn1.closed
    assert not conn2.closed
    pool.clear()
    assert conn2.closed
    assert not conn1.closed
    assert len(pool.connections_in_use) == 1
    assert len(pool.idle_connections) == 0
    assert len(pool.return_times) == 0
    pool.putconn(conn1)
    pool.close()
