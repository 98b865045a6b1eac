"""A real switchover with streaming replication (issue 24, item 2): a primary and a standby
made with ``pg_basebackup -R`` from pgserver's own binaries, 8 threads writing through a
``target_session_attrs=read-write`` pool, the primary stopped, the standby promoted with
``pg_ctl promote``, then the old primary back as a standby of the new one.

Stopping the primary breaks its connections and the outage machinery takes over; libpq then
finds the promoted standby, and skips the old primary once it is back in recovery. Measured
before this test existed (one run): 0 getconn failures, 8 failed writes, first write 105 ms
after the promotion. Slow set: two servers, a base backup, a promotion (~10 s).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from psycopg2_pool import ConnectionPool
from tests.support.cluster import (
    Replicated,
    Writers,
    has_table,
    make_table,
    multi_host_dsn,
    running,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[Replicated]:
    pytest.importorskip("pgserver", reason="the cluster is made with pgserver's binaries")
    made = Replicated()
    yield made
    made.close()


def test_switchover_costs_only_the_writes_in_flight(cluster: Replicated) -> None:
    primary, standby = cluster.primary, cluster.standby
    table = f"w_{uuid.uuid4().hex[:10]}"
    conn = primary.admin()
    make_table(conn, table)  # who: the port of the server that took the row
    conn.close()
    wait_for(lambda: has_table(standby, table), 10, "the table to reach the standby")
    pool = ConnectionPool(8, 8, dsn=multi_host_dsn([primary, standby],
                                                     target_session_attrs="read-write"),
                          timeout=10, name="switchover")
    writers = Writers(pool, table, threads=8, timeout=10)
    try:
        with running(writers):
            time.sleep(0.5)
            assert writers.first_ok(0, who=primary.port) is not None
            stopped = time.monotonic()
            primary.stop("fast")
            standby.promote()
            promoted = time.monotonic()
            time.sleep(1.5)
            cluster.rejoin_as_standby(primary, standby)
            rejoined = time.monotonic()
            time.sleep(1.5)
        failed = writers.failed(after=stopped)
        first = writers.first_ok(promoted, who=standby.port)
        print(f"switchover: {len(failed)} failed writes, first write on the promoted standby "
              f"{None if first is None else round((first - promoted) * 1000)} ms after the "
              f"promotion ({round((promoted - stopped) * 1000)} ms after the stop)")
        assert not [w for w in writers.writes if w.getconn_failed], "a getconn failed"
        assert len(failed) <= 8, [w.error for w in failed]
        assert first is not None and first - promoted < 0.5
        late = [w for w in writers.writes if w.ok and w.at > rejoined and w.who != standby.port]
        assert not late, "a write reached the old primary after it rejoined as a standby"
        assert primary.in_recovery()
    finally:
        pool.close()


