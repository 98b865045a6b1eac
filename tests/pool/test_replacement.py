"""``drain()``, ``check()`` and connection arguments that change while the pool lives
(psycopg_pool's names, issue 24), on a real server."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg2
import pytest

from psycopg2_pool import ConnectionPool, DiscardReason
from tests.support.pools import MakePool, wait_until


def backend_pids(admin: Any, app: str) -> set[int]:
    with admin.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,))
        return {row[0] for row in cur.fetchall()}


def pid(conn: Any) -> int:
    return int(conn.info.backend_pid)


# -- drain() ------------------------------------------------------------------------------


def test_drain_replaces_idle_now_and_checked_out_on_return(make_pool: MakePool,
                                                           admin: Any) -> None:
    app = f"drain-{uuid.uuid4().hex[:8]}"
    pool = make_pool(3, 3, application_name=app, timeout=5)
    held = pool.getconn()
    before = backend_pids(admin, app)
    assert len(before) == 3
    pool.drain()
    stats = pool.get_stats()
    assert stats["discarded_drained"] == 2  # the idle ones, at once
    pool.putconn(held)  # the checked-out one, on its return
    wait_until(lambda: pool.get_stats()["discarded_drained"] == 3, 5)
    wait_until(lambda: len(backend_pids(admin, app)) == 3 and
               not backend_pids(admin, app) & before, 5)
    conns = [pool.getconn() for _ in range(3)]
    assert not {pid(c) for c in conns} & before
    for conn in conns:
        pool.putconn(conn)


def test_a_connection_opened_across_a_drain_is_never_handed_out(make_pool: MakePool) -> None:
    """An open that began before drain() (old credentials, the old server) is discarded at
    its first checkout instead of being used."""
    gate = threading.Event()
    opened = threading.Event()

    def configure(conn: Any) -> None:  # runs inside the open, before the connection is placed
        opened.set()
        gate.wait(5)

    pool = make_pool(0, 2, configure=configure, timeout=5)
    result: list[Any] = []
    waiter = threading.Thread(target=lambda: result.append(pool.getconn(timeout=5)))
    waiter.start()
    assert opened.wait(5)
    old = None
    pool.drain()  # while the first open is inside configure
    gate.set()
    waiter.join(10)
    assert result, "the waiter got nothing"
    conn = result[0]
    # The connection opened across the drain went first; the waiter has a later one.
    assert pool.get_stats()["discarded_drained"] == 1
    assert conn._pool_rec.generation == 1
    pool.putconn(conn)
    assert old is None


def test_drain_on_a_closed_pool_does_nothing(make_pool: MakePool) -> None:
    pool = make_pool(1, 1)
    pool.close()
    pool.drain()
    assert pool.get_stats()["discarded_drained"] == 0


# -- check() ------------------------------------------------------------------------------


def test_check_discards_broken_idle_connections_and_keeps_the_others(make_pool: MakePool,
                                                                    admin: Any) -> None:
    pool = make_pool(3, 3, timeout=5)
    conns = [pool.getconn() for _ in range(3)]
    victim = pid(conns[0])
    for conn in conns:
        pool.putconn(conn)
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (victim,))
    wait_until(lambda: not _alive(admin, victim), 5)
    pool.check()
    stats = pool.get_stats()
    assert stats["discarded_broken"] + stats["discarded_failed_check"] == 1, stats
    assert victim not in {pid(c) for c in pool.idle_connections}
    wait_until(lambda: len(pool.idle_connections) == 3, 5)  # replaced in the background
    again = [pool.getconn() for _ in range(3)]
    for conn in again:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        pool.putconn(conn)


def _alive(admin: Any, backend: int) -> bool:
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,))
        return bool(cur.fetchone()[0])


def test_check_uses_the_pools_check_callable(make_pool: MakePool) -> None:
    seen: list[int] = []

    def check(conn: Any) -> None:
        seen.append(pid(conn))
        if len(seen) == 1:
            raise psycopg2.OperationalError("the first one is deemed broken")

    pool = make_pool(2, 2, check=check, check_idle_after=3600)
    pool.check()
    assert len(seen) == 2
    assert pool.get_stats()["discarded_failed_check"] == 1


def test_check_hands_a_good_connection_to_a_waiter(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, timeout=5)
    held = pool.getconn()
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.getconn(timeout=5)))
    waiter.start()
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1, 5)
    pool.putconn(held)  # straight to the waiter
    waiter.join(5)
    assert got and got[0] is held
    pool.putconn(got[0])
    pool.check()  # nothing to hand over now: back to idle
    assert list(pool.idle_connections) == [held]


def test_check_on_a_closed_pool_does_nothing(make_pool: MakePool) -> None:
    pool = make_pool(1, 1)
    pool.close()
    pool.check()


def test_the_check_callable_is_still_accepted(make_pool: MakePool) -> None:
    """``check=`` stays the health check's argument; ``pool.check`` is now the method."""
    pool = make_pool(1, 1, check=lambda conn: None)
    assert callable(pool.check)
    pool.check()


# -- connection arguments that change -------------------------------------------------------


def test_a_callable_dsn_is_called_for_each_new_connection(dsn: str, admin: Any) -> None:
    calls: list[str] = []

    def current() -> str:
        app = f"rot-{len(calls)}-{uuid.uuid4().hex[:6]}"
        calls.append(app)
        return str(psycopg2.extensions.make_dsn(dsn, application_name=app))

    pool = ConnectionPool(1, 2, dsn=current, timeout=5)
    try:
        assert len(calls) == 2  # once to validate and name the pool, once to open minconn
        assert backend_pids(admin, calls[1])
        pool.drain()
        wait_until(lambda: len(calls) == 3 and backend_pids(admin, calls[2]), 5)
        assert not backend_pids(admin, calls[1])
    finally:
        pool.close()


def test_rotated_password_reaches_new_connections(dsn: str, admin: Any) -> None:
    """Cloud IAM tokens expire every 15 minutes: ``kwargs`` as a callable gives each new
    connection the current one, and drain() retires those opened with the old."""
    role = f"rot_{uuid.uuid4().hex[:8]}"
    secret = {"password": "first-secret"}
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'first-secret'")
    options = psycopg2.extensions.parse_dsn(dsn)
    base = {k: v for k, v in options.items() if k not in ("user", "password")}
    pool = None
    try:
        # A socket connection trusts any role on pgserver; the password still travels, and
        # the callable's result is what each connection is opened with.
        seen: list[dict[str, str]] = []

        def current() -> dict[str, str]:
            seen.append(dict(secret))
            return {"user": role, "password": secret["password"]}

        pool = ConnectionPool(1, 2, kwargs=current, timeout=5, **base)
        conn = pool.getconn()
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone()[0] == role
        pool.putconn(conn)
        secret["password"] = "second-secret"
        pool.drain()
        wait_until(lambda: any(s["password"] == "second-secret" for s in seen), 5)
        assert "second-secret" not in repr(pool) and "first-secret" not in repr(pool)
    finally:
        if pool is not None:
            pool.close()
        with admin.cursor() as cur:
            cur.execute(f"DROP ROLE {role}")


def test_bad_callables_fail_clearly(dsn: str) -> None:
    with pytest.raises(TypeError, match="dsn must be a str or a callable returning one"):
        ConnectionPool(0, 1, dsn=lambda: 42)
    with pytest.raises(TypeError, match="kwargs must be a dict"):
        ConnectionPool(0, 1, dsn=dsn, kwargs=lambda: "host=x")
    with pytest.raises(TypeError, match="kwargs cannot set dsn"):
        ConnectionPool(0, 1, dsn=dsn, kwargs={"dsn": dsn})


def test_a_raising_callable_is_a_failed_attempt(dsn: str) -> None:
    """A token service that is down fails the open like a refused connection: the pool
    reports it and retries; getconn raises ServerUnavailable in time."""
    state = {"fail": False}

    def current() -> str:
        if state["fail"]:
            raise RuntimeError("token service unavailable")
        return dsn

    pool = ConnectionPool(0, 1, dsn=current, timeout=0.5)
    try:
        state["fail"] = True
        with pytest.raises(Exception, match=r"token service unavailable|could not"):
            pool.getconn()
        state["fail"] = False
        conn = pool.getconn(timeout=10)
        pool.putconn(conn)
    finally:
        pool.close()


def test_drained_is_a_discard_reason() -> None:
    assert DiscardReason.DRAINED == "drained"


def test_a_later_malformed_dsn_never_shows_its_password(
        dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """libpq quotes a malformed connection string in its message, password included: a result
    of the dsn callable is validated like the constructor's DSN, with a message that quotes
    none of it (found by review: the outage warning and ServerUnavailable carried it)."""
    calls = {"n": 0}

    def current() -> str:
        calls["n"] += 1
        return dsn if calls["n"] <= 2 else "password=pass hunter2"

    pool = ConnectionPool(1, 2, dsn=current, timeout=0.5)
    try:
        held = pool.getconn()
        with pytest.raises(Exception) as raised:  # the next open gets the bad string
            pool.getconn()
        pool.putconn(held)
        text = f"{raised.value!r} {raised.value.__cause__!r} {caplog.text}"
        assert calls["n"] >= 3
        assert "hunter2" not in text
        assert "invalid connection string" in text
    finally:
        pool.close()


def test_a_kwargs_callable_is_asked_for_every_key_at_every_open(dsn: str) -> None:
    """What the callable gave at construction is not kept as fixed: a key it later leaves
    out is gone from the next connection's arguments."""
    results = [{"application_name": "first"}, {"application_name": "first"}, {}]

    def current() -> dict[str, str]:
        return results.pop(0) if results else {}

    pool = ConnectionPool(1, 2, dsn=dsn, kwargs=current, timeout=5)
    try:
        assert "application_name" not in pool._arguments.fixed  # private: what is fixed
        pool.drain()
        conn = pool.getconn()
        assert conn.get_dsn_parameters().get("application_name", "") == ""
        pool.putconn(conn)
    finally:
        pool.close()


def test_a_periodic_check_keeps_idle_timeout(make_pool: MakePool) -> None:
    """check() puts each connection back as it was (its return time, its place in the idle
    order): calling it more often than idle_timeout does not keep idle connections open
    (found by review: every check made them look freshly returned)."""
    pool = make_pool(0, 2, idle_timeout=0.6)
    conn = pool.getconn()
    pool.putconn(conn)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and not pool.get_stats()["discarded_idle_timeout"]:
        pool.check()
        time.sleep(0.1)
    assert pool.get_stats()["discarded_idle_timeout"] == 1
    assert not pool.idle_connections


def test_check_keeps_the_idle_order(make_pool: MakePool) -> None:
    pool = make_pool(3, 3)
    conns = [pool.getconn() for _ in range(3)]
    for conn in conns:
        pool.putconn(conn)
        time.sleep(0.01)
    before = [(id(c), c._pool_rec.returned_at) for c in pool.idle_connections]
    pool.check()
    assert [(id(c), c._pool_rec.returned_at) for c in pool.idle_connections] == before


def test_close_closes_what_a_role_change_left_for_its_task(make_pool: MakePool) -> None:
    """A role change takes the server's idle connections out of use and leaves them to a
    background task (CloseReplaced); a close() that comes before the task runs closes them
    itself, under the role change's reason (the scheduler drops a closed pool's tasks)."""
    from psycopg2_pool.replacement import CloseReplaced

    pool = make_pool(2, 2)
    taken: list[Any] = []
    with pool._lock:  # what _role_changed does, the task not run yet
        pool._doom(lambda rec: True, DiscardReason.ROLE_CHANGED, taken)
        task = CloseReplaced(pool, taken, DiscardReason.ROLE_CHANGED)
        pool._replacing.append(task)
    assert len(taken) == 2
    pool.close()
    assert all(conn.closed for conn in taken)
    stats = pool.get_stats()
    assert stats["discarded_role_changed"] == 2
    assert stats["discarded_interrupted"] == 0 and stats["discarded_garbage_collected"] == 0
    assert stats["pool_size"] == 0
    task.run()  # late: nothing left to close, nothing counted twice
    assert pool.get_stats()["discarded_role_changed"] == 2
