"""psycopg2-pool 1.2's own test suite (tests.py), ported to pytest and run against our pool.

1.2 reached its server through the ``PG*`` environment variables; here every pool gets
``dsn=dsn`` (and an ``application_name`` where server-side connections are counted). The
assertions are 1.2's, unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2.extensions as ext
import pytest
from psycopg2.errors import ProgrammingError

from psycopg2_pool import PoolError
from tests.support.pools import MakePool, backend_count, wait_until


def test_getconn(make_pool: MakePool) -> None:
    pool = make_pool(0, 1)
    conn = pool.getconn()

    # Make sure we got an open connection
    assert not conn.closed

    # Try again. We should get an error, since we only allowed one connection.
    with pytest.raises(PoolError):
        pool.getconn()

    # Put the connection back, the return time should be saved
    pool.putconn(conn)
    assert conn in pool.return_times

    # Get the connection back
    new_conn = pool.getconn()
    assert new_conn is conn


def test_putconn(make_pool: MakePool) -> None:
    pool = make_pool(0, 1)
    conn = pool.getconn()
    assert conn not in pool.idle_connections

    pool.putconn(conn)
    assert conn in pool.idle_connections


def test_putconn_opens_new_connection_to_comply_with_minconn(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, idle_timeout=0)
    conn = pool.getconn()
    assert conn not in pool.idle_connections
    assert len(pool.idle_connections) == 0

    conn.close()
    pool.putconn(conn)

    # This connection shouldn't be put in the idle queue because it's closed
    assert conn not in pool.idle_connections

    # But we should still have *a* connection available (1.2 opened it inside putconn; here
    # the background scheduler does, a moment later)
    assert wait_until(lambda: len(pool.idle_connections) == 1)
    assert len(pool.idle_connections) == 1
    assert not pool.idle_connections[0].closed


def test_getconn_closed(make_pool: MakePool) -> None:
    pool = make_pool(0, 1)
    conn = pool.getconn()
    pool.putconn(conn)

    # Close the connection, it should still be in the pool
    conn.close()
    assert conn in pool.idle_connections

    # The connection should be discarded by getconn
    new_conn = pool.getconn()
    assert new_conn is not conn
    assert conn not in pool.idle_connections
    assert conn not in pool.return_times
    assert conn.closed
    assert not new_conn.closed


def test_getconn_expired(make_pool: MakePool) -> None:
    pool = make_pool(0, 1, idle_timeout=30)
    conn = pool.getconn()

    # Expire the connection
    pool.putconn(conn)
    pool.return_times[conn] -= 60

    # Connection should be discarded
    new_conn = pool.getconn()
    assert new_conn is not conn
    assert conn not in pool.idle_connections
    assert conn not in pool.return_times
    assert conn.closed


def test_putconn_error_state(make_pool: MakePool) -> None:
    pool = make_pool(0, 1)
    conn = pool.getconn()

    # Get connection into transaction state
    cursor = conn.cursor()
    try:  # noqa: SIM105 - 1.2's code, as written
        cursor.execute("INSERT INTO nonexistent (id) VALUES (1)")
    except ProgrammingError:
        pass

    assert conn.get_transaction_status() != ext.TRANSACTION_STATUS_IDLE

    pool.putconn(conn)

    # Make sure we got back into the pool and are now showing idle
    assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
    assert conn in pool.idle_connections


def test_putconn_closed(make_pool: MakePool) -> None:
    pool = make_pool(0, 1)
    conn = pool.getconn()

    # The connection should be open and shouldn't have a return time
    assert not conn.closed
    assert conn not in pool.return_times

    conn.close()

    # Now should be closed
    assert conn.closed

    pool.putconn(conn)

    # The connection should have been discarded
    assert conn not in pool.idle_connections
    assert conn not in pool.return_times


def test_caching(make_pool: MakePool, admin: Any, app_name: str) -> None:
    pool = make_pool(0, 10, application_name=app_name)

    # 1.2 counted pg_stat_database.numbackends from a pooled connection; counting this
    # test's own application_name from outside the pool is immune to other sessions.
    check_conn = pool.getconn()
    starting_conns = backend_count(admin, app_name)
    assert starting_conns == 1

    # Get a couple more connections
    conn2 = pool.getconn()
    conn3 = pool.getconn()

    assert conn2 != conn3
    assert check_conn not in (conn2, conn3)

    # Verify that we have the expected number of connections to the DB server now
    total_cons = backend_count(admin, app_name)
    assert total_cons == starting_conns + 2

    # Put the connections back in the pool and verify they don't close
    pool.putconn(conn2)
    pool.putconn(conn3)
    total_cons_after_put = backend_count(admin, app_name)
    assert total_cons == total_cons_after_put

    # Get another connection and verify we don't create a new one
    conn4 = pool.getconn()

    # conn4 should be either conn2 or conn3 (we don't care which)
    assert conn4 in (conn2, conn3)
    total_cons_after_get = backend_count(admin, app_name)
    assert total_cons_after_get == total_cons


@pytest.fixture
def own_database(admin: Any) -> Iterator[str]:
    """A database of the test's own, so that numbackends counts nobody else's sessions."""
    name = f"compat_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    yield name
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_caching_by_numbackends_as_1_2_did(make_pool: MakePool, own_database: str) -> None:
    """1.2's own measurement: pg_stat_database.numbackends from an autocommit pooled conn."""
    pool = make_pool(0, 10, dbname=own_database)
    check_conn = pool.getconn()
    check_conn.autocommit = True  # Being in a transaction hides the other connections.
    check_cursor = check_conn.cursor()
    sql = "SELECT numbackends FROM pg_stat_database WHERE datname = current_database()"

    def numbackends() -> int:
        check_cursor.execute("SELECT pg_stat_clear_snapshot()")
        check_cursor.execute(sql)
        return int(check_cursor.fetchone()[0])

    starting_conns = numbackends()
    assert starting_conns == 1
    conn2 = pool.getconn()
    conn3 = pool.getconn()
    assert conn2 != conn3
    assert numbackends() == starting_conns + 2
    pool.putconn(conn2)
    pool.putconn(conn3)
    assert numbackends() == starting_conns + 2
    conn4 = pool.getconn()
    assert conn4 in (conn2, conn3)
    assert numbackends() == starting_conns + 2
    check_conn.autocommit = False
    pool.putconn(check_conn)
    pool.putconn(conn4)
    pool.close()


def test_extraneous_connections_are_discarded(make_pool: MakePool) -> None:
    """1.2 discarded them inside a later putconn; here the background PruneIdle task closes
    them once they are idle past idle_timeout, with no call at all."""
    pool = make_pool(minconn=0, idle_timeout=1)
    # Get multiple connections then put them all back
    conns = [pool.getconn() for i in range(3)]
    for conn in conns:
        pool.putconn(conn)
    # Check out one connection multiple times, we should always get the same one
    last_conn = conns[-1]
    for _ in range(len(conns)):
        conn = pool.getconn()
        assert conn is last_conn
        pool.putconn(conn)
    conn = pool.getconn()
    assert conn is last_conn
    assert list(pool.idle_connections) == conns[:2]
    assert set(pool.return_times) == set(conns[:2])
    # The other connections are closed once they are idle past idle_timeout
    assert wait_until(lambda: conns[0].closed and conns[1].closed, timeout=5)
    assert list(pool.idle_connections) == []
    assert pool.return_times == {}
    assert not conn.closed
    pool.putconn(conn)
    assert list(pool.idle_connections) == [conn]
    assert set(pool.return_times) == {conn}


def test_clear(make_pool: MakePool) -> None:
    pool = make_pool(0, 10)
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


def test_1_2_defaults(make_pool: MakePool) -> None:
    """1.2's signature: ConnectionPool(minconn=1, maxconn=inf, idle_timeout=600)."""
    pool = make_pool()
    assert pool.minconn == 1
    assert pool.maxconn == float("inf")
    assert pool.idle_timeout == 600
    assert len(pool.idle_connections) == 1  # minconn opened at construction
    conns = [pool.getconn() for _ in range(5)]  # no limit by default
    assert len(set(conns)) == 5
    for conn in conns:
        pool.putconn(conn)
