"""Riding out outages: callers wait while the pool reconnects in the background, fail on time
with ServerUnavailable when the outage outlasts their timeout, never hang on a path that does
not answer; upkeep (refill, idle pruning, lifetime) runs on the shared scheduler, off the
callers' threads; psycopg_pool's names (max_waiting, configure, reset, wait, resize).

Every case runs against a real PostgreSQL: the module's own (``faults.OwnServer``), stopped
and started for real, or a loopback proxy that stops answering. Figures go to the session's
summary and to docs/reliability.md ("Outages").
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic
from typing import Any

import psycopg2
import psycopg2.pool
import pytest

import psycopg2_pool
from psycopg2_pool import (
    ConnectionPool,
    DiscardEvent,
    PoolError,
    PoolExhausted,
    ServerUnavailable,
    TooManyRequests,
)
from psycopg2_pool.scheduler import SCHEDULER
from tests.support.errors import exception_texts
from tests.support.faults import OwnServer, Proxy
from tests.support.pools import backend_count, run_threads, settled_backend_count, wait_until

Figure = Callable[[str], None]
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-outage-secret"
UPKEEP_THREAD = "psycopg2_pool-upkeep"


@pytest.fixture
def running(server: OwnServer) -> Iterator[OwnServer]:
    """The module's server, started again after the test whatever happened."""
    yield server
    if not server_accepts(server):
        server.start()


def server_accepts(server: OwnServer) -> bool:
    try:
        psycopg2.connect(server.uri, connect_timeout=2).close()
    except psycopg2.OperationalError:
        return False
    return True


def with_password(uri: str) -> str:
    """The server's URI with a password (the server trusts any: libpq sends it all the same)."""
    return f"{uri}{'&' if '?' in uri else '?'}password={PASSWORD}"


# -- 1. an outage shorter than the timeout -------------------------------------------------------

@dataclass
class Cycles:
    """What 8 threads looping getconn/SELECT/putconn saw."""

    getconn_failures: list[tuple[float, str]] = field(default_factory=list)
    query_failures: list[tuple[float, str]] = field(default_factory=list)
    successes: list[tuple[float, float]] = field(default_factory=list)  # (checked out, done)
    waits: list[float] = field(default_factory=list)


def loop(pool: ConnectionPool, threads: int, stop: threading.Event, timeout: float) -> Cycles:
    seen = Cycles()

    def worker() -> None:
        while not stop.is_set():
            started = monotonic()
            try:
                conn = pool.getconn(timeout=timeout)
            except psycopg2.Error as exc:
                seen.getconn_failures.append((monotonic(), f"{type(exc).__name__}: {exc}"))
                continue
            got = monotonic()
            seen.waits.append(got - started)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    cur.fetchone()
                seen.successes.append((got, monotonic()))
            except psycopg2.Error as exc:
                seen.query_failures.append((monotonic(), type(exc).__name__))
            finally:
                pool.putconn(conn)
            time.sleep(0.001)

    workers = run_threads(worker, threads, 15, until=stop)
    assert not any(t.is_alive() for t in workers), "a worker hung"
    return seen


def test_outage_shorter_than_timeout_costs_no_getconn_failure(running: OwnServer,
                                                              figure: Figure) -> None:
    server = running
    pool = ConnectionPool(8, 8, timeout=5, dsn=server.uri)
    stop = threading.Event()
    result: list[Cycles] = []
    runner = threading.Thread(target=lambda: result.append(loop(pool, 8, stop, 5)))
    try:
        runner.start()
        time.sleep(0.5)
        stopped = monotonic()
        server.stop()
        time.sleep(1.5)
        began, accepted, returned = server.start_timed()
        time.sleep(1.0)
        stop.set()
        runner.join(20)
        stats = pool.get_stats()
    finally:
        stop.set()
        pool.close()
    seen = result[0]
    assert seen.getconn_failures == [], seen.getconn_failures[:3]
    assert len(seen.query_failures) <= 8, seen.query_failures  # in flight (or idle) at the stop
    assert all(t >= stopped for t, _ in seen.query_failures)
    after = [got for got, _ in seen.successes if got >= began]
    assert after, "no checkout succeeded after the server was started"
    first = min(after)
    recovery = first - accepted
    assert recovery <= 0.6, (  # backoff cap 0.5 s, plus a connect
        f"first checkout {recovery:.3f} s after the server accepted again")
    late = [t for t, _ in seen.query_failures if t >= returned]
    assert late == []
    assert stats["outages"] == 1
    figure(f"outage 1.5 s (stop/start) under 8 threads, getconn(timeout=5): "
           f"{len(seen.getconn_failures)} getconn failures, {len(seen.query_failures)} failed "
           f"queries (in flight at the stop), first checkout {recovery * 1000:.0f} ms after "
           f"the server accepted again ({(first - returned) * 1000:.0f} ms after pg_ctl "
           f"start returned); longest wait {max(seen.waits):.2f} s; "
           f"{stats['connections_errors']} failed attempts; {len(seen.successes)} cycles")


# -- 2. an outage longer than the timeout --------------------------------------------------------

@pytest.mark.slow  # default suite under 3 minutes: .ci/run's slow set runs it
def test_outage_longer_than_timeout_fails_on_time_with_server_unavailable(
        running: OwnServer, figure: Figure) -> None:
    server = running
    server.stop()
    pool = ConnectionPool(0, 8, dsn=with_password(server.uri))
    failures: list[tuple[float, BaseException | None]] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(3):
            started = monotonic()
            error: BaseException | None = None
            try:
                pool.putconn(pool.getconn(timeout=1))
            except Exception as exc:  # noqa: BLE001 - the class is what is tested
                error = exc
            with lock:
                failures.append((monotonic() - started, error))

    try:
        began = monotonic()
        run_threads(caller, 8, 15)
        elapsed = monotonic() - began
        stats = pool.get_stats()

        started = monotonic()
        with pytest.raises(psycopg2.OperationalError) as at_once:
            pool.getconn(timeout=0)
        at_once_in = monotonic() - started
    finally:
        pool.close()
    assert len(failures) == 24
    errors = [e for _, e in failures]
    assert all(isinstance(e, ServerUnavailable) for e in errors), {type(e) for e in errors}
    durations = sorted(d for d, _ in failures)
    assert durations[0] >= 1.0 and durations[-1] <= 1.6, durations
    error = errors[0]
    assert isinstance(error, psycopg2.OperationalError)
    assert not isinstance(error, (psycopg2.pool.PoolError, PoolExhausted))
    message = str(error)
    assert "could not connect to the server" in message
    libpq = error.__cause__
    assert isinstance(libpq, psycopg2.OperationalError)
    assert not isinstance(libpq, ServerUnavailable)
    assert " ".join(str(libpq).split()) in message  # libpq's last message, on one line
    for e in errors:
        for text in exception_texts(e):
            assert PASSWORD not in text
    assert stats["connections_errors"] <= 30, stats
    # timeout=0: psycopg2's own error at once, as psycopg2-pool 1.2
    assert type(at_once.value) is psycopg2.OperationalError
    assert at_once_in < 0.5
    assert PASSWORD not in "".join(exception_texts(at_once.value))
    figure(f"outage longer than timeout: 8 threads x 3 getconn(timeout=1): 24 "
           f"ServerUnavailable in {durations[0]:.2f}-{durations[-1]:.2f} s each; "
           f"{stats['connections_errors']} failed attempts over {elapsed:.1f} s; "
           f"getconn(timeout=0) raised psycopg2's OperationalError in "
           f"{at_once_in * 1000:.1f} ms")


# -- 3. nothing hangs past the timeout -----------------------------------------------------------

def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the other end closed: reads reach EOF after what it sent (a startup packet)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_hung_path_without_connect_timeout_fails_on_time(proxy: Proxy, figure: Figure,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """No connect_timeout anywhere: the pool's default (10 s) applies, and the caller's own
    timeout is honoured regardless. Four pools at once: the background attempt starts a few
    ms after the caller begins to wait, and each must still be told the server has not
    answered (not that the pool is exhausted)."""
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    proxy.hang()
    pools = [ConnectionPool(0, 1, dsn=proxy.dsn()) for _ in range(4)]
    outcomes: list[tuple[float, BaseException | None]] = []

    def call(pool: ConnectionPool) -> None:
        started = monotonic()
        error: BaseException | None = None
        try:
            pool.putconn(pool.getconn(timeout=1))
        except Exception as exc:  # noqa: BLE001 - the class is what is tested
            error = exc
        outcomes.append((monotonic() - started, error))

    threads = [threading.Thread(target=call, args=(pool,)) for pool in pools]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        for pool in pools:
            pool.close()
    assert len(outcomes) == 4
    elapsed = max(d for d, _ in outcomes)
    assert elapsed <= 2.0
    kinds = sorted(type(e).__name__ for _, e in outcomes)
    figure(f"hung path, no connect_timeout given, 4 pools: getconn(timeout=1) raised {kinds} "
           f"after at most {elapsed:.2f} s")
    errors = [e for _, e in outcomes]
    assert all(isinstance(e, ServerUnavailable) for e in errors), [str(e) for e in errors]
    for error in errors:
        assert "has not answered" in str(error)
        assert "connect_timeout=10 s" in str(error)


def test_a_hung_pool_runs_num_workers_attempts_and_starves_no_other_pool(
        proxy: Proxy, running: OwnServer, figure: Figure) -> None:
    """Eight callers of a pool whose server does not answer: the pool runs num_workers
    background attempts, not eight, and another pool of the process still opens its
    connections in the background at once (the scheduler keeps workers for every pool)."""
    proxy.hang()
    hung = ConnectionPool(0, 20, dsn=proxy.dsn(connect_timeout=2), num_workers=2)
    healthy = ConnectionPool(0, 4, dsn=running.uri)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            hung.getconn(timeout=1)
        except ServerUnavailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        assert wait_until(lambda: hung.get_stats()["requests_waiting"] == 8)
        time.sleep(0.2)
        attempts = len(proxy._held)  # connections the proxy accepted and never answered
        started = monotonic()
        conns = [healthy.getconn(timeout=1) for _ in range(4)]  # opened in the background
        healthy_s = monotonic() - started
        for conn in conns:
            healthy.putconn(conn)
        for thread in threads:
            thread.join(5)
    finally:
        hung.close()
        healthy.close()
    assert attempts == 2, attempts
    assert len(errors) == 8
    assert healthy_s < 0.5, healthy_s
    figure(f"hung server, 8 waiters, num_workers=2: {attempts} attempts under way at once; "
           f"another pool opened 4 connections in {healthy_s * 1000:.0f} ms meanwhile")


@pytest.mark.parametrize("where", [pytest.param("kwargs", marks=pytest.mark.slow), "dsn",
                                   pytest.param("PGCONNECT_TIMEOUT", marks=pytest.mark.slow)])
def test_hung_path_leaks_no_slot_nor_socket(proxy: Proxy, figure: Figure,
                                            monkeypatch: pytest.MonkeyPatch,
                                            where: str) -> None:
    kwargs: dict[str, Any] = {"dsn": proxy.dsn()}
    if where == "kwargs":
        kwargs["connect_timeout"] = 2
    elif where == "dsn":
        kwargs["dsn"] = proxy.dsn(connect_timeout=2)
    else:
        monkeypatch.setenv("PGCONNECT_TIMEOUT", "2")
    fds = open_fds()
    proxy.hang()
    pool = ConnectionPool(0, 1, **kwargs)
    try:
        started = monotonic()
        with pytest.raises(ServerUnavailable) as hung:
            pool.getconn(timeout=1)
        elapsed = monotonic() - started
        message = str(hung.value)
        assert "has not answered" in message
        assert elapsed <= 2.0
        assert wait_until(lambda: pool.get_stats()["pool_opening"] == 0, timeout=4)
        given_back = monotonic() - started
        stats = pool.get_stats()
        assert stats["pool_size"] == 0 and stats["pool_opening"] == 0, stats
        assert 1.5 <= given_back <= 3.5  # the background attempt ended at connect_timeout
        held = list(proxy._held)
        assert held, "the proxy saw no connection"
        assert all(closed_by_peer(sock) for sock in held)  # the client closed its socket
        for sock in held:  # the proxy's own ends: then the process has the fds it had
            sock.close()
        proxy._held.clear()
        assert open_fds() == fds
    finally:
        pool.close()
    assert "connect_timeout=2 s" in message, message  # the bound that applied, wherever set
    figure(f"hung path, connect_timeout=2 ({where}): ServerUnavailable after {elapsed:.2f} s; "
           f"the background attempt gave its slot back after {given_back:.2f} s; no socket left")


# -- 4. upkeep off the callers' threads -----------------------------------------------------------

OPENED_ON: list[str] = []  # thread names that opened a SlowConnection


class SlowConnection(psycopg2.extensions.connection):
    """A connection that takes 0.3 s to open, and notes which thread opened it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        OPENED_ON.append(threading.current_thread().name)
        time.sleep(0.3)
        super().__init__(*args, **kwargs)


def test_returning_closed_connections_never_opens_on_the_callers_thread(
        server: OwnServer, figure: Figure) -> None:
    OPENED_ON.clear()
    pool = ConnectionPool(2, 4, dsn=server.uri, connection_factory=SlowConnection, timeout=5)
    try:
        conns = [pool.getconn(), pool.getconn()]
        assert len(OPENED_ON) == 2  # by __init__, on this thread
        for conn in conns:
            conn.close()
        started = monotonic()
        for conn in conns:
            pool.putconn(conn)
        took = monotonic() - started
        assert took < 0.05, f"returning two closed connections took {took:.3f} s"
        assert pool.get_stats()["discarded_closed_by_user"] == 2
        assert wait_until(lambda: pool.get_stats()["pool_available"] == 2, timeout=3)
        refilled = monotonic() - started
        assert OPENED_ON[2:] and all(n.startswith(UPKEEP_THREAD) for n in OPENED_ON[2:]), OPENED_ON
    finally:
        pool.close()
    figure(f"upkeep: putconn of 2 closed connections took {took * 1000:.1f} ms with a 0.3 s "
           f"connect; minconn=2 restored in the background {refilled:.2f} s later")


@pytest.mark.slow  # default suite under 3 minutes: .ci/run's slow set runs it
def test_idle_connections_are_closed_without_any_call(server: OwnServer, app_name: str,
                                                      figure: Figure) -> None:
    pool = ConnectionPool(1, 4, idle_timeout=1, dsn=server.uri, application_name=app_name)
    admin = server.admin()
    try:
        conns = [pool.getconn() for _ in range(4)]
        assert backend_count(admin, app_name) == 4
        for conn in conns:
            pool.putconn(conn)
        returned = monotonic()
        left = settled_backend_count(admin, app_name, 1, timeout=4)
        settled = monotonic() - returned
        assert left == 1, f"{left} sessions 4 s after the last return (idle_timeout=1, minconn=1)"
        time.sleep(max(0.0, 4 - (monotonic() - returned)))
        assert backend_count(admin, app_name) == 1  # 4 s after: still minconn, not fewer
        stats = pool.get_stats()
        assert stats["discarded_idle_timeout"] >= 3
        assert stats["pool_size"] == 1
    finally:
        pool.close()
        admin.close()
    figure(f"upkeep: idle_timeout=1, minconn=1, no call: 4 sessions went down to 1 in "
           f"{settled:.2f} s after the last return")


def session_pids(admin: Any, app_name: str) -> set[int]:
    with admin.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app_name,))
        return {row[0] for row in cur.fetchall()}


def test_max_lifetime_replaces_idle_connections_in_the_background(
        server: OwnServer, app_name: str, figure: Figure) -> None:
    pool = ConnectionPool(2, 2, max_lifetime=1, dsn=server.uri, application_name=app_name)
    admin = server.admin()
    try:
        first = session_pids(admin, app_name)
        assert len(first) == 2
        started = monotonic()
        replaced = wait_until(lambda: (len(now := session_pids(admin, app_name)) == 2
                                       and not now & first), timeout=4)
        took = monotonic() - started
        assert replaced, f"sessions {session_pids(admin, app_name)} (first {first})"
        stats = pool.get_stats()
        assert stats["discarded_max_lifetime"] >= 2 and stats["pool_size"] == 2
        assert stats["requests"] == 0  # nobody called getconn
    finally:
        pool.close()
        admin.close()
    figure(f"upkeep: max_lifetime=1, no call: both idle sessions replaced after {took:.2f} s")


def test_reconnect_after_an_outage_happens_without_any_call(running: OwnServer,
                                                            figure: Figure) -> None:
    server = running
    OPENED_ON.clear()
    pool = ConnectionPool(2, 2, dsn=server.uri, connection_factory=SlowConnection)
    try:
        conns = [pool.getconn(), pool.getconn()]
        server.stop()
        for conn in conns:
            conn.close()
            pool.putconn(conn)
        assert wait_until(lambda: pool.get_stats()["connections_errors"] >= 2, timeout=3)
        _, accepted, _ = server.start_timed()
        assert wait_until(lambda: pool.get_stats()["pool_available"] == 2, timeout=3)
        back = monotonic() - accepted
        stats = pool.get_stats()
        assert stats["requests"] == 2 and stats["outages"] == 1
        assert all(n.startswith(UPKEEP_THREAD) for n in OPENED_ON[2:]), OPENED_ON
    finally:
        pool.close()
    figure(f"upkeep: after an outage with no caller, minconn=2 was open again "
           f"{back:.2f} s after the server accepted (0.3 s connects; "
           f"{stats['connections_errors']} failed attempts)")


SCHEDULER_EXIT = """
import threading, time
from psycopg2_pool import ConnectionPool
from psycopg2_pool.scheduler import SCHEDULER

def upkeep():
    return [t for t in threading.enumerate() if t.name.startswith("psycopg2_pool-upkeep")]

pools = [ConnectionPool(1, 3, idle_timeout=5, max_lifetime=60, dsn=DSN) for _ in range(2)]
for pool in pools:
    conn = pool.getconn()
    conn.close()
    pool.putconn(conn)  # a background refill: a worker starts
deadline = time.monotonic() + 5
while any(p.get_stats()["pool_available"] < 1 for p in pools) and time.monotonic() < deadline:
    time.sleep(0.01)
assert upkeep(), "no upkeep thread while pools are alive"
assert SCHEDULER.pending(), "no periodic task while pools are alive"
pools[0].close()
assert SCHEDULER.pending(), "the other pool's tasks went with the first"
pools[1].close()
assert SCHEDULER.pending() == [], SCHEDULER.pending()
closed = time.monotonic()
while upkeep() and time.monotonic() - closed < 5:
    time.sleep(0.01)
assert not upkeep(), [t.name for t in upkeep()]
print(f"EXIT {time.monotonic() - closed:.3f}")
"""


def test_scheduler_threads_exit_when_the_last_pool_closes(server: OwnServer,
                                                          figure: Figure) -> None:
    script = f"DSN = {server.uri!r}\n" + textwrap.dedent(SCHEDULER_EXIT)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("EXIT ")]
    took = float(line.split()[1])
    assert took < 1.0  # they leave at once, not after IDLE_EXIT
    figure(f"upkeep: the scheduler's threads exited {took * 1000:.0f} ms after the last pool "
           f"closed; nothing left pending")


def test_scheduler_holds_no_task_of_a_closed_pool(server: OwnServer) -> None:
    """In-process (other pools of the session may be alive): no scheduled task refers to a
    closed pool. The subprocess test above checks ``SCHEDULER.pending() == []``."""
    def tasks_of(pool: ConnectionPool) -> list[str]:
        return [task.name for _, _, task in list(SCHEDULER._heap) if task.pool_ref() is pool]

    pool = ConnectionPool(1, 2, idle_timeout=5, max_lifetime=60, dsn=server.uri)
    assert sorted(tasks_of(pool)) == ["prune_idle", "retire_expired"]
    pool.close()
    assert tasks_of(pool) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_refills_in_the_background(server: OwnServer, app_name: str) -> None:
    pool = ConnectionPool(2, 4, dsn=server.uri, application_name=app_name)
    reader, writer = os.pipe()
    try:
        pool.putconn(pool.getconn())
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, never return into pytest
            lines = []
            try:
                # the inherited connections were discarded; minconn comes back on its own
                lines.append(f"minconn-without-calls "
                             f"{wait_until(lambda: pool.get_stats()['pool_available'] == 2, 3)}")
                conns = [pool.getconn(timeout=3), pool.getconn(timeout=3)]
                for conn in conns:
                    conn.close()
                started = monotonic()
                for conn in conns:
                    pool.putconn(conn)
                lines.append(f"putconn-s {monotonic() - started:.4f}")
                lines.append(f"refilled "
                             f"{wait_until(lambda: pool.get_stats()['pool_available'] == 2, 3)}")
                names = {t.name for t in threading.enumerate()}
                lines.append(f"upkeep-thread {any(n.startswith(UPKEEP_THREAD) for n in names)}")
                with pool.connection(timeout=3) as conn, conn.cursor() as cur:
                    cur.execute("SELECT 1")
                lines.append("query ok")
            except BaseException:  # noqa: BLE001 - reported through the pipe
                lines.append("error " + traceback.format_exc().replace("\n", " | "))
            finally:
                os.write(writer, ("\n".join(lines) + "\n").encode())
                os._exit(0)
        os.close(writer)
        writer = -1
        _, status = os.waitpid(pid, 0)
        report = os.read(reader, 65536).decode()
        assert os.waitstatus_to_exitcode(status) == 0, report
        # the parent's pool is untouched by the child
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        os.close(reader)
        if writer >= 0:
            os.close(writer)
        pool.close()
    assert "error" not in report, report
    assert "refilled True" in report and "upkeep-thread True" in report, report
    putconn_s = float(report.split("putconn-s ")[1].split()[0])
    assert putconn_s < 0.05, report
    assert "minconn-without-calls True" in report, report


# -- 5. psycopg_pool's names ---------------------------------------------------------------------

def test_max_waiting_refuses_the_next_waiter_at_once(server: OwnServer) -> None:
    pool = ConnectionPool(1, 1, max_waiting=2, timeout=5, dsn=server.uri)
    held = pool.getconn()
    served: list[object] = []
    waiters = [threading.Thread(target=lambda: served.append(pool.putconn(pool.getconn())))
               for _ in range(2)]
    try:
        for thread in waiters:
            thread.start()
        assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 2)
        started = monotonic()
        with pytest.raises(TooManyRequests) as refused:
            pool.getconn()
        refused_in = monotonic() - started
        assert refused_in < 0.05
        assert isinstance(refused.value, PoolError)
        assert isinstance(refused.value, psycopg2.pool.PoolError)
        assert isinstance(refused.value, psycopg2.OperationalError)
        assert "max_waiting=2" in str(refused.value)
        assert pool.get_stats()["requests_refused"] == 1
    finally:
        pool.putconn(held)
        for thread in waiters:
            thread.join(10)
        pool.close()
    assert len(served) == 2  # the two that were let in were served


def test_configure_runs_on_each_new_connection_before_first_use(server: OwnServer,
                                                                app_name: str) -> None:
    configured: list[int] = []

    def configure(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SET application_name = %s", (app_name,))
        conn.commit()
        psycopg2.extras.register_uuid(conn_or_curs=conn)
        configured.append(id(conn))

    import psycopg2.extras

    pool = ConnectionPool(1, 3, dsn=server.uri, configure=configure, timeout=5)
    try:
        assert len(configured) == 1
        conns = [pool.getconn() for _ in range(3)]
        assert sorted(configured) == sorted(id(c) for c in conns)
        for conn in conns:
            with conn.cursor() as cur:
                cur.execute("SELECT current_setting('application_name'), "
                            "'4b0c2b4c-2a37-4e6c-9f4e-6e2f2d1e0c11'::uuid")
                name, value = cur.fetchone()
            assert name == app_name
            assert type(value).__name__ == "UUID"  # the type registered by configure
        for conn in conns:
            pool.putconn(conn)
        assert len(configured) == 3  # once per connection, not per checkout
        pool.putconn(pool.getconn())
        assert len(configured) == 3
    finally:
        pool.close()


class Boom(Exception):
    pass


def test_configure_that_raises_fails_the_attempt(server: OwnServer, app_name: str) -> None:
    def configure(conn: Any) -> None:
        raise Boom("configure failed")

    admin = server.admin()
    with pytest.raises(Boom):
        ConnectionPool(1, 2, dsn=server.uri, configure=configure, application_name=app_name)
    pool = ConnectionPool(0, 2, dsn=server.uri, configure=configure, application_name=app_name)
    try:
        with pytest.raises(Boom):
            pool.getconn(timeout=0)  # opened on this thread: the configure error itself
        with pytest.raises(ServerUnavailable) as waited:
            pool.getconn(timeout=0.5)  # opened in the background: waits, then says why
        assert isinstance(waited.value.__cause__, Boom)
        assert "configure failed" in str(waited.value)
        stats = pool.get_stats()
        assert stats["connections_errors"] >= 2 and stats["connections_num"] == 0
        assert stats["pool_size"] == 0 or wait_until(
            lambda: pool.get_stats()["pool_size"] == 0)
        assert settled_backend_count(admin, app_name, 0) == 0  # every attempt's session closed
    finally:
        pool.close()
        admin.close()


def test_reset_runs_on_each_kept_return_and_a_failing_one_discards(server: OwnServer) -> None:
    resets: list[int] = []
    fail = threading.Event()

    def reset(conn: Any) -> None:
        if fail.is_set():
            raise Boom("reset failed")
        with conn.cursor() as cur:
            cur.execute("RESET ALL")
        conn.commit()
        resets.append(id(conn))

    class Discards:
        def __init__(self) -> None:
            self.reasons: list[str] = []

        def on_discard(self, event: DiscardEvent) -> None:
            self.reasons.append(event.reason)

    discards = Discards()
    pool = ConnectionPool(1, 2, dsn=server.uri, reset=reset)
    pool.add_listener(discards)
    try:
        conn = pool.getconn()
        with conn.cursor() as cur:
            cur.execute("SET work_mem = '7MB'")
        conn.commit()
        pool.putconn(conn)
        assert resets == [id(conn)]
        again = pool.getconn()
        assert again is conn
        with conn.cursor() as cur:
            cur.execute("SHOW work_mem")
            assert cur.fetchone()[0] != "7MB"  # reset undid the session state
        pool.putconn(conn, close=True)  # not kept: no reset
        assert len(resets) == 1
        fail.set()
        conn = pool.getconn(timeout=5)
        pool.putconn(conn)
        assert conn.closed
        assert discards.reasons[-1] == "failed_reset"
        assert pool.get_stats()["discarded_failed_reset"] == 1
    finally:
        pool.close()


def test_wait_blocks_until_minconn_is_open(server: OwnServer) -> None:
    pool = ConnectionPool(0, 5, dsn=server.uri, connection_factory=SlowConnection)
    try:
        pool.wait(timeout=1)  # minconn=0: ready at once
        started = monotonic()
        pool.resize(minconn=3)
        assert monotonic() - started < 0.05  # resize opens in the background
        pool.wait(timeout=5)
        waited = monotonic() - started
        stats = pool.get_stats()
        assert stats["pool_available"] == 3 and stats["pool_opening"] == 0, stats
        assert 0.25 <= waited < 2.0
    finally:
        pool.close()


def test_wait_raises_server_unavailable_when_the_server_is_down(running: OwnServer) -> None:
    server = running
    server.stop()
    pool = ConnectionPool(0, 5, dsn=with_password(server.uri))
    try:
        pool.resize(minconn=2)
        started = monotonic()
        with pytest.raises(ServerUnavailable) as unavailable:
            pool.wait(timeout=1)
        waited = monotonic() - started
        assert 1.0 <= waited < 1.5
        assert "opened 0 of minconn=2" in str(unavailable.value)
        assert isinstance(unavailable.value.__cause__, psycopg2.OperationalError)
        assert PASSWORD not in "".join(exception_texts(unavailable.value))
        server.start()
        pool.wait(timeout=3)  # the pool kept trying
        assert pool.get_stats()["pool_available"] == 2
    finally:
        pool.close()


def test_resize_on_a_live_pool(server: OwnServer) -> None:
    pool = ConnectionPool(4, 4, dsn=server.uri)
    try:
        pool.resize(minconn=1, maxconn=2)  # two idle beyond maxconn: closed now
        stats = pool.get_stats()
        assert stats["discarded_resized"] == 2 and stats["pool_size"] == 2, stats
        conns = [pool.getconn(), pool.getconn()]
        with pytest.raises(PoolExhausted):
            pool.getconn(timeout=0)
        pool.resize(maxconn=1)  # both checked out: the first returned goes
        pool.putconn(conns[0])
        assert conns[0].closed and pool.get_stats()["discarded_resized"] == 3
        pool.putconn(conns[1])
        assert not conns[1].closed and pool.get_stats()["pool_size"] == 1
        pool.resize(minconn=3, maxconn=3)
        pool.wait(timeout=5)
        assert pool.get_stats()["pool_available"] == 3
    finally:
        pool.close()


# -- 6. a returned connection refuses cursor() ----------------------------------------------------

def test_cursor_on_a_returned_connection_is_refused(server: OwnServer) -> None:
    pool = ConnectionPool(1, 1, dsn=server.uri)
    try:
        conn = pool.getconn()
        pool.putconn(conn)
        with pytest.raises(PoolError, match="was returned to the pool"):
            conn.cursor()
        with pytest.raises(PoolError, match="was returned to the pool"):
            conn.cursor(name="named")
        again = pool.getconn()
        assert again is conn
        with again.cursor() as cur:  # checked out again: usable
            cur.execute("SELECT 1")
        pool.putconn(again)
    finally:
        pool.close()


# -- 7. logs during an outage -------------------------------------------------------------------

@pytest.mark.slow  # default suite under 3 minutes: .ci/run's slow set runs it
def test_an_outage_writes_few_log_events(running: OwnServer, figure: Figure,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """Written last: the telemetry's rate limiting is being implemented as this is written."""
    import structlog
    from structlog.testing import capture_logs

    from telemetry import instrument

    server = running
    pool = ConnectionPool(4, 4, timeout=5, dsn=server.uri, name="outage-logs")
    instrument(pool, leak_threshold=None)
    stop = threading.Event()
    result: list[Cycles] = []
    runner = threading.Thread(target=lambda: result.append(loop(pool, 4, stop, 5)))
    try:
        with capture_logs() as logs, caplog.at_level("DEBUG", logger="psycopg2_pool"):
            runner.start()
            time.sleep(0.3)
            server.stop()
            time.sleep(3.0)
            server.start_timed()
            time.sleep(0.5)
            stop.set()
            runner.join(20)
    finally:
        stop.set()
        pool.close()
        structlog.reset_defaults()
    seen = result[0]
    assert seen.getconn_failures == []
    kinds: dict[str, int] = {}
    for event in logs:
        kinds[event["event"]] = kinds.get(event["event"], 0) + 1
    stdlib = [r for r in caplog.records if r.name.startswith("psycopg2_pool")]
    figure(f"3 s outage, instrumented pool (4 threads): {len(logs)} structlog events "
           f"{kinds}; {len(stdlib)} stdlib log records from the pool")
    assert len(logs) <= 15, kinds


def test_module_exports() -> None:
    for name in ("ServerUnavailable", "TooManyRequests"):
        assert name in psycopg2_pool.__all__
    assert issubclass(ServerUnavailable, psycopg2.OperationalError)
    assert not issubclass(ServerUnavailable, psycopg2.pool.PoolError)
    assert issubclass(TooManyRequests, PoolError)
