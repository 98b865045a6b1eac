"""os.fork(): the child opens its own connections and never uses nor ends the parent's."""

from __future__ import annotations

import gc
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from psycopg2_pool import ConnectionPool, PoolError
from tests.support.pools import backend_count

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def server_pid(conn: Any) -> int:
    """The backend pid as the server reports it (a real round trip). Works on idle
    connections too: it bypasses the pooled class's refusal of cursor() after return."""
    with psycopg2.extensions.connection.cursor(conn) as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = int(cur.fetchone()[0])
    conn.rollback()
    return pid


@pytest.fixture
def pool(dsn: str, app_name: str) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(2, 6, dsn=dsn, application_name=app_name)
    yield pool
    pool.close()


def run_in_child(body: Any) -> int:
    """Fork; the child runs ``body()`` (an exit code) and leaves with os._exit."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 70
        try:
            code = body()
        except BaseException:  # noqa: BLE001 - reported through the exit code
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def check_one_out(pool: ConnectionPool) -> tuple[Any, list[Any], dict[int, int]]:
    """Before a fork: one connection checked out, every connection of the pool (that one and
    the idle ones), and their server-side pids by ``id()``."""
    out = pool.getconn()
    originals = [out, *pool.idle_connections]
    return out, originals, {id(c): server_pid(c) for c in originals}


def assert_parent_sessions_intact(conns: list[Any], pids: dict[int, int]) -> None:
    for conn in conns:
        assert not conn.closed
        assert server_pid(conn) == pids[id(conn)]  # the same session, still alive


def test_child_opens_new_connections_and_cannot_return_the_parents(
        pool: ConnectionPool, admin: Any, app_name: str) -> None:
    out = pool.getconn()
    idle = list(pool.idle_connections)
    assert len(idle) == 1
    originals = [out, *idle]
    pids = {id(c): server_pid(c) for c in originals}
    assert backend_count(admin, app_name) == 2

    def child() -> int:
        stats = pool.get_stats()
        if stats["pool_in_use"] != 0 or any(c in originals for c in pool.idle_connections):
            return 10  # inherited connections must be forgotten (new ones may be opening)
        if stats["discarded_fork"] != 2:
            return 11
        try:
            pool.putconn(out)
            return 12
        except PoolError as exc:
            if "before os.fork()" not in str(exc):
                return 13
        conn = pool.getconn()
        if conn in originals:
            return 14
        if conn.info.backend_pid in pids.values():
            return 15
        if server_pid(conn) != conn.info.backend_pid:
            return 16
        pool.putconn(conn)  # kept; the child's scheduler refills to minconn=2 in the background
        deadline = time.monotonic() + 5
        while len(pool.idle_connections) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        # 2, or 3 when the child's checkout opened one while both refills were under way
        if len(pool.idle_connections) not in (2, 3) or conn not in pool.idle_connections:
            return 17
        again = pool.getconn()
        if again in originals or server_pid(again) in pids.values():
            return 18
        pool.putconn(again)
        pool.close()
        gc.collect()
        return 0

    assert run_in_child(child) == 0
    assert_parent_sessions_intact(originals, pids)
    # the child's own sessions end (asynchronously, server side); ours stay
    deadline = time.monotonic() + 5
    while backend_count(admin, app_name) != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend_count(admin, app_name) == 2
    pool.putconn(out)  # the parent still owns it
    stats = pool.get_stats()
    assert stats["pool_in_use"] == 0
    assert stats["discarded_fork"] == 0  # counted in the child only
    assert pool.getconn() is out


def test_child_that_only_exits(pool: ConnectionPool) -> None:
    out, originals, pids = check_one_out(pool)
    assert run_in_child(lambda: 0) == 0
    assert_parent_sessions_intact(originals, pids)
    pool.putconn(out)


def test_child_with_a_connection_in_a_transaction(pool: ConnectionPool) -> None:
    """A parent connection inside a transaction at fork time keeps its transaction."""
    out = pool.getconn()
    with out.cursor() as cur:
        cur.execute("CREATE TEMP TABLE fork_tx (id int)")
        cur.execute("INSERT INTO fork_tx VALUES (1)")

    def child() -> int:
        conn = pool.getconn()
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('pg_temp.fork_tx') IS NULL")
            ok = cur.fetchone()[0]
        pool.putconn(conn)
        return 0 if ok else 20

    assert run_in_child(child) == 0
    with out.cursor() as cur:
        cur.execute("SELECT count(*) FROM fork_tx")
        assert cur.fetchone()[0] == 1
    pool.putconn(out)  # rolled back


CHILD_EXITS_NORMALLY = textwrap.dedent("""
    import gc, os, sys
    import psycopg2
    from psycopg2_pool import ConnectionPool, PoolError

    dsn, app = sys.argv[1], sys.argv[2]

    def pid_of(conn):  # psycopg2's cursor(): the pooled one refuses idle connections
        with psycopg2.extensions.connection.cursor(conn) as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        conn.rollback()
        return pid

    pool = ConnectionPool(2, 6, dsn=dsn, application_name=app)
    out = pool.getconn()
    idle = list(pool.idle_connections)
    originals = [out, *idle]
    pids = [pid_of(c) for c in originals]

    def fork(body):
        pid = os.fork()
        if pid == 0:
            body()
            sys.exit(0)  # a normal interpreter exit: atexit, finalizers, module teardown
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    def uses_the_pool():
        try:
            pool.putconn(out)
        except PoolError as exc:
            assert "fork" in str(exc), exc
        else:
            sys.exit(30)
        conn = pool.getconn()
        assert pid_of(conn) not in pids
        kept = pool.getconn()  # left checked out: closed by the child's finalizers
        assert kept is not conn
        pool.putconn(conn)

    def closes_the_pool():
        pool.getconn()
        pool.close()
        gc.collect()

    def drops_everything():
        global out, idle, originals
        del out, idle, originals
        gc.collect()

    for body in (uses_the_pool, closes_the_pool, drops_everything, lambda: None):
        code = fork(body)
        if code != 0:
            print(f"child {body.__name__} exited with {code}")
            sys.exit(1)
        for conn, pid in zip(originals, pids):
            assert not conn.closed, conn
            assert pid_of(conn) == pid, (pid_of(conn), pid)

    pool.putconn(out)
    pool.close()
    print("PARENT OK")
""")


def test_child_exiting_through_the_interpreter_never_ends_parent_sessions(
        dsn: str, admin: Any, app_name: str) -> None:
    """sys.exit in the child runs every finalizer; the parent's sessions must survive it."""
    result = subprocess.run([sys.executable, "-c", CHILD_EXITS_NORMALLY, dsn, app_name],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PARENT OK" in result.stdout


# -- multiprocessing with the fork start method --------------------------------------------

_shared: ConnectionPool | None = None


def _worker(_: int) -> tuple[int, int]:
    assert _shared is not None
    conn = _shared.getconn()
    try:
        return os.getpid(), server_pid(conn)
    finally:
        _shared.putconn(conn)


def _process_main(queue: Any) -> None:
    queue.put(_worker(0))


def test_multiprocessing_fork_process(pool: ConnectionPool) -> None:
    global _shared
    _shared = pool
    out, originals, pids = check_one_out(pool)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    processes = [ctx.Process(target=_process_main, args=(queue,)) for _ in range(2)]
    try:
        for process in processes:
            process.start()
        results = [queue.get(timeout=30) for _ in processes]
        for process in processes:
            process.join(30)
            assert process.exitcode == 0
    finally:
        _shared = None
    child_backends = {backend for _, backend in results}
    assert len(child_backends) == 2
    assert not child_backends & set(pids.values())
    assert_parent_sessions_intact(originals, pids)
    pool.putconn(out)


def test_multiprocessing_fork_pool_map(pool: ConnectionPool) -> None:
    global _shared
    _shared = pool
    out, originals, pids = check_one_out(pool)
    ctx = multiprocessing.get_context("fork")
    try:
        with ctx.Pool(2) as workers:
            results = workers.map(_worker, range(8))
    finally:
        _shared = None
    assert not {backend for _, backend in results} & set(pids.values())
    # each worker process reused its own connections across its tasks (at most minconn=2)
    by_process: dict[int, set[int]] = {}
    for process_pid, backend in results:
        by_process.setdefault(process_pid, set()).add(backend)
    assert all(len(backends) <= 2 for backends in by_process.values())
    all_backends = [b for backends in by_process.values() for b in backends]
    assert len(all_backends) == len(set(all_backends))  # no session shared between processes
    assert_parent_sessions_intact(originals, pids)
    pool.putconn(out)


@pytest.mark.parametrize("sections", ["C", "Python"])
def test_a_child_resets_a_pool_with_either_kind_of_sections(
        dsn: str, sections: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child makes a new lock of the kind the pool has: the Python sections' (a
    threading.Lock, whose type cannot be instantiated before 3.13) as well as the C ones'."""
    import threading

    import psycopg2_pool.pool
    from psycopg2_pool import critical

    if sections == "Python":  # private: the classes pool.py makes its sections with
        monkeypatch.setattr(psycopg2_pool.pool, "_FastPaths", critical.PyFastPaths)
        monkeypatch.setattr(psycopg2_pool.pool, "_Lock", threading.Lock)
    elif not critical.ACCELERATED:
        pytest.skip("psycopg2_pool._critical is not built here")
    pool = ConnectionPool(1, 2, dsn=dsn)
    lock = pool._lock  # private: the kind of lock the child must make again
    try:
        held = pool.getconn()
        parents = {held.info.backend_pid} | {c.info.backend_pid for c in pool.idle_connections}

        def child() -> int:
            conn = pool.getconn(timeout=5)  # its own: never one of the parent's sessions
            with conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                mine = cur.fetchone()[0]
            pool.putconn(conn)
            reset = pool._lock is not lock and isinstance(pool._lock, type(lock))
            return 0 if mine not in parents and reset else 3

        assert run_in_child(child) == 0
        pool.putconn(held)
    finally:
        pool.close()
