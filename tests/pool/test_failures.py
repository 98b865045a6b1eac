"""Connections that cannot be opened: psycopg2's error reaches the caller, no slot is lost."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg2
import pytest

from psycopg2_pool import ConnectionPool, PoolError, PoolExhausted, ServerUnavailable
from tests.support.pools import NOWHERE, MakePool, backend_count, wait_until


def set_limit(admin: Any, role: str, limit: int) -> None:
    with admin.cursor() as cur:
        cur.execute(f"ALTER ROLE {role} CONNECTION LIMIT {int(limit)}")


def role_sessions(admin: Any, role: str) -> int:
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,))
        return int(cur.fetchone()[0])



# -- nothing listens -----------------------------------------------------------------------


def test_unreachable_server_raises_psycopg2_error_and_takes_no_slot(
        make_pool: MakePool) -> None:
    pool = make_pool(0, 2, dsn="", **NOWHERE)
    for attempt in range(1, 6):  # more attempts than maxconn: never PoolExhausted
        with pytest.raises(psycopg2.OperationalError) as info:
            pool.getconn()
        assert not isinstance(info.value, PoolExhausted)
        stats = pool.get_stats()
        assert stats["pool_size"] == 0
        assert stats["pool_opening"] == 0
        assert stats["pool_in_use"] == 0
        assert stats["connections_errors"] == attempt
        assert stats["connections_num"] == 0
        assert stats["timeouts"] == 0
    assert pool.get_stats()["requests"] == 5


def test_unreachable_server_with_a_waiting_timeout(make_pool: MakePool) -> None:
    """A caller that may wait rides out failing connects (the pool retries in the
    background) and fails once its timeout has passed, with the server's error."""
    pool = make_pool(0, 1, dsn="", timeout=1, **NOWHERE)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable) as info:
        pool.getconn()
    elapsed = time.monotonic() - started
    assert isinstance(info.value, psycopg2.OperationalError)
    assert not isinstance(info.value, (PoolExhausted, PoolError))
    assert 1.0 <= elapsed < 1.6, elapsed
    assert "Connection refused" in str(info.value)
    assert isinstance(info.value.__cause__, psycopg2.OperationalError)
    stats = pool.get_stats()
    assert stats["pool_size"] == 0  # the slot reserved for the waiter was given back
    assert stats["pool_opening"] == 0
    assert 1 <= stats["connections_errors"] <= 10  # a shared backoff, not a busy loop


def test_unreachable_server_at_construction(dsn: str) -> None:
    with pytest.raises(psycopg2.OperationalError):
        ConnectionPool(2, 4, dsn="", **NOWHERE)


def test_refused_then_accepted_again(make_pool: MakePool, admin: Any,
                                     limited_role: str) -> None:
    """Refusals while the server says no; normal service as soon as it says yes."""
    set_limit(admin, limited_role, 0)
    pool = make_pool(0, 1, user=limited_role)
    for _ in range(3):
        with pytest.raises(psycopg2.OperationalError):
            pool.getconn()
    set_limit(admin, limited_role, 2)
    conn = pool.getconn()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    pool.putconn(conn)
    stats = pool.get_stats()
    assert stats["pool_size"] == 1
    assert stats["connections_errors"] == 3
    assert stats["connections_num"] == 1


# -- the server refuses (role connection limit) --------------------------------------------


def test_role_connection_limit_refusal(make_pool: MakePool, admin: Any,
                                       limited_role: str) -> None:
    pool = make_pool(0, 5, user=limited_role)
    a = pool.getconn()
    b = pool.getconn()
    for _ in range(3):
        with pytest.raises(psycopg2.OperationalError, match="too many connections") as info:
            pool.getconn()
        assert not isinstance(info.value, PoolExhausted)
        stats = pool.get_stats()
        assert stats["pool_size"] == 2
        assert stats["pool_in_use"] == 2
        assert stats["pool_opening"] == 0
    assert pool.get_stats()["connections_errors"] == 3
    assert role_sessions(admin, limited_role) == 2
    pool.putconn(a)
    assert pool.getconn() is a  # the idle one is reused: no new session needed
    pool.putconn(a)
    pool.putconn(b)
    assert pool.get_stats()["pool_size"] == 2


def test_exhausted_waiter_under_a_role_limit_times_out(make_pool: MakePool,
                                                       limited_role: str) -> None:
    pool = make_pool(0, 2, user=limited_role, timeout=0.5)
    held = [pool.getconn(), pool.getconn()]
    started = time.monotonic()
    with pytest.raises(PoolExhausted):
        pool.getconn()
    assert 0.48 <= time.monotonic() - started < 2
    stats = pool.get_stats()
    assert stats["connections_errors"] == 0  # it waited; it did not try to open a third
    assert stats["pool_size"] == 2
    for conn in held:
        pool.putconn(conn)


@pytest.mark.slow  # default suite under 3 minutes: .ci/run's slow set runs it
def test_waiter_handed_a_slot_whose_open_fails(make_pool: MakePool, admin: Any,
                                               limited_role: str) -> None:
    pool = make_pool(0, 1, user=limited_role, timeout=5)
    conn = pool.getconn()
    outcome: dict[str, Any] = {}

    def wait() -> None:
        try:
            outcome["conn"] = pool.getconn()
        except Exception as exc:  # noqa: BLE001 - inspected by the test
            outcome["error"] = exc

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    set_limit(admin, limited_role, 0)
    pool.putconn(conn, close=True)  # frees the slot; the waiter's open is refused
    waiter.join(10)
    assert not waiter.is_alive()
    assert "conn" not in outcome
    assert isinstance(outcome["error"], psycopg2.OperationalError)
    assert not isinstance(outcome["error"], PoolExhausted)
    stats = pool.get_stats()
    assert stats["pool_size"] == 0
    assert stats["pool_opening"] == 0
    assert stats["requests_waiting"] == 0
    set_limit(admin, limited_role, 2)
    again = pool.getconn()  # the slot was not lost
    pool.putconn(again)


def test_refill_failure_on_putconn_is_not_raised(make_pool: MakePool, admin: Any,
                                                 limited_role: str) -> None:
    pool = make_pool(1, 2, user=limited_role)
    conn = pool.getconn()
    set_limit(admin, limited_role, 0)
    pool.putconn(conn, close=True)  # refilling to minconn fails in the background, not here
    assert wait_until(lambda: pool.get_stats()["connections_errors"] >= 1)
    stats = pool.get_stats()
    assert stats["pool_size"] == 1  # the slot stays reserved: the pool keeps trying
    assert stats["pool_opening"] == 1
    assert stats["pool_available"] == 0
    assert stats["outages"] == 1
    set_limit(admin, limited_role, 2)
    assert wait_until(lambda: len(pool.idle_connections) == 1)  # refilled, with no call
    conn = pool.getconn()
    with conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone()[0] == limited_role
    pool.putconn(conn)


def test_failed_construction_closes_what_it_opened(dsn: str, admin: Any, limited_role: str,
                                                   app_name: str) -> None:
    with pytest.raises(psycopg2.OperationalError, match="too many connections"):
        ConnectionPool(3, 5, dsn=dsn, user=limited_role, application_name=app_name)
    assert wait_until(lambda: backend_count(admin, app_name) == 0)


def test_bad_credentials_user_does_not_exist(make_pool: MakePool) -> None:
    pool = make_pool(0, 2, user=f"nobody_{uuid.uuid4().hex[:8]}")
    for _ in range(3):
        with pytest.raises(psycopg2.OperationalError) as info:
            pool.getconn()
        assert not isinstance(info.value, PoolExhausted)
    assert pool.get_stats()["pool_size"] == 0
