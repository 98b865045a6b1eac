"""Faults survived, against a real PostgreSQL restarted, stopped, filled up and cut off.

The server is the module's own (``faults.OwnServer``): restarting it does not disturb the
rest of the suite. The figures (errors, recovery times) go to the session's summary and to
docs/reliability.md.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any

import psycopg2
import pytest

from psycopg2_pool import ConnectionPool, PoolExhausted, ServerUnavailable
from tests.support.faults import OwnServer, Proxy
from tests.support.otel import Otel, point
from tests.support.pools import run_threads, settled_backend_count

Figure = Callable[[str], None]


@dataclass
class Attempt:
    started: float
    ended: float
    error: str | None


def load(pool: ConnectionPool, threads: int, stop: threading.Event) -> list[Attempt]:
    """``threads`` threads running ``SELECT 1`` transactions until ``stop``; every attempt."""
    attempts: list[Attempt] = []

    def worker() -> None:
        while not stop.is_set():
            started = monotonic()
            try:
                with pool.connection() as conn, conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    cur.fetchone()
                error = None
            except psycopg2.Error as exc:
                error = type(exc).__name__
            attempts.append(Attempt(started, monotonic(), error))
            time.sleep(0.001)

    run_threads(worker, threads, 10, until=stop)
    return attempts


def restart_under_load(server: OwnServer, pool: ConnectionPool
                       ) -> tuple[list[Attempt], float, float]:
    """(attempts, when the restart began, when the server accepted again)."""
    stop = threading.Event()
    result: list[list[Attempt]] = []
    runner = threading.Thread(target=lambda: result.append(load(pool, 8, stop)))
    runner.start()
    time.sleep(0.5)
    began = monotonic()
    server.restart()
    back = monotonic()
    time.sleep(1.5)
    stop.set()
    runner.join(15)
    return result[0], began, back


@pytest.mark.parametrize("health_check", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["check-on", "check-off"])
def test_restart_under_load(server: OwnServer, otel: Otel, figure: Figure,
                            health_check: bool) -> None:
    from telemetry import instrument

    pool = ConnectionPool(8, 8, timeout=5, dsn=server.uri, connect_timeout=5,
                          check_idle_after=0 if health_check else None)
    instrument(pool, meter_provider=otel.meter_provider, leak_threshold=None)
    try:
        attempts, began, back = restart_under_load(server, pool)
        stats = pool.get_stats()
        discards = otel.metrics()["psycopg2_pool.connection.discards"]
    finally:
        pool.close()
    before = [a for a in attempts if a.ended < began]
    after_back = [a for a in attempts if a.started >= back]
    failed_after = [a for a in after_back if a.error]
    assert before and not any(a.error for a in before)
    first_ok = min(a.ended for a in after_back if not a.error)
    recovery = first_ok - back
    in_flight = [a for a in attempts if a.error and a.started < back]
    if health_check:
        assert failed_after == []  # no dead connection was handed out once the server was back
        # dead connections went as failed_check (idle at the restart) or broken (in flight);
        # which depends on where the 8 threads were when the server went away
        assert stats["discarded_failed_check"] + stats["discarded_broken"] >= 1
    else:
        assert len(failed_after) <= 8  # at most one per pooled connection
        assert stats["discarded_broken"] >= len(failed_after)
    assert recovery < 1.0
    late = [a for a in after_back if a.started >= back + 0.5]
    assert late and not any(a.error for a in late)  # fully recovered
    counted = sum(p.value for p in discards.data.data_points)
    assert counted == stats["connections_discarded"] >= 8  # every pre-restart session went
    figure(f"restart (pg_ctl restart -m fast) under 8 threads, health check "
           f"{'on' if health_check else 'off'}: restart took {back - began:.2f} s; "
           f"{len(in_flight)} in-flight attempts failed; {len(failed_after)} failed after the "
           f"server was back; first success {recovery * 1000:.0f} ms after; "
           f"{stats['connections_discarded']} connections discarded; "
           f"{len(attempts)} attempts in all")


@pytest.mark.parametrize("health_check", [True, False], ids=["check-on", "check-off"])
def test_restart_while_idle(server: OwnServer, figure: Figure, health_check: bool) -> None:
    """Every pooled session dies while nobody uses the pool: with the health check no dead
    connection is handed out; without, each is handed out once at most, then discarded."""
    pool = ConnectionPool(8, 8, timeout=5, dsn=server.uri,
                          check_idle_after=0 if health_check else None)
    try:
        server.restart()
        stop = threading.Event()
        threading.Timer(1.0, stop.set).start()
        attempts = load(pool, 8, stop)
        stats = pool.get_stats()
    finally:
        pool.close()
    failed = [a for a in attempts if a.error]
    if health_check:
        assert failed == [] and stats["discarded_failed_check"] == 8
    else:  # each failure discarded its connection: at most one per pooled connection. When
        # it shows is not bounded: the newest idle connection goes first, so a dead one at the
        # bottom of the idle stack waits until 8 checkouts overlap.
        assert 1 <= len(failed) <= 8 and stats["discarded_broken"] == len(failed)
    figure(f"restart while idle, health check {'on' if health_check else 'off'}: "
           f"{len(failed)} of {len(attempts)} checkouts got a dead connection")


def test_server_stopped_then_started(server: OwnServer, figure: Figure) -> None:
    pool = ConnectionPool(0, 2, timeout=0.5, dsn=server.uri, connect_timeout=2,
                          check_idle_after=0)
    try:
        held = pool.getconn()
        server.stop()
        try:
            started = monotonic()
            with pytest.raises(psycopg2.OperationalError) as refused:
                pool.getconn()  # a slot is free: opening fails, clearly and at once
            assert not isinstance(refused.value, PoolExhausted)
            assert "connection" in str(refused.value).lower()
            refused_in = monotonic() - started
            assert pool.get_stats()["pool_size"] == 1  # the failed open gave its slot back
            second = threading.Event()
            results: list[object] = []

            def hold_slot() -> None:
                try:
                    results.append(pool.getconn(timeout=0.2))
                except psycopg2.Error as exc:
                    results.append(exc)
                second.set()

            threading.Thread(target=hold_slot).start()
            second.wait(5)
            assert isinstance(results[0], psycopg2.OperationalError)
            pool.putconn(held)  # its session is gone, which only I/O would tell: kept idle
            assert pool.get_stats()["pool_size"] == 1
        finally:
            server.start()
        started = monotonic()
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")  # the dead idle one failed its check; a new one serves
        recovered_in = monotonic() - started
        assert recovered_in < 1.0
        stats = pool.get_stats()
        assert stats["discarded_failed_check"] == 1 and stats["pool_size"] == 1
    finally:
        pool.close()
    figure(f"server stopped: getconn refused in {refused_in * 1000:.0f} ms with "
           f"OperationalError, no slot kept; first checkout after start "
           f"{recovered_in * 1000:.0f} ms")


def test_waiters_honour_their_timeout_while_the_server_is_down(server: OwnServer,
                                                               figure: Figure) -> None:
    pool = ConnectionPool(1, 1, dsn=server.uri, connect_timeout=2)
    held = pool.getconn()
    server.stop()
    try:
        waited: list[float] = []

        def waiter() -> None:
            started = monotonic()
            with pytest.raises(PoolExhausted):
                pool.getconn(timeout=0.3)
            waited.append(monotonic() - started)

        run_threads(waiter, 4, 5)
        assert len(waited) == 4 and all(0.29 <= w < 0.8 for w in waited), waited
        pool.putconn(held)
        assert pool.get_stats()["pool_in_use"] == 0
    finally:
        server.start()
        pool.close()
    figure(f"server down, pool full: 4 waiters with timeout=0.3 s raised PoolExhausted after "
           f"{min(waited):.2f}-{max(waited):.2f} s")


def test_max_connections_reached(server: OwnServer, figure: Figure) -> None:
    admin = server.admin()
    with admin.cursor() as cur:
        cur.execute("ALTER SYSTEM SET max_connections = 6")
    admin.close()
    server.restart()
    pool = ConnectionPool(0, 20, dsn=server.uri, connect_timeout=2)
    try:
        held = []
        with pytest.raises(psycopg2.OperationalError) as refused:
            for _ in range(20):
                held.append(pool.getconn())
        assert "too many clients" in str(refused.value) or "remaining connection slots" in str(
            refused.value)
        stats = pool.get_stats()
        assert stats["pool_size"] == len(held) == stats["pool_in_use"]  # no slot leaked
        pool.putconn(held.pop())
        again = pool.getconn()  # the returned one is reused: no new session needed
        held.append(again)
        for conn in held:
            pool.putconn(conn)
        assert pool.get_stats()["pool_in_use"] == 0
    finally:
        pool.close()
        admin = server.admin()
        with admin.cursor() as cur:
            cur.execute("ALTER SYSTEM RESET max_connections")
        admin.close()
        server.restart()
    figure(f"max_connections=6 reached after {len(held)} pool connections: "
           f"OperationalError ({str(refused.value).split('FATAL:')[-1].strip()}), "
           f"no slot kept, returned connections reused")


def test_backends_terminated_idle_and_in_use(server: OwnServer) -> None:
    pool = ConnectionPool(0, 2, dsn=server.uri, check_idle_after=0)
    try:
        in_use = pool.getconn()
        pool.putconn(pool.getconn())  # one idle, one in use
        admin = server.admin()
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
        admin.close()
        with pytest.raises(psycopg2.OperationalError), in_use.cursor() as cur:
            cur.execute("SELECT 1")
        pool.putconn(in_use)  # broken: discarded, not pooled
        with pool.connection() as conn, conn.cursor() as cur:  # idle one failed its check
            cur.execute("SELECT 1")
        stats = pool.get_stats()
        assert stats["discarded_broken"] == 1
        # dead connections went as failed_check (idle at the restart) or broken (in flight);
        # which depends on where the 8 threads were when the server went away
        assert stats["discarded_failed_check"] + stats["discarded_broken"] >= 1
        assert stats["pool_in_use"] == 0
    finally:
        pool.close()


# -- a hung network path -----------------------------------------------------------------------

def test_connect_through_a_hung_path_is_bounded(proxy: Proxy, figure: Figure) -> None:
    proxy.hang()
    pool = ConnectionPool(0, 1, dsn=proxy.dsn(connect_timeout=2))
    try:
        results: dict[str, float] = {}

        def opener() -> None:
            started = monotonic()
            with pytest.raises(psycopg2.OperationalError):
                pool.getconn()
            results["opener"] = monotonic() - started

        thread = threading.Thread(target=opener)
        thread.start()
        time.sleep(0.2)
        started = monotonic()
        # not held up by the opener (no lock across I/O); the one slot is the opener's, whose
        # attempt the server has not answered: the server is unavailable, not the pool full
        with pytest.raises(ServerUnavailable, match="has not answered"):
            pool.getconn(timeout=0.3)
        results["waiter"] = monotonic() - started
        thread.join(10)
        assert 1.5 <= results["opener"] < 4.0, results
        assert results["waiter"] < 0.8, results
        assert pool.get_stats()["pool_size"] == 0
    finally:
        pool.close()
    figure(f"hung path, connect_timeout=2: opening failed after {results['opener']:.2f} s; a "
           f"waiter with timeout=0.3 s raised after {results['waiter']:.2f} s")


@pytest.mark.slow  # default suite under 3 minutes: .ci/run's slow set runs it
def test_health_check_over_a_hung_path_is_bounded(proxy: Proxy, figure: Figure) -> None:
    pool = ConnectionPool(0, 1, dsn=proxy.dsn(connect_timeout=2), check_idle_after=0,
                          io_timeout=1)
    try:
        pool.putconn(pool.getconn())
        proxy.hang()
        started = monotonic()
        with pytest.raises(psycopg2.OperationalError):  # check cut at 1 s, reconnect at 2 s
            pool.getconn()
        elapsed = monotonic() - started
        stats = pool.get_stats()
        assert stats["discarded_failed_check"] == 1
        assert stats["pool_size"] == 0
        assert 2.5 <= elapsed < 5.0
        proxy.resume()
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        pool.close()
    figure(f"hung path: a checkout whose health check hung gave up after {elapsed:.2f} s "
           f"(io_timeout=1 s, then connect_timeout=2 s)")


def test_rollback_on_return_over_a_hung_path_is_bounded(proxy: Proxy, figure: Figure) -> None:
    pool = ConnectionPool(0, 1, dsn=proxy.dsn(connect_timeout=2), io_timeout=1)
    try:
        conn = pool.getconn()
        with conn.cursor() as cur:
            cur.execute("SELECT 1")  # a transaction is open: putconn must roll back
        proxy.hang()
        started = monotonic()
        pool.putconn(conn)
        elapsed = monotonic() - started
        assert 0.9 <= elapsed < 2.0
        stats = pool.get_stats()
        assert stats["discarded_broken"] == 1 and stats["pool_size"] == 0
        started = monotonic()
        pool.close()
        closed_in = monotonic() - started
        assert closed_in < 1.0
    finally:
        pool.close()
    figure(f"hung path: putconn's rollback was cut after {elapsed:.2f} s (io_timeout=1 s) "
           f"and the connection discarded; close() took {closed_in * 1000:.0f} ms")


def test_close_with_connections_over_a_hung_path(proxy: Proxy) -> None:
    pool = ConnectionPool(3, 3, dsn=proxy.dsn(connect_timeout=2))
    proxy.hang()
    started = monotonic()
    pool.close()
    assert monotonic() - started < 1.0
    assert pool.get_stats()["pool_size"] == 0


# -- long stress with faults -------------------------------------------------------------------

class Boom(Exception):
    pass


@pytest.mark.slow  # a stress run
def test_64_threads_with_random_exceptions_and_server_kills(server: OwnServer,
                                                            figure: Figure) -> None:
    """Invariants checked all along: no connection out twice, in use + idle <= maxconn;
    at the end every connection is back and the server has exactly the pool's sessions."""
    maxconn, seconds = 8, 4.0
    app = f"stress-{random.randrange(10**9)}"
    pool = ConnectionPool(2, maxconn, timeout=10, dsn=server.uri, application_name=app,
                          check_idle_after=0.05)
    holders: dict[int, int] = {}
    violations: list[str] = []
    counts = {"ok": 0, "boom": 0, "db_error": 0, "kills": 0, "samples": 0}
    stop = threading.Event()

    def worker(me: int) -> None:
        rng = random.Random(me)
        while not stop.is_set():
            try:
                with pool.connection() as conn:
                    other = holders.setdefault(id(conn), me)
                    if other != me:
                        violations.append(f"connection out to threads {other} and {me}")
                    try:
                        with conn.cursor() as cur:
                            cur.execute("SELECT pg_sleep(%s)", (rng.random() / 500,))
                        if rng.random() < 0.2:
                            raise Boom()
                    finally:
                        holders.pop(id(conn), None)
                counts["ok"] += 1
            except Boom:
                counts["boom"] += 1
            except psycopg2.Error:
                counts["db_error"] += 1  # its backend was killed under it

    def checker() -> None:
        while not stop.is_set():
            stats = pool.get_stats()
            if stats["pool_in_use"] + stats["pool_available"] > maxconn or \
                    stats["pool_size"] > maxconn:
                violations.append(f"over the limit: {stats}")
            counts["samples"] += 1
            time.sleep(0.005)

    def killer() -> None:
        admin = server.admin()
        rng = random.Random(0)
        with admin.cursor() as cur:
            while not stop.wait(0.1):
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = %s ORDER BY random() LIMIT %s",
                            (app, rng.randint(1, 2)))
                counts["kills"] += sum(1 for (ok,) in cur.fetchall() if ok)
        admin.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
    threads += [threading.Thread(target=checker), threading.Thread(target=killer)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(20)
    try:
        assert not any(t.is_alive() for t in threads)
        assert violations == []
        stats = pool.get_stats()
        assert stats["pool_in_use"] == 0 and stats["requests_waiting"] == 0
        assert stats["requests"] == stats["returns"]  # every checkout came back
        assert counts["ok"] > 500 and counts["boom"] > 50 and counts["kills"] > 5, counts
        admin = server.admin()
        deadline = monotonic() + 5
        while True:
            with admin.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                            (app,))
                sessions = cur.fetchone()[0]
            if sessions == pool.get_stats()["pool_size"] or monotonic() > deadline:
                break
            time.sleep(0.05)
        admin.close()
        assert sessions == pool.get_stats()["pool_size"]
    finally:
        pool.close()
    figure(f"stress: 64 threads, maxconn=8, {seconds:g} s: {counts['ok']} transactions, "
           f"{counts['boom']} raised inside the block, {counts['kills']} backends killed, "
           f"{counts['db_error']} queries failed on a killed backend, "
           f"{counts['samples']} invariant samples, 0 violations; "
           f"{stats['connections_discarded']} connections discarded")


def test_metrics_show_a_restart(server: OwnServer, otel: Otel) -> None:
    """After a restart the usage gauges return to the truth and discards are attributed."""
    from telemetry import instrument

    pool = ConnectionPool(4, 4, dsn=server.uri, check_idle_after=0, name="restarted")
    instrument(pool, meter_provider=otel.meter_provider, leak_threshold=None)
    try:
        server.restart()
        for _ in range(4):
            with pool.connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
        metrics = otel.metrics()
        discards = metrics["psycopg2_pool.connection.discards"]
        failed = point(discards, {"psycopg2_pool.discard.reason": "failed_check"})
        assert failed.value >= 1
        count = metrics["db.client.connection.count"]
        idle = point(count, {"db.client.connection.state": "idle"}).value
        used = point(count, {"db.client.connection.state": "used"}).value
        assert used == 0 and idle == pool.get_stats()["pool_available"]
    finally:
        pool.close()


# -- a pre-fork server ----------------------------------------------------------------------

def test_pre_fork_server_pattern(dsn: str, admin: Any, app_name: str, figure: Figure) -> None:
    """As gunicorn with --preload: the parent opens and warms the pool, forks workers that
    each serve requests from threads, and keeps using its own connections meanwhile."""
    import os

    pool = ConnectionPool(2, 4, timeout=5, dsn=dsn, application_name=app_name)
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        parent_pid_before = cur.fetchone()[0]
    children = []
    for worker in range(3):
        pid = os.fork()
        if pid == 0:  # a worker: threads serving requests, then exit without cleanup
            code = 1
            try:
                served: list[int] = []

                def serve(worker: int = worker, served: list[int] = served) -> None:
                    for _ in range(20):
                        with pool.connection() as c, c.cursor() as k:
                            k.execute("SELECT %s", (worker,))
                            served.append(k.fetchone()[0])

                threads = [threading.Thread(target=serve) for _ in range(4)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(20)
                code = 0 if served == [worker] * 80 else 2
            finally:
                os._exit(code)
        children.append(pid)
    for _ in range(50):  # the parent serves too, meanwhile
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            assert cur.fetchone()[0] > 0
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    assert codes == [0, 0, 0]
    with pool.connection() as conn, conn.cursor() as cur:  # the parent's sessions survived
        cur.execute("SELECT pg_backend_pid()")
        assert cur.fetchone()[0] == parent_pid_before
    size = pool.get_stats()["pool_size"]
    assert settled_backend_count(admin, app_name, size) == size  # the workers' sessions ended
    pool.close()
    figure(f"pre-fork: 3 forked workers x 4 threads x 20 requests all served; the parent's "
           f"sessions untouched; {size} server sessions left, the parent's")
