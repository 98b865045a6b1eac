"""Exhaustion, waiting with a timeout, hand-over to waiters, and first-come-first-served."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg2
import psycopg2.pool
import pytest

import psycopg2_pool
from psycopg2_pool import ConnectionPool, PoolClosed, PoolExhausted
from tests.support.pools import MakePool, getconn_while_returned, wait_until


class Getter(threading.Thread):
    """A thread that calls getconn once and keeps the outcome."""

    def __init__(self, pool: ConnectionPool, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.pool = pool
        self.kwargs = kwargs
        self.conn: Any = None
        self.error: BaseException | None = None
        self.elapsed = 0.0

    def run(self) -> None:
        started = time.monotonic()
        try:
            self.conn = self.pool.getconn(**self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - kept for the test to inspect
            self.error = exc
        self.elapsed = time.monotonic() - started


def one_out_one_waiting(pool: ConnectionPool) -> tuple[Any, Getter]:
    """Check out the pool's one connection, then start a Getter and return once the pool
    counts it as waiting: (the connection, the waiting Getter)."""
    conn = pool.getconn()
    waiter = Getter(pool)
    waiter.start()
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    return conn, waiter


def test_exhaustion_error_types_and_message(make_pool: MakePool) -> None:
    pool = make_pool(0, 2)
    held = [pool.getconn(), pool.getconn()]
    with pytest.raises(PoolExhausted) as info:
        pool.getconn()
    error = info.value
    assert isinstance(error, psycopg2_pool.PoolError)
    assert isinstance(error, psycopg2.pool.PoolError)
    assert isinstance(error, psycopg2.OperationalError)
    assert isinstance(error, psycopg2.Error)
    message = str(error)
    assert message.startswith("no more connections in the pool")
    assert "maxconn=2" in message
    assert "2 in use" in message
    assert "did not wait (timeout=0)" in message
    assert "raise maxconn" in message and "timeout=" in message  # what to do
    assert "putconn" in message
    assert error.maxconn == 2
    assert error.in_use == 2
    assert error.waited == 0
    assert error.timeout == 0
    for conn in held:
        pool.putconn(conn)


def test_exhaustion_caught_as_1_2_and_psycopg2_pool_users_do(make_pool: MakePool) -> None:
    pool = make_pool(0, 1)
    conn = pool.getconn()
    with pytest.raises(psycopg2.OperationalError, match=r"^no more connections in the pool"):
        pool.getconn()
    with pytest.raises(psycopg2.pool.PoolError):
        pool.getconn()
    with pytest.raises(psycopg2_pool.PoolError):
        pool.getconn()
    pool.putconn(conn)


def test_default_timeout_fails_at_once(make_pool: MakePool) -> None:
    pool = make_pool(0, 1)
    assert pool.timeout == 0
    conn = pool.getconn()
    started = time.monotonic()
    with pytest.raises(PoolExhausted):
        pool.getconn()
    assert time.monotonic() - started < 0.1
    stats = pool.get_stats()
    assert stats["exhausted"] == 1
    assert stats["timeouts"] == 1
    assert stats["waits"] == 0
    pool.putconn(conn)


@pytest.mark.parametrize("where", ["pool", "call"])
def test_waits_up_to_the_timeout_then_raises(make_pool: MakePool, where: str) -> None:
    pool = make_pool(0, 1, timeout=0.3) if where == "pool" else make_pool(0, 1)
    kwargs = {"timeout": 0.3} if where == "call" else {}
    conn = pool.getconn(timeout=0)  # opened here, not waited for
    started = time.monotonic()
    with pytest.raises(PoolExhausted) as info:
        pool.getconn(**kwargs)
    elapsed = time.monotonic() - started
    assert 0.29 <= elapsed < 1.0
    message = str(info.value)
    assert message.startswith("no more connections in the pool")
    assert "waited 0.3" in message
    assert "timeout=0.3 s" in message
    assert 0.29 <= info.value.waited < 1.0
    assert info.value.timeout == 0.3
    stats = pool.get_stats()
    assert stats["waits"] == 1
    assert stats["timeouts"] == 1
    assert stats["requests_waiting"] == 0
    assert stats["requests_wait_ms"] >= 290
    pool.putconn(conn)
    assert pool.getconn() is conn  # the pool still works after a timed-out waiter
    pool.putconn(conn)


def test_putconn_from_another_thread_hands_over_that_connection(make_pool: MakePool) -> None:
    pool = make_pool(0, 1, timeout=5)
    conn = pool.getconn(timeout=0)  # opened here, not waited for
    got, elapsed = getconn_while_returned(pool, conn, 0.05)
    assert got is conn
    assert 0.04 <= elapsed < 4
    stats = pool.get_stats()
    assert stats["waits"] == 1
    assert stats["timeouts"] == 0
    assert stats["pool_in_use"] == 1
    assert stats["connections_num"] == 1
    assert not pool.idle_connections
    pool.putconn(got)


def test_waiter_thread_gets_the_returned_connection(make_pool: MakePool) -> None:
    pool = make_pool(0, 1, timeout=5)
    conn, waiter = one_out_one_waiting(pool)
    pool.putconn(conn)
    waiter.join(5)
    assert waiter.error is None
    assert waiter.conn is conn
    pool.putconn(conn)


def test_discarded_connection_gives_its_slot_to_a_waiter(make_pool: MakePool) -> None:
    pool = make_pool(0, 1, timeout=5)
    conn, waiter = one_out_one_waiting(pool)
    pool.putconn(conn, close=True)
    waiter.join(5)
    assert waiter.error is None
    assert waiter.conn is not None and waiter.conn is not conn
    assert not waiter.conn.closed
    stats = pool.get_stats()
    assert stats["pool_size"] == 1
    assert stats["pool_in_use"] == 1
    pool.putconn(waiter.conn)


def test_close_wakes_waiters_with_pool_closed(make_pool: MakePool) -> None:
    pool = make_pool(0, 1, timeout=10)
    conn, waiter = one_out_one_waiting(pool)
    pool.close()
    waiter.join(5)
    assert not waiter.is_alive()
    assert isinstance(waiter.error, PoolClosed)
    assert waiter.elapsed < 5
    pool.putconn(conn)
    assert conn.closed


@pytest.mark.parametrize("maxconn", [1, 2])
def test_waiters_are_served_first_come_first_served(make_pool: MakePool, maxconn: int) -> None:
    n = 6
    pool = make_pool(0, maxconn, timeout=10)
    held = [pool.getconn(timeout=0) for _ in range(maxconn)]  # opened, not waited for
    served: list[int] = []
    served_lock = threading.Lock()
    release = [threading.Event() for _ in range(n)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            conn = pool.getconn()
            with served_lock:
                served.append(i)
            release[i].wait(10)
            pool.putconn(conn)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = []
    for i in range(n):
        thread = threading.Thread(target=worker, args=(i,), daemon=True)
        thread.start()
        threads.append(thread)
        assert wait_until(lambda i=i: pool.get_stats()["requests_waiting"] == i + 1)

    # Return the connections one at a time; each must go to the oldest waiter.
    for returned, conn in enumerate(held, 1):
        pool.putconn(conn)
        assert wait_until(lambda n=returned: len(served) == n or bool(errors))
    assert served == list(range(maxconn))
    for i in range(n - maxconn):
        release[i].set()
        assert wait_until(lambda i=i: len(served) == maxconn + i + 1 or bool(errors))
        assert served == list(range(maxconn + i + 1))
    for event in release:
        event.set()
    for thread in threads:
        thread.join(10)
    assert not errors
    assert served == list(range(n))
    stats = pool.get_stats()
    assert stats["waits"] == n
    assert stats["timeouts"] == 0
    assert stats["pool_in_use"] == 0
    assert stats["connections_num"] == maxconn


def test_new_request_does_not_barge_ahead_of_a_waiter(make_pool: MakePool) -> None:
    """A connection returned while someone waits goes to the waiter, not to a later caller."""
    pool = make_pool(0, 1, timeout=5)
    conn, waiter = one_out_one_waiting(pool)
    pool.putconn(conn)
    with pytest.raises(PoolExhausted):
        pool.getconn(timeout=0)  # the connection is already the waiter's
    waiter.join(5)
    assert waiter.conn is conn
    pool.putconn(conn)


def test_interleaved_waits_and_timeouts_leave_a_consistent_pool(make_pool: MakePool) -> None:
    pool = make_pool(0, 2, timeout=0.05)
    a, b = pool.getconn(), pool.getconn()
    getters = [Getter(pool) for _ in range(4)]
    for getter in getters:
        getter.start()
    for getter in getters:
        getter.join(5)
    assert all(isinstance(g.error, PoolExhausted) for g in getters)
    stats = pool.get_stats()
    assert stats["requests_waiting"] == 0
    assert stats["timeouts"] == 4
    pool.putconn(a)
    pool.putconn(b)
    assert len(pool.idle_connections) == 2
    c, d = pool.getconn(), pool.getconn()
    assert {c, d} == {a, b}
    pool.putconn(c)
    pool.putconn(d)


def test_waiter_gets_a_rolled_back_connection(make_pool: MakePool) -> None:
    pool = make_pool(0, 1, timeout=5)
    conn = pool.getconn()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")  # returned inside a transaction
    waiter = Getter(pool)
    waiter.start()
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    pool.putconn(conn)
    waiter.join(5)
    assert waiter.conn is conn
    assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    assert pool.get_stats()["rollbacks"] == 1
    pool.putconn(conn)


@pytest.mark.parametrize("why", ["closed", "max_lifetime"])
def test_waiter_gets_a_new_connection_when_the_returned_one_is_discarded(
        make_pool: MakePool, why: str) -> None:
    pool = make_pool(0, 1, timeout=5, max_lifetime=0.2 if why == "max_lifetime" else None)
    conn, waiter = one_out_one_waiting(pool)
    if why == "closed":
        conn.close()
    else:
        time.sleep(0.25)
    pool.putconn(conn)
    waiter.join(5)
    assert waiter.error is None
    assert waiter.conn is not None and waiter.conn is not conn
    assert conn.closed
    with waiter.conn.cursor() as cur:
        cur.execute("SELECT 1")
    stats = pool.get_stats()
    assert stats["pool_size"] == 1
    assert stats["connections_num"] == 2
    assert stats["connections_discarded"] == 1
    pool.putconn(waiter.conn)


def test_timeout_0_takes_the_connection_a_refill_is_opening(make_pool: MakePool) -> None:
    # timeout=0 fails at once when every slot is used, but not when one of them is a
    # background refill about to hand over a connection: it takes that one when it is ready.
    main = threading.current_thread()

    def slow_in_the_background(conn: Any) -> None:
        if threading.current_thread() is not main:
            time.sleep(0.4)

    pool = make_pool(1, 2, timeout=0, configure=slow_in_the_background)
    pool.wait()
    first = pool.getconn()
    pool.putconn(first, close=True)  # minconn: a refill starts in the background
    wait_until(lambda: pool._bg_connecting == 1)
    second = pool.getconn()  # a free slot: opened on this thread
    started = time.monotonic()
    third = pool.getconn()  # the last slot is the refill's: wait for it, do not fail
    assert 0.1 < time.monotonic() - started < 1.0
    assert third is not second and not third.closed
    pool.putconn(second)
    pool.putconn(third)
    with pytest.raises(PoolExhausted):  # nothing in flight: at once, as before
        held = [pool.getconn(), pool.getconn()]
        try:
            pool.getconn()
        finally:
            for conn in held:
                pool.putconn(conn)
