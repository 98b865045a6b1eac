"""Exhaustion, waiting with a timeout, hand-over, and first-come-first-served fairness."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg2
import psycopg2.pool
import pytest

import psycopg2_pool
from psycopg2_pool import ConnectionPool, PoolClosed, PoolExhausted
from tests.support.pools import wait_until


def test_exhaustion_error_is_every_class_users_catch(dsn: str) -> None:
    pool = ConnectionPool(0, 2, dsn=dsn, name="small")
    held = [pool.getconn(), pool.getconn()]
    started = time.monotonic()
    with pytest.raises(PoolExhausted) as raised:
        pool.getconn()
    assert time.monotonic() - started < 0.05  # timeout=0: fails at once, as today
    error = raised.value
    for cls in (psycopg2_pool.PoolError, psycopg2.pool.PoolError, psycopg2.OperationalError,
                psycopg2.Error):
        assert isinstance(error, cls)
    message = str(error)
    assert message.startswith("no more connections in the pool")
    assert "maxconn=2" in message and "2 in use" in message
    assert "did not wait (timeout=0)" in message
    assert "putconn" in message and "raise maxconn" in message and "timeout=" in message
    assert (error.maxconn, error.in_use, error.waited, error.timeout) == (2, 2, 0.0, 0.0)
    for conn in held:
        pool.putconn(conn)
    pool.close()


def test_waits_up_to_its_timeout(dsn: str) -> None:
    pool = ConnectionPool(0, 1, timeout=0.3, dsn=dsn)
    held = pool.getconn()
    started = time.monotonic()
    with pytest.raises(PoolExhausted) as raised:
        pool.getconn()
    waited = time.monotonic() - started
    assert 0.3 <= waited < 1.0
    assert "waited 0.3" in str(raised.value) and "timeout=0.3 s" in str(raised.value)
    started = time.monotonic()
    with pytest.raises(PoolExhausted):
        pool.getconn(timeout=0.1)  # per call
    assert 0.1 <= time.monotonic() - started < 0.5
    assert pool.get_stats()["requests_waiting"] == 0
    pool.putconn(held)
    pool.close()


def test_a_returned_connection_is_handed_to_the_waiter(dsn: str) -> None:
    pool = ConnectionPool(0, 1, timeout=5, dsn=dsn)
    held = pool.getconn()
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.getconn()))
    waiter.start()
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    pool.putconn(held)
    waiter.join(5)
    assert got == [held]
    pool.putconn(got[0])
    pool.close()


def test_a_discarded_connection_frees_its_slot_for_the_waiter(dsn: str) -> None:
    pool = ConnectionPool(0, 1, timeout=5, dsn=dsn)
    held = pool.getconn()
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.getconn()))
    waiter.start()
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    pool.putconn(held, close=True)
    waiter.join(5)
    assert len(got) == 1 and got[0] is not held and not got[0].closed
    assert pool.get_stats()["pool_size"] == 1
    pool.putconn(got[0])
    pool.close()


def test_waiters_are_served_first_come_first_served(dsn: str) -> None:
    pool = ConnectionPool(0, 1, timeout=10, dsn=dsn)
    held = pool.getconn()
    served: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        conn = pool.getconn()
        with lock:
            served.append(i)
        time.sleep(0.005)
        pool.putconn(conn)

    threads = []
    for i in range(8):
        thread = threading.Thread(target=worker, args=(i,))
        thread.start()
        threads.append(thread)
        assert wait_until(lambda n=i + 1: pool.get_stats()["requests_waiting"] == n)
    pool.putconn(held)
    for thread in threads:
        thread.join(10)
    assert served == list(range(8))
    pool.close()


def test_close_wakes_waiters_with_pool_closed(dsn: str) -> None:
    pool = ConnectionPool(0, 1, timeout=10, dsn=dsn)
    held = pool.getconn()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            pool.getconn()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    pool.close()
    thread.join(5)
    assert len(errors) == 1 and isinstance(errors[0], PoolClosed)
    pool.putconn(held)


def test_bad_per_call_timeout(dsn: str) -> None:
    pool = ConnectionPool(0, 1, dsn=dsn)
    held = pool.getconn()
    with pytest.raises(ValueError, match="timeout"):
        pool.getconn(timeout=-1)
    pool.putconn(held)
    pool.close()
