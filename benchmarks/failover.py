"""Failover, side by side: this pool, psycopg_pool 3 (with ``check``) and SQLAlchemy's QueuePool
(with ``pool_pre_ping``), each behind the same multi-host DSN with
``target_session_attrs=read-write``, 8 threads writing (INSERT ... RETURNING; commit) through
8 connections.

- fenced primary: two servers A and B; A is writable and B read-only, then B turns writable
  and A read-only (``default_transaction_read_only``, reloaded: what a fenced or demoted
  primary, or an endpoint now pointing at a replica, looks like to a client). For the 6 s
  after the switch: failed writes, those after the first second, writes that B took, and
  when B took the first;
- switchover: a primary and a streaming standby (``pg_basebackup -R``); the primary is
  stopped (``-m fast``) and the standby promoted (``pg_ctl promote``): getconn failures, failed
  writes, and the first write after the promotion.

- cost: the bare checkout-and-return cycle of this pool with a role (``target_session_attrs=
  read-write``: a return reads the server's report) and without, against ``psycopg2.pool``,
  1 and 8 threads, interleaved rounds on the embedded server.

    python3 benchmarks/failover.py            # ~2 minutes; --only fenced|switchover|cost

Servers are the tests' own (tests/support/cluster.py: pgserver's binaries in temporary
directories). Results go to docs/reliability.md ("Failover").
"""

from __future__ import annotations

import argparse
import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common import ROOT  # noqa: F401 - puts the checkout on the import path

from tests.support.cluster import (
    Replicated,
    Writers,
    has_table,
    make_table,
    multi_host_dsn,
    node_of,
    running,
    set_read_only,
    wait_for,
)
from tests.support.faults import OwnServer

THREADS = 8
AFTER = 6.0  # seconds measured after the switch


@dataclass
class Peer:
    name: str
    make: Callable[[str], Any]  #: dsn -> pool
    getconn: Callable[[Any, float], Any]
    putconn: Callable[[Any, Any], None]
    close: Callable[[Any], None]


def peers() -> list[Peer]:
    from psycopg_pool import ConnectionPool as PsycopgPool
    from sqlalchemy import create_engine

    from psycopg2_pool import ConnectionPool

    def mine(dsn: str) -> Any:
        return ConnectionPool(THREADS, THREADS, dsn=dsn, timeout=10, name="failover")

    def psycopg_pool(dsn: str) -> Any:
        pool = PsycopgPool(dsn, min_size=THREADS, max_size=THREADS, timeout=10,
                           check=PsycopgPool.check_connection, open=True)
        pool.wait(10)
        return pool

    def sqlalchemy(dsn: str) -> Any:
        import psycopg2

        return create_engine("postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn),
                             pool_size=THREADS, max_overflow=0, pool_timeout=10,
                             pool_pre_ping=True)

    return [
        Peer("this pool", mine, lambda p, t: p.getconn(timeout=t), lambda p, c: p.putconn(c),
             lambda p: p.close()),
        Peer("psycopg_pool 3, check", psycopg_pool, lambda p, t: p.getconn(timeout=t),
             lambda p, c: p.putconn(c), lambda p: p.close()),
        Peer("SQLAlchemy QueuePool, pool_pre_ping", sqlalchemy,
             lambda e, t: e.raw_connection(), lambda e, c: c.close(), lambda e: e.dispose()),
    ]


@dataclass
class Result:
    peer: str
    getconn_failures: int
    failed: int
    failed_late: int
    ok: int
    first_ok_ms: float | None
    note: str = ""


def writers_for(peer: Peer, pool: Any, table: str) -> Writers:
    return Writers(pool, table, threads=THREADS, timeout=10,
                   getconn=lambda timeout: peer.getconn(pool, timeout),
                   putconn=lambda conn: peer.putconn(pool, conn))


def fenced(peer: Peer, a_server: OwnServer, b_server: OwnServer) -> Result:
    a, b = node_of(a_server), node_of(b_server)
    set_read_only(a_server, False)
    set_read_only(b_server, False)
    table = f"f_{uuid.uuid4().hex[:10]}"
    for node, who in ((a, "A"), (b, "B")):
        conn = node.admin()
        make_table(conn, table, who)
        conn.close()
    set_read_only(b_server, True)  # B: a replica's stand-in; libpq picks A
    pool = peer.make(multi_host_dsn([a, b], target_session_attrs="read-write"))
    writers = writers_for(peer, pool, table)
    try:
        with running(writers):
            time.sleep(1.0)
            set_read_only(b_server, False)
            switched = time.monotonic()
            set_read_only(a_server, True)
            time.sleep(AFTER)
            end = time.monotonic()
    finally:
        peer.close(pool)
    window = [w for w in writers.writes if switched <= w.at <= end]
    first = writers.first_ok(switched, who="B")
    return Result(peer.name, sum(w.getconn_failed for w in window),
                  sum(not w.ok and not w.getconn_failed for w in window),
                  sum(not w.ok and not w.getconn_failed and w.at > switched + 1 for w in window),
                  sum(w.ok and w.who == "B" for w in window),
                  None if first is None else (first - switched) * 1000)


def switchover(peer: Peer) -> Result:
    cluster = Replicated()
    try:
        primary, standby = cluster.primary, cluster.standby
        table = f"s_{uuid.uuid4().hex[:10]}"
        conn = primary.admin()
        make_table(conn, table)
        conn.close()
        wait_for(lambda: has_table(standby, table), 10, "the table on the standby")
        pool = peer.make(multi_host_dsn([primary, standby], target_session_attrs="read-write"))
        writers = writers_for(peer, pool, table)
        try:
            with running(writers):
                time.sleep(1.0)
                stopped = time.monotonic()
                primary.stop("fast")
                standby.promote()
                promoted = time.monotonic()
                time.sleep(3.0)
        finally:
            peer.close(pool)
        window = [w for w in writers.writes if w.at >= stopped]
        first = writers.first_ok(promoted, who=standby.port)
        return Result(peer.name, sum(w.getconn_failed for w in window),
                      sum(not w.ok and not w.getconn_failed for w in window),
                      sum(not w.ok and not w.getconn_failed and w.at > promoted + 1
                          for w in window),
                      sum(w.ok and w.who == standby.port for w in window),
                      None if first is None else (first - promoted) * 1000,
                      f"promotion took {(promoted - stopped) * 1000:.0f} ms")
    finally:
        cluster.close()


def table(title: str, results: list[Result], ok_label: str) -> str:
    lines = [f"### {title}", "",
             f"| pool | getconn failures | failed writes | failed after the first 1 s | "
             f"{ok_label} | first write on the new primary |",
             "|---|---|---|---|---|---|"]
    for r in results:
        first = "never" if r.first_ok_ms is None else f"{r.first_ok_ms:.0f} ms"
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.peer} | {r.getconn_failures:,} | {r.failed:,} | {r.failed_late:,} "
                     f"| {r.ok:,} | {first}{note} |")
    return "\n".join(lines)


def cost(rounds: int = 15, cycles: int = 40_000) -> str:
    import random
    import statistics
    import threading

    import psycopg2.extensions
    import psycopg2.pool
    from common import server

    from psycopg2_pool import ConnectionPool

    def run(getconn: Callable[[], Any], putconn: Callable[[Any], None], threads: int) -> float:
        def loop() -> None:
            for _ in range(cycles // threads):
                putconn(getconn())

        workers = [threading.Thread(target=loop) for _ in range(threads)]
        started = time.perf_counter()
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        return (time.perf_counter() - started) / cycles * 1e6

    lines = ["### Cost of the role check: bare cycle, µs (median of interleaved rounds)", "",
             "| threads | this pool | this pool, read-write role | psycopg2.pool | "
             "ratios to psycopg2.pool |", "|---|---|---|---|---|"]
    with server(None) as dsn:
        rw = psycopg2.extensions.make_dsn(dsn, target_session_attrs="read-write")
        for threads in (1, 8):
            pools: dict[str, Any] = {"bare": ConnectionPool(threads, threads, dsn=dsn),
                     "role": ConnectionPool(threads, threads, dsn=rw),
                     "psycopg2": psycopg2.pool.ThreadedConnectionPool(threads, threads, dsn)}
            times: dict[str, list[float]] = {k: [] for k in pools}
            for _ in range(rounds):
                order = list(pools.items())
                random.shuffle(order)
                for key, pool in order:
                    times[key].append(run(pool.getconn, pool.putconn, threads))
            med = {k: statistics.median(v) for k, v in times.items()}
            base = med["psycopg2"]
            lines.append(f"| {threads} | {med['bare']:.2f} | {med['role']:.2f} | {base:.2f} | "
                         f"{med['bare'] / base:.2f}x, {med['role'] / base:.2f}x |")
            pools["bare"].close()
            pools["role"].close()
            pools["psycopg2"].closeall()
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["fenced", "switchover", "cost"])
    args = parser.parse_args()
    print(f"{platform.platform()}, Python {platform.python_version()}, {THREADS} threads "
          f"writing; {time.strftime('%Y-%m-%d %H:%M')}\n")
    if args.only in (None, "fenced"):
        a_server, b_server = OwnServer(), OwnServer()
        try:
            results = [fenced(peer, a_server, b_server) for peer in peers()]
        finally:
            a_server.close()
            b_server.close()
        print(table(f"Fenced primary: the {AFTER:g} s after the switch", results,
                    "writes on B"))
        print()
    if args.only in (None, "switchover"):
        results = [switchover(peer) for peer in peers()]
        print(table("Switchover: primary stopped, standby promoted (3 s after)", results,
                    "writes on the promoted standby"))
        print()
    if args.only in (None, "cost"):
        print(cost())


if __name__ == "__main__":
    main()
