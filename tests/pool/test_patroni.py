"""The pool in front of a real Patroni cluster (issue 24): etcd 3.4 and two Patroni 3.0.2
nodes on loopback (``tests.support.patroni``), 8 threads writing through one
``target_session_attrs=read-write`` pool on both nodes (``host=127.0.0.1,127.0.0.1
port=P1,P2``), while Patroni (a) switches the leader over with ``patronictl switchover`` and
(b) fails over after the leader's node dies (SIGKILL of its Patroni and of its PostgreSQL),
the dead node then rejoining as a replica (pg_rewind).

What the application must see: no getconn failure (the pool's timeout outlasts the
failover), no more failed writes than were in flight when the leader went (8), writes on the
new leader soon after Patroni has one, and never a write on the old leader once it is a
replica. The bounds are Patroni's own timing plus the pool's reconnect backoff (at most
``MAX_DELAY`` = 0.5 s between attempts); see each test. Measured (21 runs of the crash, 13 of
the switchover, on a 2-CPU machine): always 8 failed writes and 0 getconn failures; the
first write on the new leader 12-460 ms after its PostgreSQL was promoted (the backoff).
Slow set: a cluster start per test (~5 s), ~28 s for the module.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from psycopg2_pool import ConnectionPool
from psycopg2_pool.reconnect import MAX_DELAY
from tests.support.cluster import Writers, has_table, make_table, running
from tests.support.patroni import LOOP_WAIT, TTL, PatroniCluster, PatroniNode
from tests.support.system import require_binary

pytestmark = pytest.mark.slow

#: The pool's and the writers' getconn timeout: longer than any failover here (TTL + a few s).
TIMEOUT = 30.0
THREADS = 8

Figure = Callable[[str], None]


@pytest.fixture
def cluster() -> Iterator[PatroniCluster]:
    require_binary("patroni")
    require_binary("patronictl", package="patroni")
    require_binary("etcd", package="etcd-server")
    pytest.importorskip("pgserver", reason="Patroni runs pgserver's PostgreSQL binaries")
    made = PatroniCluster()
    try:
        made.start(timeout=60)
        yield made
    finally:
        made.close()


def setup_writes(cluster: PatroniCluster, name: str) -> tuple[ConnectionPool, Writers]:
    leader, replica = cluster.leader(), cluster.replica()
    assert leader is not None
    table = f"w_{uuid.uuid4().hex[:10]}"
    conn = leader.admin()
    make_table(conn, table)  # who: the port of the PostgreSQL that took the row
    conn.close()
    cluster.wait_until(lambda: has_table(replica, table), 10, "the table to reach the replica")
    pool = ConnectionPool(THREADS, THREADS, dsn=cluster.dsn(target_session_attrs="read-write"),
                          timeout=TIMEOUT, name=name)
    return pool, Writers(pool, table, threads=THREADS, timeout=TIMEOUT)


def test_switchover_costs_only_the_writes_in_flight(cluster: PatroniCluster,
                                                    figure: Figure) -> None:
    """``patronictl switchover``: Patroni checkpoints the leader, stops it (fast: its sessions
    are terminated), checks that the candidate has its WAL, releases the leader key; the
    candidate takes it and promotes; the old leader is restarted as a replica. The pool's
    connections break with the stop; its reconnects find no read-write server until the
    promotion, then the new leader.

    Bound: the first write on the new leader within 5 s of running ``patronictl``. Measured
    at 2.0-2.5 s (no write at all for 1.3-1.8 s of it). From Patroni's and PostgreSQL's logs
    (one run): patronictl's start and request (0.43 s), Patroni's checks of the candidate
    (0.23 s), the checkpoint and fast stop of the leader (0.05 s), Patroni's wait before it
    releases the key (1.13 s: its next HA loop, which checks the candidate again), the
    candidate's promotion (0.12 s): 1.95 s; then the pool's next reconnect (MAX_DELAY = 0.5 s
    at most between attempts). 5 s leaves room for a slow machine without hiding a pool that
    would wait for its timeout (30 s)."""
    old, new = cluster.leader(), cluster.replica()
    assert old is not None
    pool, writers = setup_writes(cluster, "patroni-switchover")
    try:
        with running(writers):
            cluster.wait_until(lambda: writers.first_ok(0, who=str(old.pg_port)) is not None,
                               10, "writes on the leader")
            time.sleep(0.3)
            began = time.monotonic()
            cluster.switchover(new)
            returned = time.monotonic()
            cluster.wait_until(lambda: writers.first_ok(began, who=str(new.pg_port)) is not None,
                               TIMEOUT, "a write on the new leader")
            assert cluster.leader() is new
            cluster.wait_healthy(30)  # the old leader streams from the new one
            rejoined = time.monotonic()
            time.sleep(1.0)
        promoted = cluster.accepting_since(new)
        line = "patroni switchover: " + outcome(writers, began, old, new, promoted)
        line += (f"; patronictl returned after {(returned - began) * 1000:.0f} ms, the old "
                 f"leader streamed again after {rejoined - began:.1f} s")
        print(line)
        figure(line)
        with logs_on_failure(cluster, line):
            check(writers, began, old, new, rejoined)
            first = writers.first_ok(began, who=str(new.pg_port))
            assert first is not None and first - began < 5.0
    finally:
        pool.close()


def test_leader_crash_fails_over_after_the_ttl(cluster: PatroniCluster, figure: Figure) -> None:
    """SIGKILL of the leader's Patroni and PostgreSQL (and its backends: a dead node): the
    pool's connections break at once, but Patroni promotes the replica only once the dead
    leader's key has expired in etcd, TTL s after its last renewal (renewed every LOOP_WAIT
    s); the replica watches the key and promotes at once. Then the old node's Patroni is
    started again: it rewinds its PostgreSQL (use_pg_rewind) if it had diverged, and
    follows the new leader.

    Bound: TTL + LOOP_WAIT + 1.5 s + MAX_DELAY (8 s) from the kill to the first write on the
    new leader: the key's expiry (<= TTL = 5 s, plus etcd's lease expiry check, every 0.5 s),
    the replica's reaction and promotion (well under a second; LOOP_WAIT + 1.5 s allowed),
    the pool's next reconnect (<= 0.5 s). Measured at 4.7-5.7 s; the old node was rewound
    every time, and streamed again 4.4-5.6 s after its Patroni was started."""
    old, new = cluster.leader(), cluster.replica()
    assert old is not None
    pool, writers = setup_writes(cluster, "patroni-crash")
    bound = TTL + LOOP_WAIT + 1.5 + MAX_DELAY
    try:
        with running(writers):
            cluster.wait_until(lambda: writers.first_ok(0, who=str(old.pg_port)) is not None,
                               10, "writes on the leader")
            time.sleep(0.3)
            killed = time.monotonic()
            assert cluster.kill_leader() is old
            cluster.wait_until(lambda: writers.first_ok(killed, who=str(new.pg_port)) is not None,
                               TIMEOUT, "a write on the new leader")
            restarted = time.monotonic()
            cluster.start_node(old)
            cluster.wait_healthy(45)  # the old node (rewound) streams from the new leader
            rejoined = time.monotonic()
            time.sleep(1.0)
        promoted = cluster.accepting_since(new)
        line = "patroni leader crash: " + outcome(writers, killed, old, new, promoted)
        line += (f" (ttl {TTL} s, loop_wait {LOOP_WAIT} s, bound {bound} s); the old node "
                 f"{'was rewound and ' if cluster.rewound(old) else ''}streamed again "
                 f"{rejoined - restarted:.1f} s after its Patroni was started")
        print(line)
        figure(line)
        with logs_on_failure(cluster, line):
            check(writers, killed, old, new, rejoined)
            first = writers.first_ok(killed, who=str(new.pg_port))
            assert first is not None and first - killed < bound
    finally:
        pool.close()


def outcome(writers: Writers, began: float, old: PatroniNode, new: PatroniNode,
            promoted: float | None) -> str:
    """The figures: failed writes, how long no write succeeded, when the first write reached
    the new leader (after ``began``, after its PostgreSQL accepted read-write connections)."""
    failed = writers.failed(after=began)
    first = writers.first_ok(began, who=str(new.pg_port))
    assert first is not None
    last_old = max((w.at for w in writers.writes if w.ok and w.who == str(old.pg_port)),
                   default=began)
    since_promotion = "?" if promoted is None else f"{(first - promoted) * 1000:.0f}"
    return (f"{len(failed)} failed writes, "
            f"{sum(w.getconn_failed for w in writers.writes)} getconn failures, "
            f"first write on the new leader {(first - began) * 1000:.0f} ms after the start "
            f"and {since_promotion} ms after its promotion, no write for "
            f"{(first - last_old) * 1000:.0f} ms, {len(writers.writes)} writes in all")


def check(writers: Writers, began: float, old: PatroniNode, new: PatroniNode,
          rejoined: float) -> None:
    failed = writers.failed(after=began)
    assert not [w for w in writers.writes if w.getconn_failed], "a getconn failed"
    assert len(failed) <= THREADS, [w.error for w in failed]
    first = writers.first_ok(began, who=str(new.pg_port))
    assert first is not None
    # Never both at once: no write on the old leader once the new one has taken one.
    split = [w for w in writers.writes if w.ok and w.who == str(old.pg_port) and w.at > first]
    assert not split, f"{len(split)} writes reached the old leader after the new one took writes"
    assert writers.first_ok(rejoined) is not None, "no write after the old leader rejoined"
    assert {w.who for w in writers.writes if w.ok and w.at > rejoined} == {str(new.pg_port)}
    assert old.in_recovery()


@contextlib.contextmanager
def logs_on_failure(cluster: PatroniCluster, figures: str) -> Iterator[None]:
    """A failed assertion says what was measured and how Patroni's, PostgreSQL's and etcd's
    logs ended."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{figures}\n{cluster.logs()}") from None


