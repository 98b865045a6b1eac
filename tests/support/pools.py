"""Helpers for tests of pools: what the server side sees, polling, filling a pool, threads."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from psycopg2_pool import ConnectionPool, TooManyRequests

#: What the ``make_pool`` fixture (conftest.py) is: ``ConnectionPool``'s arguments, a pool.
MakePool = Callable[..., ConnectionPool]

#: Connection arguments of an address that refuses every connection at once.
NOWHERE = {"host": "127.0.0.1", "port": 1, "connect_timeout": 2}


def count_rows(admin: Any, table: str) -> int:
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(cur.fetchone()[0])


def backend_count(admin: Any, application_name: str) -> int:
    """Server-side connections opened with ``application_name``."""
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (application_name,))
        return int(cur.fetchone()[0])


def settled_backend_count(admin: Any, application_name: str, expected: int,
                          timeout: float = 5.0) -> int:
    """The server-side count once it reaches ``expected`` (or the last one seen at timeout):
    a backend leaves pg_stat_activity a moment after its client closed the connection."""
    deadline = time.monotonic() + timeout
    while True:
        count = backend_count(admin, application_name)
        if count == expected or time.monotonic() >= deadline:
            return count
        time.sleep(0.02)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False): the server
    side of a change shows a moment later (a backend exits after its client closed)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def refuse(pool: ConnectionPool, times: int,
           around: Callable[[], Any] = contextlib.nullcontext) -> None:
    """Fill a ``maxconn=1, max_waiting=1`` pool (one connection out, one caller waiting),
    make ``times`` more ``getconn`` calls, each inside ``around()`` and each refused with
    ``TooManyRequests``, then let the waiter through."""
    held = pool.getconn()
    waiter = threading.Thread(target=lambda: pool.putconn(pool.getconn(timeout=5)))
    waiter.start()
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    for _ in range(times):
        with around(), pytest.raises(TooManyRequests):
            pool.getconn(timeout=5)
    pool.putconn(held)
    waiter.join(5)


def getconn_while_returned(pool: ConnectionPool, conn: Any,
                           delay: float) -> tuple[Any, float]:
    """``pool.getconn()`` on this thread while another returns ``conn`` ``delay`` seconds after
    the pool counts this caller waiting: (what getconn gave, the seconds it took)."""
    def give_back() -> None:
        assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
        time.sleep(delay)
        pool.putconn(conn)

    giver = threading.Thread(target=give_back, daemon=True)
    giver.start()
    started = time.monotonic()
    got = pool.getconn()
    took = time.monotonic() - started
    giver.join(5)
    return got, took


def run_threads(target: Callable[[], Any], count: int, join_timeout: float,
                until: threading.Event | None = None) -> list[threading.Thread]:
    """``target`` on ``count`` threads at once; once ``until`` is set (when given), each is
    joined, ``join_timeout`` seconds at most: the threads (``is_alive()`` tells a hung one)."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    if until is not None:
        until.wait()
    for thread in threads:
        thread.join(join_timeout)
    return threads
