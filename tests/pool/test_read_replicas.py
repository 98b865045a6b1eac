"""A read pool on replicas beside the write pool (issue 24, item 5), on a primary and two
streaming standbys: libpq's ``target_session_attrs=read-only`` and
``load_balance_hosts=random`` spread the read pool over the standbys, the write pool stays on
the primary, ``servers()`` and the telemetry say where each connection is, and a standby
promoted under the read pool loses its connections to the other standby.

Slow set: a primary, two base backups, a promotion (~10 s).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from psycopg2_pool import ConnectionPool
from telemetry import instrument
from tests.support.cluster import Replicated, multi_host_dsn, wait_for
from tests.support.otel import Otel

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[Replicated]:
    pytest.importorskip("pgserver", reason="the cluster is made with pgserver's binaries")
    made = Replicated(standbys=2)
    yield made
    made.close()


def name(node: object) -> str:
    return f"{node.socket_dir}:{node.port}"  # type: ignore[attr-defined]


def test_a_read_pool_spreads_over_the_standbys_and_leaves_a_promoted_one(
        cluster: Replicated, otel: Otel) -> None:
    primary, (s1, s2) = cluster.primary, cluster.standbys
    nodes = [primary, s1, s2]
    writes = ConnectionPool(4, 4, dsn=multi_host_dsn(nodes, target_session_attrs="read-write"),
                            timeout=10, name="app-rw")
    reads = ConnectionPool(16, 16, dsn=multi_host_dsn(nodes, target_session_attrs="read-only",
                                                      load_balance_hosts="random"),
                           timeout=10, name="app-ro")
    instrument(reads, meter_provider=otel.meter_provider, leak_threshold=None)
    try:
        assert writes.servers() == {name(primary): 4}
        spread = reads.servers()
        assert set(spread) == {name(s1), name(s2)}, spread  # both standbys, never the primary
        assert sum(spread.values()) == 16
        by_server = otel.metrics()["psycopg2_pool.server.connections"]
        seen = {(p.attributes["server.address"], p.attributes["server.port"]): p.value
                for p in by_server.data.data_points}
        assert seen == {(s.socket_dir, int(s.port)): spread[name(s)] for s in (s1, s2)}

        # s1 is promoted: it leaves recovery, so it is no longer "read-only" for libpq, and
        # each read connection on it goes at its next use.
        s1.promote()
        wait_for(lambda: not s1.in_recovery(), 10, "the promotion")
        for _ in range(3):
            conns = [reads.getconn() for _ in range(16)]
            for conn in conns:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_is_in_recovery()")
                    cur.fetchone()
                reads.putconn(conn)
            time.sleep(0.2)
        wait_for(lambda: set(reads.servers()) == {name(s2)}, 10,
                 f"the read pool to leave the promoted standby: {reads.servers()}")
        assert reads.get_stats()["role_changes"] == 1
        conn = reads.getconn()
        with conn.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery()")
            assert cur.fetchone()[0] is True
        reads.putconn(conn)
    finally:
        reads.close()
        writes.close()
