"""After os.fork() the child opens its own connections and never touches the parent's."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from typing import Any

import psycopg2
import pytest

from psycopg2_pool import ConnectionPool, PoolError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def backend_pid(conn: Any) -> int:
    # psycopg2's own cursor(): the pooled class refuses cursor() on an idle connection
    with psycopg2.extensions.connection.cursor(conn) as cur:
        cur.execute("SELECT pg_backend_pid()")
        return int(cur.fetchone()[0])


def child_work(pool: ConnectionPool, parent_pids: set[int], parent_out: Any) -> int:
    """Runs in the child; returns an exit code that says what went wrong (0: nothing)."""
    try:
        pool.putconn(parent_out)
        return 10  # returning the parent's checked-out connection must fail
    except PoolError as exc:
        if "before os.fork()" not in str(exc):
            return 11
    conn = pool.getconn()
    if conn.info.backend_pid in parent_pids:
        return 12  # handed one of the parent's sessions
    if backend_pid(conn) in parent_pids:
        return 13
    pool.putconn(conn)
    pool.close()
    return 0


def test_child_never_uses_or_closes_the_parents_connections(dsn: str) -> None:
    pool = ConnectionPool(2, 4, dsn=dsn)
    out = pool.getconn()
    idle = list(pool.idle_connections)
    parent_pids = {backend_pid(c) for c in [out, *idle]}
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            code = child_work(pool, parent_pids, out)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's sessions are intact: same backends, still working.
    assert backend_pid(out) in parent_pids
    pool.putconn(out)
    for conn in idle:
        assert not conn.closed
        assert backend_pid(conn) in parent_pids
    assert pool.get_stats()["discarded_fork"] == 0  # counted in the child only
    pool.close()


CHILD_EXITS_NORMALLY = """
import os, sys
import psycopg2
from psycopg2_pool import ConnectionPool

def pid_of(conn):  # psycopg2's cursor(): the pooled one refuses idle connections
    with psycopg2.extensions.connection.cursor(conn) as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]

pool = ConnectionPool(2, 4, dsn=sys.argv[1])
out = pool.getconn()
conns = [out, *pool.idle_connections]
before = [pid_of(c) for c in conns]
if os.fork() == 0:
    with pool.connection() as conn:
        assert pid_of(conn) not in before
    assert pool.get_stats()["discarded_fork"] == len(conns)
    del conns, out  # dropped and freed, then the interpreter finalizes everything
    sys.exit(0)
_, status = os.wait()
assert os.waitstatus_to_exitcode(status) == 0, status
assert [pid_of(c) for c in conns] == before  # every parent session survived the child
print("parent sessions intact")
"""


def test_child_exiting_through_the_interpreter_leaves_parent_sessions(dsn: str) -> None:
    """The child frees the inherited connection objects (finalizers run): nothing is sent."""
    result = subprocess.run([sys.executable, "-c", CHILD_EXITS_NORMALLY, dsn],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "parent sessions intact" in result.stdout


def _mp_child(pool: ConnectionPool, queue: Any) -> None:
    with pool.connection() as conn:
        queue.put(backend_pid(conn))
    pool.close()


def test_multiprocessing_fork_start_method(dsn: str) -> None:
    pool = ConnectionPool(1, 2, dsn=dsn)
    conn = pool.getconn()
    parent_pid = backend_pid(conn)
    pool.putconn(conn)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_mp_child, args=(pool, queue)) for _ in range(3)]
    for worker in workers:
        worker.start()
    child_pids = {queue.get(timeout=30) for _ in workers}
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert parent_pid not in child_pids and len(child_pids) == 3
    with pool.connection() as conn:
        assert backend_pid(conn) == parent_pid  # the parent's connection survived
    pool.close()
