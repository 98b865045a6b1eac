"""Threads hammer small pools: exclusive ownership, limits, and books that balance."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import psycopg2
import pytest

from psycopg2_pool import PoolClosed, PoolExhausted, ThreadedConnectionPool
from tests.support.pools import backend_count, wait_until

THREADS = 32
CYCLES = 2_000
MAXCONN = 4


def test_32_threads_x_2000_cycles(dsn: str, admin: Any, app_name: str) -> None:
    pool = ThreadedConnectionPool(0, MAXCONN, dsn=dsn, timeout=10, application_name=app_name)
    holders: dict[int, int] = {}  # id(conn) -> the thread holding it
    holders_lock = threading.Lock()
    errors: list[str] = []
    queries = [0] * THREADS
    start = threading.Barrier(THREADS + 1)
    stop_sampling = threading.Event()
    samples: list[int] = []

    def worker(index: int) -> None:
        me = threading.get_ident()
        try:
            start.wait(30)
            for cycle in range(CYCLES):
                conn = pool.getconn()
                key = id(conn)
                with holders_lock:
                    other = holders.get(key)
                    if other is not None:
                        errors.append(f"thread {me} got connection {key:#x} held by {other}")
                    holders[key] = me
                if (cycle + index) % 50 == 0:
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                        if cur.fetchone()[0] != 1:
                            errors.append("SELECT 1 returned something else")
                    queries[index] += 1
                with holders_lock:
                    if holders.pop(key, None) != me:
                        errors.append(f"thread {me} lost track of connection {key:#x}")
                pool.putconn(conn)
                if errors:
                    return
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(f"thread {me}: {type(exc).__name__}: {exc}")

    def sampler() -> None:
        while not stop_sampling.is_set():
            samples.append(backend_count(admin, app_name))
            stop_sampling.wait(0.05)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # switch threads often: more interleavings
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    sampling = threading.Thread(target=sampler, daemon=True)
    try:
        for thread in threads:
            thread.start()
        sampling.start()
        started = time.monotonic()
        start.wait(30)
        for thread in threads:
            thread.join(120)
        elapsed = time.monotonic() - started
    finally:
        sys.setswitchinterval(old_interval)
        stop_sampling.set()
        sampling.join(5)
    assert not any(t.is_alive() for t in threads), "workers still running (deadlock?)"
    assert not errors, errors[:10]
    samples.append(backend_count(admin, app_name))
    assert samples, "the sampler never ran"
    assert max(samples) <= MAXCONN, samples
    stats = pool.get_stats()
    assert stats["pool_in_use"] == 0
    assert stats["pool_opening"] == 0
    assert stats["requests_waiting"] == 0
    assert stats["requests"] == THREADS * CYCLES
    assert stats["returns"] == THREADS * CYCLES
    assert stats["timeouts"] == 0
    assert stats["connections_num"] <= MAXCONN
    assert stats["connections_discarded"] == 0
    assert stats["pool_size"] == stats["pool_available"] == len(pool.idle_connections)
    assert 1 <= stats["pool_size"] <= MAXCONN
    assert sum(queries) == THREADS * CYCLES // 50
    assert not holders
    # every connection the pool kept is a working, idle session
    for conn in list(pool.idle_connections):  # psycopg2's cursor(): these are idle, not ours
        with psycopg2.extensions.connection.cursor(conn) as cur:
            cur.execute("SELECT 1")
        conn.rollback()
    pool.close()
    print(f"{THREADS * CYCLES} cycles in {elapsed:.2f} s; {len(samples)} samples, "
          f"max {max(samples)} backends")


def assert_books_balance(pool: ThreadedConnectionPool) -> dict[str, Any]:
    """Every connection opened is either still in the pool or was discarded exactly once,
    once the background refill to ``minconn`` that the last returns may have started is done."""
    assert wait_until(lambda: pool.get_stats()["pool_opening"] == 0, 5), pool.get_stats()
    stats = pool.get_stats()
    assert stats["pool_in_use"] == 0, stats
    assert stats["requests_waiting"] == 0, stats
    assert stats["pool_size"] == stats["pool_available"] == len(pool.idle_connections), stats
    assert stats["connections_num"] - stats["connections_discarded"] == stats["pool_size"], stats
    assert len(set(map(id, pool.idle_connections))) == len(pool.idle_connections)
    assert set(pool.return_times) == set(pool.idle_connections)
    return stats


def run_threads(count: int, target: Any) -> list[str]:
    errors: list[str] = []

    def guarded(index: int) -> None:
        try:
            target(index)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "threads still running (deadlock?)"
    return errors


def test_racing_double_returns_one_wins(dsn: str) -> None:
    pool = ThreadedConnectionPool(0, 2, dsn=dsn)
    outcomes: list[str] = []
    for _ in range(200):
        conn = pool.getconn()
        barrier = threading.Barrier(2)
        results: list[str] = []

        def give_back(_: int, conn: Any = conn, barrier: Any = barrier,
                      results: list[str] = results) -> None:
            barrier.wait(5)
            try:
                pool.putconn(conn)
                results.append("ok")
            except Exception as exc:  # noqa: BLE001 - the loser's error is expected
                results.append(type(exc).__name__)

        assert run_threads(2, give_back) == []
        outcomes.append(",".join(sorted(results)))
        assert list(pool.idle_connections).count(conn) == 1
    assert set(outcomes) == {"PoolError,ok"}, set(outcomes)
    stats = assert_books_balance(pool)
    assert stats["returns"] == 200
    pool.close()


def test_churn_with_idle_timeout_zero(dsn: str) -> None:
    """minconn=1, idle_timeout=0: every return beyond minconn closes; many opens and closes."""
    pool = ThreadedConnectionPool(1, 4, 0, dsn=dsn, timeout=10)
    sizes: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            sizes.append(pool.get_stats()["pool_size"])
            stop.wait(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def work(index: int) -> None:
        for _ in range(40):
            conn = pool.getconn()
            if index % 2:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")  # returned in a transaction: rolled back
            pool.putconn(conn)

    try:
        errors = run_threads(8, work)
    finally:
        stop.set()
        sampler.join(5)
    assert not errors, errors[:5]
    assert max(sizes) <= 4
    stats = assert_books_balance(pool)
    assert stats["requests"] == stats["returns"] == 8 * 40
    assert stats["pool_size"] >= 1  # refilled to minconn
    assert stats["timeouts"] == 0
    pool.close()


def test_timeouts_under_contention_leave_consistent_books(dsn: str) -> None:
    pool = ThreadedConnectionPool(0, 2, dsn=dsn, timeout=0.002)
    counts = {"ok": 0, "exhausted": 0}
    lock = threading.Lock()

    def work(_: int) -> None:
        for _ in range(300):
            try:
                conn = pool.getconn()
            except PoolExhausted:
                with lock:
                    counts["exhausted"] += 1
                continue
            time.sleep(0)
            pool.putconn(conn)
            with lock:
                counts["ok"] += 1

    errors = run_threads(12, work)
    assert not errors, errors[:5]
    stats = assert_books_balance(pool)
    assert counts["ok"] + counts["exhausted"] == 12 * 300
    assert stats["timeouts"] == counts["exhausted"]
    assert stats["returns"] == counts["ok"]
    assert stats["connections_num"] <= 2
    # the pool still serves every connection it has, and no more than maxconn
    held = [pool.getconn(), pool.getconn()]
    with pytest.raises(PoolExhausted):
        pool.getconn(timeout=0)
    for conn in held:
        pool.putconn(conn)
    pool.close()


def test_close_under_load(dsn: str, admin: Any, app_name: str) -> None:
    """close() while 16 threads cycle: they all stop with PoolClosed, nothing stays open."""
    pool = ThreadedConnectionPool(2, 4, dsn=dsn, timeout=5, application_name=app_name)
    started = threading.Barrier(17)
    outcomes: list[str] = []
    lock = threading.Lock()

    def work(_: int) -> None:
        started.wait(10)
        cycles = 0
        while True:
            try:
                conn = pool.getconn()
            except PoolClosed:
                with lock:
                    outcomes.append("closed")
                return
            cycles += 1
            pool.putconn(conn)
            if cycles > 1_000_000:
                raise AssertionError("never saw the pool closed")

    closer_errors: list[str] = []

    def closer() -> None:
        try:
            started.wait(10)
            time.sleep(0.2)
            pool.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            closer_errors.append(repr(exc))

    closing = threading.Thread(target=closer, daemon=True)
    closing.start()
    errors = run_threads(16, work)
    closing.join(10)
    assert not errors, errors[:5]
    assert not closer_errors
    assert outcomes == ["closed"] * 16
    stats = pool.get_stats()
    assert stats["pool_size"] == 0, stats
    assert stats["pool_in_use"] == 0
    assert not pool.idle_connections
    assert stats["connections_num"] == stats["connections_discarded"]
    deadline = time.monotonic() + 5
    while backend_count(admin, app_name) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend_count(admin, app_name) == 0


def test_refilled_connection_is_never_idle_without_a_return_time(dsn: str) -> None:
    """The lock-free getconn may pop an idle connection at any moment, so a connection must
    never sit in ``idle_connections`` without its ``return_times`` entry (1.2's invariant).

    A line tracer on the thread that refills the pool (putconn(close=True) below minconn)
    stops it at the first line where that invariant is broken, if any, and lets another
    thread call getconn right there, as a thread switch at that instant would.
    """
    import psycopg2_pool.pool as pool_module

    pool = ThreadedConnectionPool(1, 3, 60, dsn=dsn)
    conn = pool.getconn()
    window: dict[str, Any] = {}
    got: dict[str, Any] = {}

    def concurrent_getconn() -> None:
        try:
            got["conn"] = pool.getconn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            got["error"] = exc

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if os.path.dirname(frame.f_code.co_filename) != os.path.dirname(pool_module.__file__):
            return None
        if event == "line" and "line" not in window:
            exposed = [c for c in list(pool.idle_connections) if c not in pool.return_times]
            if exposed:
                window["line"] = f"{frame.f_code.co_name}:{frame.f_lineno}"
                window["conn"] = exposed[0]
                other = threading.Thread(target=concurrent_getconn, daemon=True)
                other.start()
                other.join(2)
                window["blocked"] = other.is_alive()
        return tracer

    sys.settrace(tracer)
    try:
        pool.putconn(conn, close=True)  # refills to minconn=1
    finally:
        sys.settrace(None)
    deadline = time.monotonic() + 5
    while "line" in window and not got and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = pool.get_stats()
    try:
        assert "line" not in window, (
            f"a refilled connection was idle without a return time at {window['line']}; "
            f"a concurrent getconn then got {got} (blocked on the pool lock: "
            f"{window['blocked']}), stats: discarded_idle_timeout="
            f"{stats['discarded_idle_timeout']}, connections_num={stats['connections_num']}, "
            f"stale return_times entries: "
            f"{len(set(pool.return_times) - set(pool.idle_connections))}")
        assert stats["discarded_idle_timeout"] == 0
        assert set(pool.return_times) == set(pool.idle_connections)
    finally:
        if "conn" in got:
            pool.putconn(got["conn"])
        pool.close()
