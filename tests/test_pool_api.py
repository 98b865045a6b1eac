"""The seed document's API, as written, plus the pool's documented behaviours."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.pool
import pytest
from conftest import backend_count, count_rows, settled_backend_count

import psycopg2_pool
from psycopg2_pool import (
    ConnectionPool,
    PoolClosed,
    PoolError,
    ThreadedConnectionPool,
    ThreadSafeConnectionPool,
)
from psycopg2_pool import stats as stats_keys

ROOT = Path(__file__).resolve().parent.parent


def test_seed_imports() -> None:
    assert ThreadedConnectionPool is ConnectionPool
    assert ThreadSafeConnectionPool is ConnectionPool
    assert issubclass(PoolError, psycopg2.pool.PoolError)
    assert set(psycopg2_pool.__all__) >= {"ConnectionPool", "ThreadedConnectionPool",
                                          "ThreadSafeConnectionPool", "PoolError"}


def test_seed_quickstart_runs_as_written(dsn: str) -> None:
    """docs/examples/quickstart.py is the seed's quickstart; run it against our server."""
    env = {"DB_HOST": "", "PATH": "/usr/bin:/bin"}
    # A PSYCOPG2_POOL_TEST_DSN may leave user, database or password to libpq's variables.
    env.update({k: v for k, v in os.environ.items() if k.startswith("PG")})
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'docs' / 'examples')!r}); "
            f"import quickstart; quickstart.quickstart({{'dsn': {dsn!r}}})")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "Query result (with statement): 2" in result.stdout
    assert "Table 'test_table' ensured (explicit putconn)." in result.stdout
    assert "Connection pool closed." in result.stdout


def test_with_getconn_commits_and_returns(dsn: str, admin: Any, table: str) -> None:
    pool = ConnectionPool(0, 2, dsn=dsn)
    with pool.getconn() as conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (1)")
    assert count_rows(admin, table) == 1
    assert list(pool.idle_connections) == [conn]
    assert pool.get_stats()["pool_in_use"] == 0
    assert pool.getconn() is conn  # reused
    pool.putconn(conn)
    pool.close()


def test_with_getconn_rolls_back_on_exception_and_returns(dsn: str, admin: Any,
                                                          table: str) -> None:
    pool = ConnectionPool(0, 2, dsn=dsn)
    with pytest.raises(ZeroDivisionError), pool.getconn() as conn:
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")
        1 / 0  # noqa: B018
    assert count_rows(admin, table) == 0
    assert list(pool.idle_connections) == [conn]
    assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    pool.close()


def test_pool_connection_context(dsn: str, admin: Any, table: str) -> None:
    pool = ConnectionPool(0, 2, dsn=dsn)
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (1)")
    assert count_rows(admin, table) == 1
    with pytest.raises(RuntimeError), pool.connection(timeout=1) as conn2:
        with conn2.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (2)")
        raise RuntimeError("boom")
    assert count_rows(admin, table) == 1
    assert pool.get_stats()["pool_in_use"] == 0
    pool.close()


def test_with_on_a_returned_connection_is_refused(dsn: str) -> None:
    pool = ConnectionPool(0, 2, dsn=dsn)
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(PoolError, match="already returned to the pool"), conn:
        pass
    other = pool.getconn()  # the same connection, now someone else's
    assert other is conn
    with pytest.raises(PoolError, match="returned to the pool inside its with block"), \
            pool.getconn() as mine:
        pool.putconn(mine)  # returned inside the block: not committed, said so
    pool.putconn(other)
    pool.close()


def test_close(dsn: str, admin: Any, app_name: str) -> None:
    pool = ConnectionPool(3, 5, dsn=dsn, application_name=app_name)
    assert backend_count(admin, app_name) == 3
    out = pool.getconn()
    assert not pool.closed
    pool.close()
    assert pool.closed
    assert settled_backend_count(admin, app_name, 1) == 1  # the checked-out one stays open
    assert not out.closed
    pool.close()  # idempotent
    with pytest.raises(PoolClosed, match="is closed"):
        pool.getconn()
    assert isinstance(PoolClosed("x"), PoolError)
    pool.putconn(out)  # closed when returned
    assert out.closed
    assert settled_backend_count(admin, app_name, 0) == 0
    assert "closed" in repr(pool)


def test_closeall_and_context_manager(dsn: str) -> None:
    pool = ConnectionPool(1, 2, dsn=dsn)
    pool.closeall()
    assert pool.closed
    with ConnectionPool(1, 2, dsn=dsn) as pool2:
        conn = pool2.getconn()
        pool2.putconn(conn)
    assert pool2.closed and conn.closed


def test_putconn_close_keyword(dsn: str) -> None:
    pool = ConnectionPool(0, 2, dsn=dsn)
    conn = pool.getconn()
    pool.putconn(conn, close=True)
    assert conn.closed
    assert pool.get_stats()["discarded_closed_by_user"] == 1
    assert pool.get_stats()["pool_size"] == 0
    pool.close()


def test_keys_as_in_psycopg2_pool(dsn: str) -> None:
    pool = ConnectionPool(0, 3, dsn=dsn)
    a = pool.getconn("worker-1")
    assert pool.getconn("worker-1") is a
    b = pool.getconn("worker-2")
    assert b is not a
    with pytest.raises(PoolError, match="key"):
        pool.putconn(a, key="worker-2")
    pool.putconn(a, key="worker-1")
    pool.putconn(b)  # the key is found from the connection
    assert pool.getconn("worker-1") in (a, b)
    pool.close()


def test_lifo_reuse_and_idle_timeout_zero(dsn: str) -> None:
    pool = ConnectionPool(0, 3, idle_timeout=None, dsn=dsn)
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    pool.putconn(b)
    assert pool.getconn() is b  # last in, first out
    pool.close()
    pool = ConnectionPool(1, 3, idle_timeout=0, dsn=dsn)
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    pool.putconn(b)  # beyond minconn: closed at once
    assert b.closed and not a.closed
    assert pool.get_stats()["discarded_idle_timeout"] == 1
    pool.close()


def test_max_lifetime(dsn: str) -> None:
    pool = ConnectionPool(1, 2, max_lifetime=0.2, dsn=dsn)
    first = pool.getconn()
    pool.putconn(first)
    time.sleep(0.25)
    second = pool.getconn()  # the idle one expired: replaced
    assert second is not first and first.closed
    time.sleep(0.25)
    pool.putconn(second)  # expired while out: closed on return
    assert second.closed
    stats = pool.get_stats()
    assert stats["discarded_max_lifetime"] == 2
    assert stats["pool_size"] == 1  # refilled to minconn
    pool.close()


def test_health_check_discards_a_dead_idle_connection(dsn: str, admin: Any) -> None:
    pool = ConnectionPool(1, 2, check_idle_after=0, dsn=dsn)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    pool.putconn(conn)
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    time.sleep(0.1)
    fresh = pool.getconn()
    assert fresh is not conn and fresh.info.backend_pid != pid
    with fresh.cursor() as cur:
        cur.execute("SELECT 1")
    pool.putconn(fresh)
    assert pool.get_stats()["discarded_failed_check"] == 1
    pool.close()


def test_without_health_check_a_dead_connection_is_handed_out_once(dsn: str,
                                                                   admin: Any) -> None:
    pool = ConnectionPool(1, 2, dsn=dsn)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    pool.putconn(conn)
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    time.sleep(0.1)
    dead = pool.getconn()
    assert dead is conn  # nothing checked it
    with pytest.raises(psycopg2.OperationalError), dead.cursor() as cur:
        cur.execute("SELECT 1")
    assert dead.closed == 2  # psycopg2: the session was lost
    pool.putconn(dead)  # discarded as broken on return
    assert pool.get_stats()["discarded_broken"] == 1
    assert pool.get_stats()["discarded_closed_by_user"] == 0
    fresh = pool.getconn()
    with fresh.cursor() as cur:
        cur.execute("SELECT 1")
    pool.putconn(fresh)
    pool.close()


def test_custom_check_and_idle_threshold(dsn: str) -> None:
    checked: list[Any] = []
    pool = ConnectionPool(1, 2, check=checked.append, check_idle_after=0.1, dsn=dsn)
    conn = pool.getconn()
    pool.putconn(conn)
    pool.putconn(pool.getconn())  # idle for less than 0.1 s: not checked
    assert checked == []
    time.sleep(0.15)
    pool.putconn(pool.getconn())
    assert checked == [conn]
    pool.close()


def test_stats_after_a_known_workload(dsn: str) -> None:
    pool = ConnectionPool(1, 2, timeout=0.05, dsn=dsn, name="stats")
    a = pool.getconn()
    b = pool.getconn(timeout=0)  # opened here; with a timeout it would wait for the open
    with pytest.raises(psycopg2_pool.PoolExhausted):
        pool.getconn()
    with a.cursor() as cur:
        cur.execute("SELECT 1")  # leaves a transaction open: rolled back on return
    pool.putconn(a)
    pool.putconn(b, close=True)
    stats = pool.get_stats()
    expected = {
        "name": "stats", "pool_min": 1, "pool_max": 2, "pool_size": 1, "pool_available": 1,
        "pool_in_use": 0, "pool_opening": 0, "requests_waiting": 0, "requests": 3,
        "returns": 2, "exhausted": 1, "waits": 1, "timeouts": 1, "rollbacks": 1,
        "connections_num": 2, "connections_errors": 0, "listener_errors": 0,
        "connections_discarded": 1, "discarded_closed_by_user": 1,
    }
    assert {k: stats[k] for k in expected} == expected
    assert 40 <= stats["requests_wait_ms"] < 1000
    assert stats["connections_ms"] > 0
    for reason in psycopg2_pool.DiscardReason.ALL:
        assert stats_keys.discarded(reason) in stats
    assert tuple(stats) == stats_keys.KEYS  # every key is named in psycopg2_pool.stats
    documented = (ROOT / "docs" / "api.md").read_text()
    for key in stats_keys.DOCUMENTED:
        assert f"`{key}`" in documented, f"stats key {key} is not documented"
    pool.close()


def test_unbounded_maxconn_by_default(dsn: str) -> None:
    pool = ConnectionPool(dsn=dsn)
    assert pool.minconn == 1 and pool.maxconn == math.inf and pool.idle_timeout == 600
    conns = [pool.getconn() for _ in range(5)]
    for conn in conns:
        pool.putconn(conn)
    assert pool.connect_kwargs["dsn"] == dsn
    pool.close()


def test_default_name_has_no_secret(dsn: str, admin: Any) -> None:
    """The name ends with the database the DSN reaches, whichever the test server is (a
    ``PSYCOPG2_POOL_TEST_DSN`` may name another than ``postgres``): asked of the server."""
    with admin.cursor() as cur:
        cur.execute("SELECT current_database(), current_user")
        dbname, user = cur.fetchone()
    pool = ConnectionPool(0, 1, dsn=dsn, password="s3cret-pw", user=user)
    assert "s3cret" not in pool.name and f"{user}:" not in pool.name.split("/")[0]
    assert pool.name.endswith(f"/{dbname}")
    pool.close()
    named = ConnectionPool(0, 1, dbname="app", host="db.example", port=6543)
    assert named.name == "db.example:6543/app"
    named.close()
