"""Outages, side by side: this pool and psycopg_pool 3 through a real server stop and start.

- short outage: 8 threads loop ``getconn(timeout=5)`` / ``SELECT 1`` / ``putconn`` on a pool of
  8 (min = max = 8, timeout 5 s) while the server is stopped (``pg_ctl stop -m fast``) for 1.5 s
  and started again: getconn failures, failed queries, and the time from the moment the
  server accepts again (a probe connects every 5 ms) to the first successful checkout;
- long outage: against a stopped server, 8 threads x 3 ``getconn(timeout=1)`` (min 0, max 8):
  how long each call took to fail, with what, and how many connection attempts the pool made;
- ``cursor()`` cost: this pool's connections refuse ``cursor()`` once returned; the check's
  cost, timed against a plain psycopg2 connection.

    python3 benchmarks/outage.py            # ~25 s; --runs N repeats the short outage

The server is the tests' own embedded one (``tests/support/faults.py``: pgserver in a temporary
directory), since it is stopped for real. Results go to docs/reliability.md ("Outages").
"""

from __future__ import annotations

import argparse
import platform
import statistics
import threading
import time
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

import psycopg2
from common import ROOT  # noqa: F401 - puts the checkout on the import path

from tests.support.faults import OwnServer

THIS = "this pool"
PSYCOPG_POOL = "psycopg_pool 3"


@dataclass
class Peer:
    """One pool behind one interface: make it, check out, query, return, its attempt count."""

    name: str
    make: Callable[[str, int, int, float], Any]
    getconn: Callable[[Any, float], Any]
    query: Callable[[Any], None]
    putconn: Callable[[Any, Any], None]
    attempts: Callable[[Any], int]
    close: Callable[[Any], None]


def _this_pool() -> Peer:
    from psycopg2_pool import ConnectionPool

    def make(uri: str, minconn: int, maxconn: int, timeout: float) -> Any:
        return ConnectionPool(minconn, maxconn, timeout=timeout, dsn=uri)

    def query(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()

    return Peer(THIS, make, lambda pool, t: pool.getconn(timeout=t), query,
                lambda pool, conn: pool.putconn(conn),
                lambda pool: int(pool.get_stats()["connections_errors"]),
                lambda pool: pool.close())


def _psycopg_pool() -> Peer:
    import psycopg_pool

    def make(uri: str, minconn: int, maxconn: int, timeout: float) -> Any:
        return psycopg_pool.ConnectionPool(uri, min_size=minconn, max_size=maxconn,
                                           timeout=timeout, open=True)

    def query(conn: Any) -> None:
        conn.execute("SELECT 1").fetchone()

    return Peer(PSYCOPG_POOL, make, lambda pool, t: pool.getconn(timeout=t), query,
                lambda pool, conn: pool.putconn(conn),
                lambda pool: int(pool.get_stats().get("connections_errors", 0)),
                lambda pool: pool.close(timeout=1))


@contextmanager
def quiet_logs() -> Iterator[None]:
    """Both pools warn on every failed attempt; the table says what matters."""
    import logging

    loggers = [logging.getLogger(n) for n in ("psycopg2_pool", "psycopg.pool")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# -- short outage ------------------------------------------------------------------------------

@dataclass
class Short:
    getconn_failures: list[str] = field(default_factory=list)
    query_failures: int = 0
    checkouts: list[float] = field(default_factory=list)  # times of good checkouts
    cycles: int = 0
    recovery: float = 0.0  # first good checkout after the server accepted, seconds
    attempts: int = 0


def short_outage(peer: Peer, server: OwnServer, outage: float = 1.5,
                 after: float = 3.0) -> Short:
    pool = peer.make(server.uri, 8, 8, 5.0)
    seen = Short()
    lock = threading.Lock()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                conn = peer.getconn(pool, 5.0)
            except Exception as exc:  # noqa: BLE001 - counted, whatever the pool raises
                with lock:
                    seen.getconn_failures.append(type(exc).__name__)
                continue
            got = monotonic()
            try:
                peer.query(conn)
                with lock:
                    seen.checkouts.append(got)
                    seen.cycles += 1
            except Exception:  # noqa: BLE001 - a query on a dead session
                with lock:
                    seen.query_failures += 1
            finally:
                peer.putconn(pool, conn)
            time.sleep(0.001)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        server.stop()
        time.sleep(outage)
        began, accepted, _ = server.start_timed()
        time.sleep(after)
        stop.set()
        for thread in threads:
            thread.join(15)
        seen.attempts = peer.attempts(pool)
    finally:
        stop.set()
        peer.close(pool)
    firsts = [t for t in seen.checkouts if t >= began]
    seen.recovery = (min(firsts) - accepted) if firsts else float("nan")
    return seen


# -- long outage -------------------------------------------------------------------------------

@dataclass
class Long:
    durations: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    elapsed: float = 0.0
    message: str = ""


def long_outage(peer: Peer, server: OwnServer) -> Long:
    """8 threads x 3 getconn(timeout=1) against a stopped server (started again after)."""
    server.stop()
    seen = Long()
    lock = threading.Lock()
    try:
        pool = peer.make(server.uri, 0, 8, 1.0)

        def caller() -> None:
            for _ in range(3):
                started = monotonic()
                name = "none (got a connection)"
                try:
                    peer.putconn(pool, peer.getconn(pool, 1.0))
                except Exception as exc:  # noqa: BLE001 - what each pool raises is the point
                    name = type(exc).__name__
                    with lock:
                        seen.message = seen.message or str(exc)
                with lock:
                    seen.durations.append(monotonic() - started)
                    seen.errors[name] = seen.errors.get(name, 0) + 1

        try:
            began = monotonic()
            threads = [threading.Thread(target=caller) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            seen.elapsed = monotonic() - began
            seen.attempts = peer.attempts(pool)
        finally:
            peer.close(pool)
    finally:
        server.start()
    return seen


# -- cursor() on a pooled connection ---------------------------------------------------------

def cursor_cost(server: OwnServer) -> tuple[float, float]:
    """(ns per conn.cursor() on a checked-out pooled connection, on a plain one)."""
    from psycopg2_pool import ConnectionPool

    pool = ConnectionPool(1, 1, dsn=server.uri)
    plain = psycopg2.connect(server.uri)
    try:
        pooled = pool.getconn()
        number = 200_000
        results = []
        for conn in (pooled, plain):
            best = min(timeit.repeat(conn.cursor, number=number, repeat=7))
            results.append(best / number * 1e9)
        pool.putconn(pooled)
    finally:
        plain.close()
        pool.close()
    return results[0], results[1]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="short outages per pool")
    args = parser.parse_args()
    peers = [_this_pool(), _psycopg_pool()]
    server = OwnServer()
    try:
        with quiet_logs():
            shorts: dict[str, list[Short]] = {p.name: [] for p in peers}
            for _ in range(args.runs):
                for peer in peers:
                    shorts[peer.name].append(short_outage(peer, server))
            longs = {peer.name: long_outage(peer, server) for peer in peers}
        pooled_ns, plain_ns = cursor_cost(server)
    finally:
        server.close()

    print(f"Outages: {platform.python_implementation()} {platform.python_version()}, "
          f"psycopg2 {psycopg2.__version__.split()[0]}, "  # type: ignore[attr-defined]
          f"{time.strftime('%Y-%m-%d')}\n")
    print("## 1.5 s outage (stop, start) under 8 threads, pool of 8, getconn(timeout=5)\n")
    print("| pool | getconn failures | failed queries | first checkout after the server "
          "accepted | failed attempts | cycles |")
    print("|---|---|---|---|---|---|")
    for name, runs in shorts.items():
        for run in runs:
            kinds = ", ".join(sorted(set(run.getconn_failures)))
            failures = f"{len(run.getconn_failures)} ({kinds})" if run.getconn_failures else "0"
            print(f"| {name} | {failures} | {run.query_failures} | {_ms(run.recovery)} | "
                  f"{run.attempts} | {run.cycles:,} |")
        if len(runs) > 1:
            print(f"| {name}, median of {len(runs)} | "
                  f"{statistics.median(len(r.getconn_failures) for r in runs):g} | "
                  f"{statistics.median(r.query_failures for r in runs):g} | "
                  f"{_ms(statistics.median(r.recovery for r in runs))} | | |")
    print("\n## Server stopped: 8 threads x 3 getconn(timeout=1), pool of 0 to 8\n")
    print("| pool | each call failed after | raised | connection attempts | over |")
    print("|---|---|---|---|---|")
    for name, seen in longs.items():
        raised = ", ".join(f"{n} x{c}" for n, c in sorted(seen.errors.items()))
        print(f"| {name} | {min(seen.durations):.2f}-{max(seen.durations):.2f} s | {raised} | "
              f"{seen.attempts} | {seen.elapsed:.1f} s |")
    for name, seen in longs.items():
        print(f"\n{name}'s message: {seen.message}")
    print("\n## cursor() on a checked-out connection\n")
    print(f"this pool's connection: {pooled_ns:.0f} ns; plain psycopg2 connection: "
          f"{plain_ns:.0f} ns; the returned-connection check costs {pooled_ns - plain_ns:.0f} ns")


if __name__ == "__main__":
    main()
