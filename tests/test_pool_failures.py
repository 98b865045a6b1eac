"""Connection failures raise psycopg2's error, take no slot, and leave waiters their timeout."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from psycopg2.extensions import make_dsn

from psycopg2_pool import ConnectionPool, PoolExhausted


def test_server_refusing_connections() -> None:
    pool = ConnectionPool(0, 3, host="127.0.0.1", port=1, connect_timeout=2)
    for _ in range(5):
        with pytest.raises(psycopg2.OperationalError) as raised:
            pool.getconn()
        assert not isinstance(raised.value, PoolExhausted)
    stats = pool.get_stats()
    assert stats["pool_size"] == 0 and stats["pool_opening"] == 0
    assert stats["connections_errors"] == 5
    pool.close()


def test_minconn_failure_at_construction_raises_psycopg2s_error() -> None:
    with pytest.raises(psycopg2.OperationalError):
        ConnectionPool(2, 3, host="127.0.0.1", port=1, connect_timeout=2)


@pytest.fixture
def limited_role(admin: Any) -> Iterator[str]:
    """A role allowed two connections: the server refuses the third (too many connections)."""
    role = f"limited_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2")
    yield role
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    (role,))
        cur.execute(f"DROP ROLE {role}")


def test_server_connection_limit_reached(dsn: str, limited_role: str) -> None:
    pool = ConnectionPool(0, 5, dsn=make_dsn(dsn, user=limited_role))
    a, b = pool.getconn(), pool.getconn()
    with pytest.raises(psycopg2.OperationalError, match="too many connections"):
        pool.getconn()
    assert pool.get_stats()["pool_size"] == 2  # the failed attempt took no slot
    pool.putconn(a)
    assert pool.getconn() is a  # and the pool goes on serving
    pool.putconn(a)
    pool.putconn(b)
    pool.close()


def test_waiter_honours_its_timeout_while_connections_fail(dsn: str, admin: Any,
                                                           limited_role: str) -> None:
    pool = ConnectionPool(0, 2, timeout=0.5, dsn=make_dsn(dsn, user=limited_role))
    held = [pool.getconn(), pool.getconn()]
    started = time.monotonic()
    with pytest.raises(PoolExhausted):
        pool.getconn()
    assert 0.5 <= time.monotonic() - started < 1.5
    # A slot freed while the server refuses: the waiter gets psycopg2's error, not a hang.
    with admin.cursor() as cur:
        cur.execute(f"ALTER ROLE {limited_role} CONNECTION LIMIT 1")
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            pool.putconn(pool.getconn(timeout=5))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    deadline = time.monotonic() + 5
    while pool.get_stats()["requests_waiting"] == 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    pool.putconn(held.pop(), close=True)  # frees a pool slot, but the server refuses
    thread.join(5)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], psycopg2.OperationalError)
    assert not isinstance(errors[0], PoolExhausted)
    assert "too many connections" in str(errors[0])
    assert pool.get_stats()["pool_size"] == 1  # the failed attempt gave its slot back
    pool.putconn(held.pop())
    pool.close()
