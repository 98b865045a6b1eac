"""Scale-out: the pool through a real PgBouncer in transaction pooling mode.

Many application connections share few server sessions; health checks, rollback on return
and telemetry keep working; and the session state that transaction pooling does not keep
(docs/production.md) is shown for what it is. PgBouncer runs on loopback in front of the test
server (tests/support/bouncer.py); the tests skip when the binary is absent, and fail under .ci/run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from psycopg2_pool import ConnectionPool
from telemetry import instrument, names
from tests.support.bouncer import POOL_SIZES, Bouncer
from tests.support.otel import Otel, point
from tests.support.pools import MakePool, count_rows, wait_until
from tests.support.system import require_binary


@pytest.fixture(scope="module")
def bouncer(dsn: str) -> Iterator[Bouncer]:
    server = Bouncer(require_binary("pgbouncer"), dsn)
    yield server
    server.close()


def clients(bouncer: Bouncer, application_name: str) -> int:
    """Client connections PgBouncer holds for one application_name, once they settle."""
    return len([row for row in bouncer.show("CLIENTS", "app")
                if row.get("application_name") == application_name])



def backend_pid(conn: Any) -> int:
    """The server process behind the current transaction (PgBouncer picks one per
    transaction; ``conn.info.backend_pid`` is PgBouncer's own id for the client)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return int(cur.fetchone()[0])


def test_many_pool_connections_share_few_server_sessions(
        bouncer: Bouncer, make_pool: MakePool, app_name: str, figure: Any) -> None:
    pool = make_pool(0, 8, dsn=bouncer.dsn("app", application_name=app_name), timeout=5)
    held = [pool.getconn() for _ in range(8)]
    for conn in held:
        backend_pid(conn)
        conn.rollback()  # ends the transaction: PgBouncer takes the server session back
    assert clients(bouncer, app_name) == 8
    assert len({conn.info.backend_pid for conn in held}) == 8
    for conn in held:
        pool.putconn(conn)

    server_pids: set[int] = set()
    errors: list[BaseException] = []
    done = [0]
    lock = threading.Lock()

    def work() -> None:
        try:
            for _ in range(25):
                with pool.connection() as conn, conn.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid(), pg_sleep(0.002)")
                    pid = cur.fetchone()[0]
                with lock:
                    server_pids.add(pid)
                    done[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - started
    assert errors == []
    assert done[0] == 200
    assert 1 <= len(server_pids) <= POOL_SIZES["app"]
    servers = bouncer.show("SERVERS", "app")
    assert len(servers) <= POOL_SIZES["app"]
    assert pool.get_stats()["pool_size"] == 8
    figure(f"pgbouncer: {done[0]} transactions from 8 pool connections ran on "
           f"{len(server_pids)} server sessions in {elapsed:.2f} s, 0 errors")


def test_rollback_on_return_frees_the_only_server_session(
        bouncer: Bouncer, make_pool: MakePool, table: str, admin: Any) -> None:
    """In transaction mode a client keeps its server session until its transaction ends: a
    connection returned mid-transaction would hold the single session of ``one`` for good
    (the other client's query would wait for PgBouncer's query_wait_timeout) if the pool did
    not roll it back."""
    pool = make_pool(0, 2, dsn=bouncer.dsn("one"), timeout=5)
    first, second = pool.getconn(), pool.getconn()
    with first.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (1)")  # opens a transaction, left open
    assert bouncer.show("POOLS", "one")[0]["sv_active"] == 1
    pool.putconn(first)
    started = time.monotonic()
    with second.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        assert cur.fetchone()[0] == 0  # rolled back, not committed
    assert time.monotonic() - started < 1.0  # served at once, not after a wait
    second.rollback()
    pool.putconn(second)
    assert count_rows(admin, table) == 0
    assert wait_until(lambda: bouncer.show("POOLS", "one")[0]["sv_active"] == 0)


@pytest.mark.parametrize("health_check", [True, False], ids=["check-on", "check-off"])
def test_connections_pgbouncer_dropped(bouncer: Bouncer, make_pool: MakePool,
                                       health_check: bool, figure: Any) -> None:
    """``KILL`` on the console drops every client of a database (as a PgBouncer restart
    does): with the health check on, no dead connection reaches the application; with it off,
    each pooled connection fails once, then is replaced."""
    pool = make_pool(4, 4, dsn=bouncer.dsn("app"), timeout=5,
                     check_idle_after=0 if health_check else None)
    held = [pool.getconn() for _ in range(4)]
    for conn in held:
        pool.putconn(conn)
    bouncer.command("KILL app")
    bouncer.command("RESUME app")

    failures = 0
    for _ in range(2):
        held = [pool.getconn() for _ in range(4)]
        for conn in held:
            try:
                backend_pid(conn)
                conn.rollback()
            except psycopg2.OperationalError:
                failures += 1
            pool.putconn(conn)
    stats = pool.get_stats()
    if health_check:
        assert failures == 0
        assert stats.get("discarded_failed_check") == 4
    else:
        assert failures == 4  # at most one per pooled connection
        assert stats.get("discarded_broken") == 4
    assert stats["pool_size"] == 4
    with pool.connection() as conn:
        backend_pid(conn)
    figure(f"pgbouncer KILL, health check {'on' if health_check else 'off'}: "
           f"{failures} errors seen by the application over 8 checkouts of 4 connections")


def test_server_backends_terminated(bouncer: Bouncer, make_pool: MakePool,
                                    admin: Any) -> None:
    """A server session killed while idle in PgBouncer's pool is replaced by PgBouncer
    unseen; one killed inside a transaction fails that transaction, and the pool discards the
    client connection PgBouncer closed."""
    pool = make_pool(0, 2, dsn=bouncer.dsn("app"), timeout=5, check_idle_after=0)
    with pool.connection() as conn:
        idle_pid = backend_pid(conn)
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (idle_pid,))
    assert wait_until(lambda: idle_pid not in {row["remote_pid"]
                                             for row in bouncer.show("SERVERS", "app")})
    with pool.connection() as conn:
        assert backend_pid(conn) != idle_pid
    assert pool.get_stats().get("connections_discarded") == 0

    with pytest.raises(psycopg2.OperationalError), pool.connection() as conn:
        busy_pid = backend_pid(conn)
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (busy_pid,))
        backend_pid(conn)
    stats = pool.get_stats()
    assert stats.get("discarded_broken") == 1
    assert stats["pool_in_use"] == 0
    with pool.connection() as conn:
        assert backend_pid(conn) != busy_pid


def test_telemetry_through_pgbouncer(bouncer: Bouncer, otel: Otel) -> None:
    pool = ConnectionPool(2, 2, dsn=bouncer.dsn("app"), timeout=5, check_idle_after=0,
                          name="bouncer")
    try:
        instrument(pool, meter_provider=otel.meter_provider,
                   tracer_provider=otel.tracer_provider, leak_threshold=None,
                   checkout_spans="all")  # a span for each, though none of them waits
        with otel.tracer.start_as_current_span("request"):
            for _ in range(3):
                with pool.connection() as conn:
                    backend_pid(conn)
        held = [pool.getconn() for _ in range(2)]
        for conn in held:
            pool.putconn(conn)
        bouncer.command("KILL app")
        bouncer.command("RESUME app")
        with pool.connection() as conn:  # both idle ones fail the check: new ones are opened
            backend_pid(conn)
            # the background refills to minconn=2 while this one is in use, with no putconn
            assert wait_until(lambda: pool.get_stats()["pool_available"] == 1)
            metrics = otel.metrics()
            assert point(metrics[names.COUNT], {names.STATE: "used"}).value == 1
            assert point(metrics[names.COUNT], {names.STATE: "idle"}).value == 1
        metrics = otel.metrics()
        assert point(metrics[names.COUNT], {names.STATE: "used"}).value == 0
        assert point(metrics[names.COUNT], {names.STATE: "idle"}).value == 2
    finally:
        pool.close()
    assert point(metrics[names.DISCARDS], {names.REASON: "failed_check"}).value == 2
    assert point(metrics[names.USE_TIME]).count == 6
    assert point(metrics[names.CREATE_TIME]).count == 2  # the replacements (instrument() came
    # after the first two were opened)
    spans = otel.spans(names.SPAN_GETCONN)
    assert len(spans) == 3
    assert all(span.attributes["psycopg2_pool.outcome"] == "acquired" for span in spans)


def test_session_state_belongs_to_the_server_session(bouncer: Bouncer,
                                                     make_pool: MakePool) -> None:
    """What docs/production.md warns of, shown with ``one`` (a single server session): two
    pool connections are two PgBouncer clients but one PostgreSQL session."""
    pool = make_pool(0, 2, dsn=bouncer.dsn("one"), timeout=5)
    a, b = pool.getconn(), pool.getconn()
    a.autocommit = b.autocommit = True

    def setting(conn: Any) -> str:
        with conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            return str(cur.fetchone()[0])

    try:
        assert a.info.backend_pid != b.info.backend_pid  # PgBouncer's ids for its clients
        assert backend_pid(a) == backend_pid(b)  # ...the same server process behind both

        a.autocommit = False  # SET LOCAL: scoped to a's transaction, safe
        with a.cursor() as cur:
            cur.execute("SET LOCAL statement_timeout = '4321ms'")
        assert setting(a) == "4321ms"
        a.commit()
        a.autocommit = True
        assert setting(b) == "0"

        with a.cursor() as cur:  # plain SET: a session setting, which b now has too
            cur.execute("SET statement_timeout = '1234ms'")
            cur.execute("CREATE TEMP TABLE only_mine (id int)")
        assert setting(b) == "1234ms"
        with b.cursor() as cur:
            cur.execute("SELECT count(*) FROM only_mine")  # a's temporary table
            assert cur.fetchone()[0] == 0
    finally:
        with a.cursor() as cur:
            cur.execute("DISCARD ALL")  # leave the shared session clean for other tests
        pool.putconn(a)
        pool.putconn(b)


def test_close_disconnects_every_client(bouncer: Bouncer, app_name: str) -> None:
    pool = ConnectionPool(4, 4, dsn=bouncer.dsn("app", application_name=app_name))
    assert clients(bouncer, app_name) == 4
    pool.close()
    assert wait_until(lambda: clients(bouncer, app_name) == 0)


def test_a_fenced_server_behind_pgbouncer_is_noticed(server: Any) -> None:
    """PgBouncer (transaction mode) passes the server's report of
    ``default_transaction_read_only`` on to its clients: a read-write pool behind it notices a
    fenced server and replaces its connections (PgBouncer, not libpq, then chooses where the
    new ones go). On a server of this module's own, fenced for real."""
    from tests.support.cluster import set_read_only

    own = Bouncer(require_binary("pgbouncer"), server.uri)
    pool = ConnectionPool(2, 2, dsn=own.dsn(target_session_attrs="read-write"), timeout=5,
                          name="behind-pgbouncer")
    try:
        assert pool.role == "read-write"
        conn = pool.getconn()
        set_read_only(server, True)
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            cur.execute("CREATE TEMP TABLE fenced (i int)")
        assert conn.get_parameter_status("default_transaction_read_only") == "on"
        pool.putconn(conn)
        stats = pool.get_stats()
        assert stats["role_changes"] == 1
        assert stats["discarded_role_changed"] >= 1
    finally:
        pool.close()
        set_read_only(server, False)
        own.close()
