"""Following the primary (issue 24): a pool whose ``target_session_attrs`` asks for a role
replaces every connection to a server that lost it, on real servers.

- the fenced primary: two servers behind one multi-host DSN, 8 threads writing; A turns
  read-only and B writable (what a fenced or demoted primary, or an endpoint now pointing at
  a replica, looks like to a client): at most the writes in flight fail, none after the first
  second, and B takes a write within 1 s;
- one server that turns read-only under a ``read-write`` pool: every connection to it goes
  (idle at once, checked out on return), one event and one warning for the incident;
- roles that are not checked (``any``, none given), and the cost of the check on a return.

The streaming-replication switchover is in test_switchover.py (slow set).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from structlog.testing import capture_logs

from psycopg2_pool import ConnectionPool, DiscardReason, PoolListener
from psycopg2_pool.events import RoleChangeEvent
from psycopg2_pool.roles import wanted_role
from telemetry import instrument
from tests.support.cluster import (
    Node,
    Writers,
    make_table,
    multi_host_dsn,
    node_of,
    running,
    set_read_only,
    wait_for,
)
from tests.support.faults import OwnServer
from tests.support.otel import Otel, point


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[OwnServer, OwnServer]]:
    """Two independent servers of this module's own, A and B."""
    a, b = OwnServer(), OwnServer()
    yield a, b
    a.close()
    b.close()


class Roles(PoolListener):
    def __init__(self) -> None:
        self.events: list[RoleChangeEvent] = []

    def on_role_change(self, event: RoleChangeEvent) -> None:
        self.events.append(event)


def test_wanted_role_follows_target_session_attrs() -> None:
    assert wanted_role({"target_session_attrs": "read-write"}) == "read-write"
    assert wanted_role({"target_session_attrs": "standby"}) == "standby"
    assert wanted_role({"target_session_attrs": "any"}) is None
    assert wanted_role({"target_session_attrs": "prefer-standby"}) is None
    assert wanted_role({}) is None


def test_a_fenced_primary_is_left_within_the_writes_in_flight(
        pair: tuple[OwnServer, OwnServer], otel: Otel) -> None:
    """The issue's scenario: today every write fails until max_lifetime (20,226 in 6 s)."""
    a_server, b_server = pair
    a, b = node_of(a_server), node_of(b_server)
    table = f"w_{uuid.uuid4().hex[:10]}"
    for node, who in ((a, "A"), (b, "B")):
        conn = node.admin()
        make_table(conn, table, who)
        conn.close()
    set_read_only(b_server, True)  # B: a replica's stand-in; libpq picks A
    roles = Roles()
    pool = ConnectionPool(8, 8, dsn=multi_host_dsn([a, b], target_session_attrs="read-write"),
                          timeout=5, name="fenced")
    pool.add_listener(roles)
    instrument(pool, meter_provider=otel.meter_provider, tracer_provider=otel.tracer_provider,
               leak_threshold=None)
    a_name, b_name = f"{a.socket_dir}:{a.port}", f"{b.socket_dir}:{b.port}"
    assert pool.servers() == {a_name: 8}
    writers = Writers(pool, table, threads=8, timeout=5)
    try:
        with capture_logs() as logs, running(writers):
            time.sleep(0.5)
            assert writers.first_ok(0, who="A") is not None
            set_read_only(b_server, False)  # the new primary first, as a switchover does
            switched = time.monotonic()
            set_read_only(a_server, True)
            time.sleep(3.0)
        failed = writers.failed(after=switched)
        late = writers.failed(after=switched + 1.0)
        first_b = writers.first_ok(switched, who="B")
        print(f"fenced primary: {len(failed)} failed writes, first write on B "
              f"{None if first_b is None else round((first_b - switched) * 1000)} ms after "
              f"the switch, {len(writers.writes)} writes in all")
        assert not [w for w in writers.writes if w.getconn_failed]
        assert len(failed) <= 8, [w.error for w in failed]
        assert not late, [w.error for w in late]
        assert first_b is not None and first_b - switched < 1.0
        assert all(w.who == "B" for w in writers.writes if w.ok and w.at > switched + 1.0)
        assert len(roles.events) == 1, roles.events
        event = roles.events[0]
        assert event.server == f"{a.socket_dir}:{a.port}" and event.role == "read-write"
        assert "default_transaction_read_only=on" in event.reported
        stats = pool.get_stats()
        assert stats["discarded_role_changed"] == 8, stats
        assert stats["role_changes"] == 1
        assert pool.servers() == {b_name: 8}
        # Telemetry: the change, then the move, one log event each; the counter; the
        # connections by server, as the dashboard's panel shows them.
        changed = [e for e in logs if e["event"] == "server_role_changed"]
        moved = [e for e in logs if e["event"] == "pool_moved"]
        assert len(changed) == 1 and changed[0]["server"] == a_name
        assert changed[0]["idle_closed"] + changed[0]["in_use"] == 8
        assert len(moved) == 1 and (moved[0]["lost"], moved[0]["server"]) == (a_name, b_name)
        assert moved[0]["after_s"] < 1.0
        metrics = otel.metrics()
        assert point(metrics["psycopg2_pool.role_changes"]).value == 1
        by_server = metrics["psycopg2_pool.server.connections"]
        assert point(by_server, {"server.address": b.socket_dir}).value == 8
        assert point(by_server, {"server.address": b.socket_dir}).attributes["server.port"] == \
            int(b.port)
    finally:
        pool.close()
        set_read_only(a_server, False)


def test_one_server_turning_read_only_loses_every_connection_once(
        pair: tuple[OwnServer, OwnServer], caplog: pytest.LogCaptureFixture) -> None:
    a_server, _ = pair
    a = node_of(a_server)
    roles = Roles()
    pool = ConnectionPool(4, 4, dsn=f"{a.dsn} target_session_attrs=read-write", timeout=2,
                          name="alone")
    pool.add_listener(roles)
    try:
        held = [pool.getconn() for _ in range(2)]  # 2 in use, 2 idle
        set_read_only(a_server, True)
        caplog.set_level(logging.WARNING, logger="psycopg2_pool")
        for conn in held:  # each notices on its first statement after the change
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        pool.putconn(held[0])  # the first return sweeps: 2 idle closed, 1 in use doomed
        assert len(roles.events) == 1
        assert (roles.events[0].idle_closed, roles.events[0].in_use) == (2, 2)
        pool.putconn(held[1])  # doomed already: discarded, no second event
        assert len(roles.events) == 1
        wait_for(lambda: pool.get_stats()["discarded_role_changed"] == 4, 5,
                 "the four connections to be replaced")
        warnings = [r for r in caplog.records if "no longer has the role" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "target_session_attrs=read-write" in warnings[0].getMessage()
        # No writable server is left: libpq refuses A, so the pool reports an outage.
        with pytest.raises(Exception, match=r"read-write|session is read-only|not available"):
            pool.getconn(timeout=0.5)
        set_read_only(a_server, False)
        conn = pool.getconn(timeout=5)  # A is writable again: the pool recovers by itself
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('default_transaction_read_only')")
            assert cur.fetchone()[0] == "off"
        pool.putconn(conn)
    finally:
        pool.close()
        set_read_only(a_server, False)


def test_a_pool_without_a_role_keeps_its_connections(pair: tuple[OwnServer, OwnServer]) -> None:
    a_server, _ = pair
    a = node_of(a_server)
    pool = ConnectionPool(2, 2, dsn=a.dsn, timeout=2)
    assert pool.role is None
    try:
        conn = pool.getconn()
        set_read_only(a_server, True)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        pool.putconn(conn)
        assert pool.get_stats()["discarded_role_changed"] == 0
        assert conn in pool.idle_connections
    finally:
        pool.close()
        set_read_only(a_server, False)


def test_a_standby_pool_leaves_a_promoted_server(pair: tuple[OwnServer, OwnServer]) -> None:
    """``target_session_attrs=read-only``: a server that turns writable loses that role (as a
    promoted standby does); here, a server that stops being read-only by default."""
    a_server, _ = pair
    a = node_of(a_server)
    set_read_only(a_server, True)
    pool = ConnectionPool(2, 2, dsn=f"{a.dsn} target_session_attrs=read-only", timeout=2)
    assert pool.role == "read-only"
    try:
        conn = pool.getconn()
        set_read_only(a_server, False)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        pool.putconn(conn)
        assert pool.get_stats()["discarded_role_changed"] >= 1
    finally:
        pool.close()
        set_read_only(a_server, False)


def test_a_connection_that_never_noticed_is_kept(pair: tuple[OwnServer, OwnServer]) -> None:
    """The signal is the server's report, which arrives with a reply: a connection returned
    without a statement since the change is kept, and goes on its first use."""
    a_server, _ = pair
    a = node_of(a_server)
    pool = ConnectionPool(1, 1, dsn=f"{a.dsn} target_session_attrs=read-write", timeout=2)
    try:
        conn = pool.getconn()
        set_read_only(a_server, True)
        pool.putconn(conn)  # no statement: nothing reported yet
        assert pool.get_stats()["discarded_role_changed"] == 0
        conn = pool.getconn()
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            cur.execute("CREATE TEMP TABLE x (i int)")
        pool.putconn(conn)
        assert pool.get_stats()["discarded_role_changed"] == 1
    finally:
        pool.close()
        set_read_only(a_server, False)


def test_node_dsn_is_usable(pair: tuple[OwnServer, OwnServer]) -> None:
    a: Node = node_of(pair[0])
    conn: Any = psycopg2.connect(a.dsn)
    assert conn.get_parameter_status("in_hot_standby") == "off"
    conn.close()


def test_discard_reasons_are_listed() -> None:
    assert DiscardReason.ROLE_CHANGED in DiscardReason.ALL
    assert DiscardReason.DRAINED in DiscardReason.ALL


def test_autocommit_returns_look_at_the_role_every_role_sample(
        pair: tuple[OwnServer, OwnServer]) -> None:
    """A refused autocommit write leaves no transaction to roll back, so its return is plain:
    plain returns read the server's role at most every ROLE_SAMPLE seconds per connection
    (the read costs ~165 ns), and the refused writes repeat for at most that long."""
    from psycopg2_pool.replacement import ROLE_SAMPLE

    a_server, _ = pair
    a = node_of(a_server)

    def autocommit(conn: Any) -> None:
        conn.autocommit = True

    pool = ConnectionPool(1, 1, dsn=f"{a.dsn} target_session_attrs=read-write", timeout=2,
                          configure=autocommit)
    try:
        conn = pool.getconn()
        pool.putconn(conn)  # looked at now: the next look is due in ROLE_SAMPLE
        set_read_only(a_server, True)
        conn = pool.getconn()
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            cur.execute("CREATE TEMP TABLE x (i int)")
        pool.putconn(conn)
        if pool.get_stats()["discarded_role_changed"] == 0:  # within the sample: kept
            time.sleep(ROLE_SAMPLE * 1.5)
            conn = pool.getconn()
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            pool.putconn(conn)
        assert pool.get_stats()["discarded_role_changed"] == 1
        assert pool.get_stats()["role_changes"] == 1
    finally:
        pool.close()
        set_read_only(a_server, False)


def test_an_open_under_way_at_the_change_is_not_a_second_incident(
        pair: tuple[OwnServer, OwnServer]) -> None:
    """A connection being opened to the server when its role change is noticed reports the
    server's old role (its startup report predates the change): it is closed when placed,
    not counted as "moved", and its first use does not start a second incident (found by
    review: role_changes went to 2, with a "moved from A to A")."""
    import threading

    a_server, _ = pair
    a = node_of(a_server)
    gate, inside = threading.Event(), threading.Event()
    armed = {"on": False}

    def configure(conn: Any) -> None:
        if armed["on"]:
            armed["on"] = False
            inside.set()
            gate.wait(5)

    roles = Roles()
    restored: list[Any] = []
    roles.on_role_restored = restored.append  # type: ignore[attr-defined]
    pool = ConnectionPool(1, 2, dsn=f"{a.dsn} target_session_attrs=read-write", timeout=2,
                          configure=configure)
    pool.add_listener(roles)
    try:
        held = pool.getconn()
        armed["on"] = True
        waiter_result: list[Any] = []
        waiter = threading.Thread(target=lambda: waiter_result.append(
            _attempt(lambda: pool.getconn(timeout=1))))
        waiter.start()
        assert inside.wait(5)  # the background open has connected, and is in configure
        set_read_only(a_server, True)
        with held.cursor() as cur:
            cur.execute("SELECT 1")
        pool.putconn(held)  # notices: the sweep, incident 1
        gate.set()
        waiter.join(10)
        wait_for(lambda: pool.get_stats()["discarded_role_changed"] == 2, 5,
                 "the open under way to be closed as role_changed")
        assert len(roles.events) == 1 and pool.get_stats()["role_changes"] == 1
        assert restored == []  # no server with the role was reached: no "moved"
    finally:
        gate.set()
        pool.close()
        set_read_only(a_server, False)


def _attempt(call: Any) -> Any:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the waiter may time out: no writable server
        return exc
