"""The seed document's API and the pool's documented behaviours, on a real server."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.pool
import pytest

import psycopg2_pool
from psycopg2_pool import (
    ConnectionPool,
    PoolClosed,
    PoolError,
    ThreadedConnectionPool,
    ThreadSafeConnectionPool,
)
from psycopg2_pool import stats as stats_keys
from psycopg2_pool.events import DiscardReason
from tests.support.pools import MakePool, backend_count, count_rows, wait_until

ROOT = Path(__file__).resolve().parents[2]


def select_one(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        return int(cur.fetchone()[0])


# -- the seed's imports and quickstart -----------------------------------------------------


def test_seed_imports() -> None:
    """The seed's import line is this module's: ConnectionPool, ThreadedConnectionPool,
    ThreadSafeConnectionPool, PoolError."""
    assert ConnectionPool is psycopg2_pool.ConnectionPool
    assert ThreadedConnectionPool is ConnectionPool
    assert ThreadSafeConnectionPool is ConnectionPool
    assert PoolError is psycopg2_pool.PoolError
    assert issubclass(PoolError, psycopg2.pool.PoolError)
    assert issubclass(PoolError, psycopg2.Error)
    assert set(psycopg2_pool.__all__) >= {"ConnectionPool", "ThreadedConnectionPool",
                                          "ThreadSafeConnectionPool", "PoolError"}


def test_seed_quickstart(dsn: str, admin: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The seed's quickstart as written: docs/examples/quickstart.py's ``quickstart()``, with
    ``dsn=`` in place of host/database/user/password, against the test server."""
    spec = importlib.util.spec_from_file_location(
        "quickstart_example", ROOT / "docs" / "examples" / "quickstart.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.quickstart({"dsn": dsn})
    out = capsys.readouterr().out
    assert "Query result (with statement): 2" in out
    assert "Table 'test_table' ensured (explicit putconn)." in out
    assert out.rstrip().endswith("Connection pool closed.")
    with admin.cursor() as cur:
        cur.execute("SELECT to_regclass('test_table') IS NOT NULL")
        assert cur.fetchone()[0] is True


# -- with blocks ---------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["getconn", "connection"])
def test_with_commits_on_success_and_returns(make_pool: MakePool, admin: Any, table: str,
                                             style: str) -> None:
    pool = make_pool(0, 2)
    ctx = pool.getconn() if style == "getconn" else pool.connection()
    with ctx as conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (1)")
        assert pool.get_stats()["pool_in_use"] == 1
    assert count_rows(admin, table) == 1  # committed: visible from another session
    assert list(pool.idle_connections) == [conn]
    assert pool.get_stats()["pool_in_use"] == 0
    again = pool.getconn()
    assert again is conn  # reused, not reopened
    assert pool.get_stats()["connections_num"] == 1
    pool.putconn(again)


@pytest.mark.parametrize("style", ["getconn", "connection"])
def test_with_rolls_back_on_exception_and_returns(make_pool: MakePool, admin: Any, table: str,
                                                  style: str) -> None:
    pool = make_pool(0, 2)
    ctx = pool.getconn() if style == "getconn" else pool.connection()
    with pytest.raises(ZeroDivisionError), ctx as conn:
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")
        1 / 0  # noqa: B018
    assert count_rows(admin, table) == 0
    assert list(pool.idle_connections) == [conn]
    assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    assert pool.get_stats()["pool_in_use"] == 0
    assert pool.getconn() is conn
    pool.putconn(conn)


@pytest.mark.parametrize("style", ["getconn", "connection"])
def test_with_whose_commit_fails_still_returns(make_pool: MakePool, admin: Any,
                                               style: str) -> None:
    """A deferred constraint fails at COMMIT, when the with block ends: the error reaches the
    caller, nothing is committed, the connection goes back to the pool."""
    name = f"deferred_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    try:
        pool = make_pool(0, 2)
        ctx = pool.getconn() if style == "getconn" else pool.connection()
        with pytest.raises(psycopg2.errors.UniqueViolation), ctx as conn, \
                conn.cursor() as cur:
            cur.execute(f"INSERT INTO {name} VALUES (1), (1)")  # checked at commit
        assert count_rows(admin, name) == 0
        stats = pool.get_stats()
        assert stats["pool_in_use"] == 0
        assert stats["returns"] == 1
        assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        assert pool.getconn() is conn  # still a good connection: kept
        pool.putconn(conn)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP TABLE {name}")


@pytest.mark.parametrize("style", ["getconn", "connection"])
def test_with_on_a_lost_connection_raises_the_real_error(make_pool: MakePool, admin: Any,
                                                         style: str) -> None:
    pool = make_pool(0, 2)
    ctx = pool.getconn() if style == "getconn" else pool.connection()
    with pytest.raises(psycopg2.OperationalError), ctx as conn:
        terminate(admin, conn.info.backend_pid)
        select_one(conn)
    stats = pool.get_stats()
    assert stats["pool_in_use"] == 0
    assert stats["pool_size"] == 0
    assert stats["discarded_broken"] == 1
    assert conn.closed


def test_with_on_a_returned_connection_raises(make_pool: MakePool) -> None:
    pool = make_pool(0, 2)
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(PoolError), conn:
        pytest.fail("the with block must not be entered")
    # the refused with block did not disturb the pool
    assert list(pool.idle_connections) == [conn]
    assert pool.getconn() is conn
    pool.putconn(conn)


def test_with_after_exit_cannot_be_reentered(make_pool: MakePool) -> None:
    pool = make_pool(0, 2)
    with pool.getconn() as conn:
        pass
    with pytest.raises(PoolError), conn:
        pass


@pytest.mark.parametrize("style", ["getconn", "connection"])
def test_putconn_inside_the_with_block_never_touches_the_next_user(make_pool: MakePool,
                                                                   style: str) -> None:
    """Returned inside the block, then checked out again by someone else: leaving the block
    must neither commit that user's transaction nor return their connection under them."""
    pool = make_pool(0, 2)
    ctx = pool.getconn() if style == "getconn" else pool.connection()
    with contextlib.suppress(PoolError), ctx as conn:
        pool.putconn(conn)
        other = pool.getconn()  # the next user (LIFO: the very same connection)
        assert other is conn
        with other.cursor() as cur:
            cur.execute("SELECT 1")  # the next user's transaction is open
    assert pool.connections_in_use == {other}  # still the next user's
    assert other not in pool.idle_connections
    assert other.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    assert pool.get_stats()["returns"] == 1
    pool.putconn(other)


def test_putconn_inside_with_connection_block_is_reported(make_pool: MakePool) -> None:
    """As documented for ``with pool.getconn()``: the block's work was rolled back, not
    committed, so leaving it normally raises PoolError."""
    pool = make_pool(0, 2)
    with pytest.raises(PoolError), pool.getconn() as conn:
        pool.putconn(conn)
    assert list(pool.idle_connections) == [conn]


def test_connection_factory_and_cursor_factory(make_pool: MakePool) -> None:
    import psycopg2.extras

    pool = make_pool(0, 2, connection_factory=psycopg2.extras.RealDictConnection)
    with pool.getconn() as conn:
        assert isinstance(conn, psycopg2.extras.RealDictConnection)
        with conn.cursor() as cur:
            cur.execute("SELECT 1 AS one")
            assert cur.fetchone() == {"one": 1}
    assert list(pool.idle_connections) == [conn]  # the with block returned it
    other = make_pool(0, 1, cursor_factory=psycopg2.extras.NamedTupleCursor)
    with other.connection() as conn2, conn2.cursor() as cur:
        cur.execute("SELECT 2 AS two")
        assert cur.fetchone().two == 2


# -- close ---------------------------------------------------------------------------------


def test_close_closes_idle_connections_server_side(make_pool: MakePool, admin: Any,
                                                   app_name: str) -> None:
    pool = make_pool(3, 5, application_name=app_name)
    assert backend_count(admin, app_name) == 3
    conns = list(pool.idle_connections)
    assert not pool.closed
    pool.close()
    assert pool.closed
    assert all(c.closed for c in conns)
    assert not pool.idle_connections
    assert wait_until(lambda: backend_count(admin, app_name) == 0)
    pool.close()  # idempotent
    pool.close()
    assert pool.closed
    assert pool.get_stats()["discarded_pool_closed"] == 3


def test_close_leaves_in_use_connections_until_returned(make_pool: MakePool, admin: Any,
                                                        app_name: str) -> None:
    pool = make_pool(0, 5, application_name=app_name)
    busy = pool.getconn()
    idle = pool.getconn()
    pool.putconn(idle)
    pool.close()
    assert idle.closed
    assert not busy.closed
    assert select_one(busy) == 1  # still usable until returned
    assert wait_until(lambda: backend_count(admin, app_name) == 1)
    pool.putconn(busy)
    assert busy.closed
    assert wait_until(lambda: backend_count(admin, app_name) == 0)
    stats = pool.get_stats()
    assert stats["discarded_pool_closed"] == 2
    assert stats["pool_size"] == 0


def test_getconn_after_close_raises_pool_closed(make_pool: MakePool) -> None:
    pool = make_pool(1, 2)
    pool.close()
    with pytest.raises(PoolClosed) as info:
        pool.getconn()
    assert isinstance(info.value, PoolError)
    assert isinstance(info.value, psycopg2.pool.PoolError)
    assert "closed" in str(info.value)
    with pytest.raises(PoolClosed):
        pool.getconn(timeout=0.1)
    with pytest.raises(PoolClosed), pool.connection():
        pass


def test_closeall_is_close(make_pool: MakePool) -> None:
    pool = make_pool(2, 2)
    conns = list(pool.idle_connections)
    pool.closeall()
    assert pool.closed
    assert all(c.closed for c in conns)
    pool.closeall()


def test_pool_as_context_manager(dsn: str, admin: Any, app_name: str) -> None:
    with ConnectionPool(2, 4, dsn=dsn, application_name=app_name) as pool:
        assert not pool.closed
        assert backend_count(admin, app_name) == 2
        with pool.connection() as conn:
            assert select_one(conn) == 1
    assert pool.closed
    assert wait_until(lambda: backend_count(admin, app_name) == 0)


def test_pool_context_manager_closes_on_exception(dsn: str) -> None:
    with pytest.raises(RuntimeError), ConnectionPool(1, 2, dsn=dsn) as pool:
        raise RuntimeError("boom")
    assert pool.closed


# -- putconn(close=True), keys -------------------------------------------------------------


def test_putconn_close_true_closes_it(make_pool: MakePool, admin: Any, app_name: str) -> None:
    pool = make_pool(0, 2, application_name=app_name)
    conn = pool.getconn()
    pool.putconn(conn, close=True)
    assert conn.closed
    assert conn not in pool.idle_connections
    assert wait_until(lambda: backend_count(admin, app_name) == 0)
    stats = pool.get_stats()
    assert stats["pool_size"] == 0
    assert stats["discarded_closed_by_user"] == 1
    assert pool.getconn() is not conn


def test_keyed_getconn_putconn_like_psycopg2_pool(make_pool: MakePool) -> None:
    pool = make_pool(0, 3)
    a = pool.getconn("a")
    assert pool.getconn("a") is a  # same key, same connection
    b = pool.getconn("b")
    assert b is not a
    assert pool.get_stats()["pool_in_use"] == 2
    with pytest.raises(PoolError):
        pool.putconn(a, key="b")  # wrong key
    assert pool.getconn("a") is a  # the failed return left it checked out under "a"
    pool.putconn(a, key="a")
    assert pool.get_stats()["pool_in_use"] == 1
    a2 = pool.getconn("a")  # the key was released; the idle connection is reused
    assert a2 is a
    pool.putconn(b)  # a keyed connection may be returned without its key
    assert pool.getconn("b") is b  # reused from the idle queue under its new key
    pool.putconn(a2, "a")
    pool.putconn(b, "b")
    assert pool.get_stats()["pool_in_use"] == 0


def test_concurrent_getconn_with_one_key_yields_one_connection(make_pool: MakePool) -> None:
    """psycopg2.pool's ThreadedConnectionPool guarantees it: one key, one connection, even when
    several threads ask for the key at the same moment."""
    pool = make_pool(0, 10)
    barrier = threading.Barrier(6)
    got: list[Any] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            barrier.wait(5)
            got.append(pool.getconn("shared"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, daemon=True) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors
    assert len(got) == 6
    assert len({id(c) for c in got}) == 1, f"{len({id(c) for c in got})} connections for one key"
    assert pool.get_stats()["pool_in_use"] == 1
    pool.putconn(got[0], key="shared")
    assert pool.get_stats()["pool_in_use"] == 0


def test_keyed_getconn_after_close_raises_pool_closed(make_pool: MakePool) -> None:
    pool = make_pool(0, 2)
    conn = pool.getconn("a")
    pool.close()
    with pytest.raises(PoolClosed):
        pool.getconn("a")
    with pytest.raises(PoolClosed):
        pool.getconn("b")
    pool.putconn(conn, key="a")
    assert conn.closed


def test_psycopg2_pool_positional_keywords(make_pool: MakePool) -> None:
    """psycopg2.pool's signatures: getconn(key=None), putconn(conn, key=None, close=False)."""
    pool = make_pool(0, 2)
    conn = pool.getconn(None)
    pool.putconn(conn, None, False)
    conn = pool.getconn(key="k")
    pool.putconn(conn, key="k", close=True)
    assert conn.closed


# -- statistics ----------------------------------------------------------------------------


def test_get_stats_after_a_known_workload(make_pool: MakePool) -> None:
    pool = make_pool(1, 3, name="stats-pool")
    a = pool.getconn()  # the connection minconn opened
    b = pool.getconn()
    c = pool.getconn()
    with pytest.raises(psycopg2_pool.PoolExhausted):
        pool.getconn()  # fails at once
    with pytest.raises(psycopg2_pool.PoolExhausted):
        pool.getconn(timeout=0.1)  # waits, then fails
    with a.cursor() as cur:
        cur.execute("SELECT 1")  # leaves a transaction open: rolled back by putconn
    pool.putconn(a)
    b.close()
    pool.putconn(b)  # closed by the user: discarded
    pool.putconn(c, close=True)
    mid = pool.get_stats()
    assert mid["pool_size"] == 1
    assert mid["pool_available"] == 1
    pool.clear()
    stats = pool.get_stats()
    expected = {
        "name": "stats-pool",
        "pool_min": 1,
        "pool_max": 3,
        "pool_size": 0,
        "pool_available": 0,
        "pool_in_use": 0,
        "pool_opening": 0,
        "requests_waiting": 0,
        "requests": 5,
        "returns": 3,
        "exhausted": 2,
        "waits": 1,
        "timeouts": 2,
        "rollbacks": 1,
        "connections_num": 3,
        "connections_errors": 0,
        "listener_errors": 0,
        "connections_discarded": 3,
        "discarded_broken": 0,
        "discarded_idle_timeout": 0,
        "discarded_max_lifetime": 0,
        "discarded_closed_by_user": 2,
        "discarded_failed_check": 0,
        "discarded_pool_closed": 0,
        "discarded_fork": 0,
        "discarded_garbage_collected": 0,
        "discarded_cleared": 1,
        "discarded_failed_reset": 0,
        "discarded_resized": 0,
        "discarded_interrupted": 0,
        "discarded_role_changed": 0,
        "discarded_drained": 0,
        "requests_refused": 0,
        "outages": 0,
        "role_changes": 0,
        "unavailable_s": 0.0,
    }
    assert {k: stats[k] for k in expected} == expected
    assert set(stats) == {*expected, "requests_wait_ms", "connections_ms"}
    assert 90 <= stats["requests_wait_ms"] < 5000
    assert stats["connections_ms"] > 0
    assert {stats_keys.discarded(r) for r in DiscardReason.ALL} <= set(stats)
    assert tuple(stats) == stats_keys.KEYS  # every key is named in psycopg2_pool.stats
    documented = (ROOT / "docs" / "api.md").read_text()
    for key in stats_keys.DOCUMENTED:  # discarded_<reason> is documented as such
        assert f"`{key}`" in documented, f"stats key {key} is not documented"


def test_get_stats_of_a_fresh_pool(make_pool: MakePool) -> None:
    stats = make_pool(2, 4).get_stats()
    assert stats["pool_size"] == 2
    assert stats["pool_available"] == 2
    assert stats["pool_in_use"] == 0
    assert stats["connections_num"] == 2
    assert stats["requests"] == 0
    assert stats["returns"] == 0


# -- lifetime and health checks ------------------------------------------------------------


def test_max_lifetime_discards_at_checkout(make_pool: MakePool) -> None:
    pool = make_pool(0, 2, max_lifetime=0.2)
    conn = pool.getconn()
    pool.putconn(conn)
    assert list(pool.idle_connections) == [conn]
    time.sleep(0.25)
    new = pool.getconn()
    assert new is not conn
    assert conn.closed
    assert select_one(new) == 1
    assert pool.get_stats()["discarded_max_lifetime"] == 1
    pool.putconn(new)


def test_max_lifetime_discards_at_return(make_pool: MakePool) -> None:
    pool = make_pool(0, 2, max_lifetime=0.2)
    conn = pool.getconn()
    time.sleep(0.25)
    assert select_one(conn) == 1  # still usable while checked out
    pool.putconn(conn)
    assert conn.closed
    assert not pool.idle_connections
    stats = pool.get_stats()
    assert stats["discarded_max_lifetime"] == 1
    assert stats["pool_size"] == 0


def test_idle_timeout_none_never_expires(make_pool: MakePool) -> None:
    pool = make_pool(0, 2, idle_timeout=None)
    conn = pool.getconn()
    pool.putconn(conn)
    pool.return_times[conn] -= 10**7
    assert pool.getconn() is conn
    other = pool.getconn()
    pool.putconn(other)
    pool.return_times[other] -= 10**7
    pool.putconn(conn)  # would prune "other" if idle connections expired
    assert list(pool.idle_connections) == [other, conn]
    assert pool.get_stats()["discarded_idle_timeout"] == 0


def test_max_lifetime_discards_are_counted_and_minconn_restored(make_pool: MakePool) -> None:
    pool = make_pool(1, 2, max_lifetime=0.2)
    first = pool.getconn()
    pool.putconn(first)
    time.sleep(0.25)
    second = pool.getconn()  # the idle one expired: replaced
    time.sleep(0.25)
    pool.putconn(second)  # expired while out: closed on return
    stats = pool.get_stats()
    assert stats["discarded_max_lifetime"] == 2
    assert stats["pool_size"] == 1  # back to minconn (the refill counts while it opens)


def test_lifo_reuse_and_idle_timeout_zero(make_pool: MakePool) -> None:
    pool = make_pool(0, 3, idle_timeout=None)
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    pool.putconn(b)
    assert pool.getconn() is b  # last in, first out
    pool = make_pool(1, 3, idle_timeout=0)
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    pool.putconn(b)  # beyond minconn: closed at once
    assert b.closed and not a.closed
    assert pool.get_stats()["discarded_idle_timeout"] == 1


def test_young_connection_is_reused_under_max_lifetime(make_pool: MakePool) -> None:
    pool = make_pool(0, 2, max_lifetime=30)
    conn = pool.getconn()
    pool.putconn(conn)
    assert pool.getconn() is conn
    pool.putconn(conn)


def terminate(admin: Any, pid: int) -> None:
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert cur.fetchone()[0] is True

    def gone() -> bool:
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            return cur.fetchone()[0] == 0

    assert wait_until(gone)


def test_health_check_discards_a_killed_idle_connection(make_pool: MakePool,
                                                        admin: Any) -> None:
    pool = make_pool(0, 2, check_idle_after=0)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    pool.putconn(conn)
    terminate(admin, pid)
    new = pool.getconn()
    assert new is not conn
    assert new.info.backend_pid != pid
    assert select_one(new) == 1
    stats = pool.get_stats()
    assert stats["discarded_failed_check"] == 1
    assert stats["pool_size"] == 1
    assert stats["requests"] == 2  # the discard and retry is one request
    pool.putconn(new)


def test_without_health_check_a_killed_connection_is_handed_out_once(make_pool: MakePool,
                                                                     admin: Any) -> None:
    """Documents current behaviour: with no check the dead connection reaches the caller,
    fails on first use, is discarded by putconn, and the next getconn gets a working one."""
    pool = make_pool(0, 2)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    pool.putconn(conn)
    terminate(admin, pid)
    dead = pool.getconn()
    assert dead is conn  # handed out: nothing checked it
    with pytest.raises(psycopg2.OperationalError):
        select_one(dead)
    assert dead.closed == 2  # psycopg2: lost, not closed by the application
    pool.putconn(dead)
    assert dead not in pool.idle_connections
    fresh = pool.getconn()
    assert fresh is not dead
    assert select_one(fresh) == 1
    pool.putconn(fresh)
    stats = pool.get_stats()
    assert stats["connections_discarded"] == 1
    assert stats["pool_size"] == 1


def test_a_lost_connection_is_discarded_as_broken(make_pool: MakePool, admin: Any) -> None:
    """A connection whose server session died (psycopg2 ``closed == 2``) is ``broken`` — the
    documented reason for "lost" connections — not ``closed_by_user``."""
    pool = make_pool(0, 2)
    conn = pool.getconn()
    terminate(admin, conn.info.backend_pid)
    with pytest.raises(psycopg2.OperationalError):
        select_one(conn)
    assert conn.closed == 2
    pool.putconn(conn)
    stats = pool.get_stats()
    assert stats["discarded_broken"] == 1
    assert stats["discarded_closed_by_user"] == 0


def test_custom_check_is_called(make_pool: MakePool) -> None:
    checked: list[Any] = []

    def check(conn: Any) -> None:
        checked.append(conn)

    pool = make_pool(0, 2, check=check)  # check without check_idle_after: every checkout
    conn = pool.getconn()
    pool.putconn(conn)
    assert pool.getconn() is conn
    assert checked == [conn]  # a fresh connection is not checked; a reused one is
    pool.putconn(conn)
    assert pool.getconn() is conn
    assert checked == [conn, conn]
    pool.putconn(conn)


def test_custom_check_that_fails_discards(make_pool: MakePool) -> None:
    calls = 0

    def check(conn: Any) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("unhealthy")

    pool = make_pool(0, 2, check=check, check_idle_after=0)
    conn = pool.getconn()
    pool.putconn(conn)
    new = pool.getconn()
    assert calls == 1
    assert new is not conn
    assert conn.closed
    assert pool.get_stats()["discarded_failed_check"] == 1
    pool.putconn(new)


def test_check_idle_after_skips_recently_returned(make_pool: MakePool) -> None:
    calls: list[Any] = []
    pool = make_pool(0, 2, check=calls.append, check_idle_after=60)
    conn = pool.getconn()
    pool.putconn(conn)
    assert pool.getconn() is conn
    assert calls == []
    pool.putconn(conn)
    pool.return_times[conn] -= 120
    assert pool.getconn() is conn
    assert calls == [conn]
    pool.putconn(conn)


# -- repr ----------------------------------------------------------------------------------


def test_repr(make_pool: MakePool) -> None:
    pool = make_pool(1, 4, name="my-pool")
    text = repr(pool)
    assert "ConnectionPool" in text
    assert "my-pool" in text
    assert "4" in text
    pool.close()
    assert "closed" in repr(pool)


def test_connections_in_use(make_pool: MakePool) -> None:
    pool = make_pool(0, 3)
    a = pool.getconn()
    b = pool.getconn()
    assert pool.connections_in_use == {a, b}
    pool.putconn(a)
    assert pool.connections_in_use == {b}
    pool.putconn(b)
    assert pool.connections_in_use == frozenset()


def test_default_name_without_dbname_or_user_is_libpq_s_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq falls back to the OS user's name for the user, hence the database: so does the
    name (it said ``postgres``, a database such a pool never connects to)."""
    import pwd

    for variable in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"):
        monkeypatch.delenv(variable, raising=False)
    pool = ConnectionPool(0, 1, host="db.example")
    try:
        assert pool.name == f"db.example:5432/{pwd.getpwuid(os.geteuid()).pw_name}"
    finally:
        pool.close()


def test_default_name_is_host_port_and_database() -> None:
    pool = ConnectionPool(0, 1, dbname="app", host="db.example", port=6543)
    try:
        assert pool.name == "db.example:6543/app"
    finally:
        pool.close()
