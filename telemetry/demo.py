"""psycopg2-pool-demo: an instrumented pool under load, a planted leak, metrics on loopback.

Starts an embedded PostgreSQL (pgserver) unless ``--dsn`` or ``PSYCOPG2_POOL_DEMO_DSN`` names a
server, runs worker threads against a small instrumented pool for ``--duration`` seconds with a
progress line, plants one leak and one burst that exhausts the pool, serves Prometheus metrics
on 127.0.0.1, and ends with a summary. Ctrl-C stops it cleanly at any time.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from psycopg2_pool import CheckoutEvent, ConnectionPool, PoolExhausted

from .handle import PoolInstrumentation, instrument

DSN_ENV = "PSYCOPG2_POOL_DEMO_DSN"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="psycopg2-pool-demo",
        description="Run an instrumented psycopg2 pool under a concurrent workload against an "
                    "embedded PostgreSQL, plant a leak and an exhausting burst, expose "
                    "Prometheus metrics, and print what the telemetry saw.")
    parser.add_argument("--dsn", default=os.environ.get(DSN_ENV),
                        help=f"libpq connection string of a server to use instead of the "
                             f"embedded one (default: ${DSN_ENV}, else embedded)")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds of load (default: 20)")
    parser.add_argument("--threads", type=int, default=8,
                        help="worker threads sharing the pool (default: 8)")
    parser.add_argument("--maxconn", type=int, default=4,
                        help="the pool's maxconn (default: 4)")
    parser.add_argument("--timeout", type=float, default=0.5,
                        help="seconds getconn may wait before it gives up (default: 0.5)")
    parser.add_argument("--leak-threshold", type=float, default=2.0,
                        help="seconds a checkout may last before it is reported as a leak "
                             "(default: 2)")
    parser.add_argument("--port", type=int, default=9464,
                        help="port of the Prometheus /metrics endpoint on 127.0.0.1 "
                             "(default: 9464; 0 picks a free one)")
    parser.add_argument("--no-progress", action="store_true",
                        help="print a line every few seconds instead of a live progress bar")
    args = parser.parse_args(argv)
    for name in ("duration", "timeout", "leak_threshold"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    for name in ("threads", "maxconn"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if not 0 <= args.port < 65536:
        parser.error("--port must be between 0 and 65535")
    return args


@contextmanager
def database(dsn: str | None, out: TextIO | None = None) -> Iterator[str]:
    """The given server, or an embedded PostgreSQL (pgserver) removed on the way out.

    Also used by the test suite and the benchmarks, so that there is one way to start one.
    """
    if dsn:
        yield dsn
        return
    import pgserver

    pgdata = tempfile.mkdtemp(prefix="psycopg2-pool-")
    if out is not None:
        print(f"Starting an embedded PostgreSQL in {pgdata} ...", file=out, flush=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)
        if out is not None:
            print("Embedded PostgreSQL stopped and removed.", file=out, flush=True)


@contextmanager
def metrics_endpoint(port: int) -> Iterator[tuple[Any, int]]:
    """A MeterProvider whose metrics are served at http://127.0.0.1:<port>/metrics."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import start_http_server

    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    server, thread = start_http_server(port, addr="127.0.0.1")
    try:
        yield provider, server.server_port
    finally:
        server.shutdown()
        thread.join(5)
        provider.shutdown()


class Waits:
    """Listener collecting checkout waits for the summary's percentiles."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def on_checkout(self, event: CheckoutEvent) -> None:
        self.waits.append(event.wait_time)


def work(pool: ConnectionPool, stop: threading.Event, seed: int, counts: dict[str, int]) -> None:
    """A request handler: check out, run a short query, return; think; repeat."""
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            with pool.connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT pg_sleep(%s)", (rng.uniform(0.001, 0.01),))
            counts["ok"] += 1
        except PoolExhausted:
            counts["timeouts"] += 1
        stop.wait(rng.uniform(0.0, 0.02))


def monthly_report(pool: ConnectionPool, kept: list[Any]) -> None:
    """The planted leak: takes a connection on an early-return path and never gives it back."""
    conn = pool.getconn()
    kept.append(conn)  # stored "for later", never returned: the leak the demo reports
    if kept:
        return
    pool.putconn(conn)


def burst(pool: ConnectionPool, stop: threading.Event, holders: int) -> None:
    """A burst of slow requests that holds every connection for a second."""
    def hold() -> None:
        try:
            with pool.connection():
                stop.wait(1.0)
        except PoolExhausted:
            pass

    threads = [threading.Thread(target=hold, name=f"burst-{i}") for i in range(holders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def progress(out: TextIO, live: bool, elapsed: float, duration: float, pool: ConnectionPool,
             counts: dict[str, int]) -> None:
    stats = pool.get_stats()
    width = 30
    done = min(1.0, elapsed / duration)
    bar = "#" * int(done * width) + "-" * (width - int(done * width))
    line = (f"[{bar}] {elapsed:5.1f}/{duration:.0f} s  checkouts {counts['ok']:6d}  "
            f"in use {stats['pool_in_use']}/{pool.maxconn}  waiting "
            f"{stats['requests_waiting']:2d}  timeouts {counts['timeouts']:4d}")
    if live:
        print("\r" + line, end="", file=out, flush=True)
    else:
        print(line, file=out, flush=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] \
        if len(values) > 1 else values[0]


def summary(out: TextIO, pool: ConnectionPool, handle: PoolInstrumentation, waits: Waits,
            counts: dict[str, int], port: int, elapsed: float) -> None:
    stats = pool.get_stats()
    leaks = handle.leaks()
    print("\n\nSummary", file=out)
    print(f"  ran {elapsed:.1f} s: {stats['requests']} getconn calls, {counts['ok']} queries; "
          f"{stats['exhausted']} calls found every connection in use and waited, "
          f"{stats['timeouts']} of them gave up (timeouts)", file=out)
    print(f"  wait: p50 {percentile(waits.waits, 50) * 1000:.2f} ms, p95 "
          f"{percentile(waits.waits, 95) * 1000:.2f} ms, max "
          f"{max(waits.waits, default=0) * 1000:.1f} ms", file=out)
    print(f"  connections opened {stats['connections_num']}, discarded "
          f"{stats['connections_discarded']}, in use at the end {stats['pool_in_use']}",
          file=out)
    if leaks:
        leak = leaks[0]
        print(f"  LEAK: a connection checked out {leak.held_s:.1f} s ago was never returned.",
              file=out)
        print(f"        taken at {leak.site} (thread {leak.thread}, backend pid "
              f"{leak.backend_pid})", file=out)
        for frame in leak.stack[1:4]:
            print(f"        called from {frame}", file=out)
    else:
        print("  no leak found", file=out)
    print(f"\n  Metrics were served at http://127.0.0.1:{port}/metrics. To see them in "
          f"Grafana, scrape it from Prometheus:\n"
          f"      scrape_configs: [{{job_name: demo, static_configs: "
          f"[{{targets: ['127.0.0.1:{port}']}}]}}]\n"
          f"  and import dashboards/psycopg2-pool-overview.json (docs/dashboards.md).",
          file=out, flush=True)


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    import structlog

    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="%H:%M:%S"),
                    structlog.dev.ConsoleRenderer(colors=out.isatty())],
        logger_factory=structlog.PrintLoggerFactory(out))
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: stop.set())  # Ctrl-C: finish cleanly
    started = time.monotonic()
    try:
        with database(args.dsn, out) as dsn, metrics_endpoint(args.port) as (provider, port):
            print(f"Prometheus metrics: http://127.0.0.1:{port}/metrics", file=out, flush=True)
            pool = ConnectionPool(1, args.maxconn, dsn=dsn, timeout=args.timeout, name="demo",
                                  application_name="psycopg2-pool-demo")
            handle = instrument(pool, meter_provider=provider,
                                leak_threshold=args.leak_threshold)
            waits = Waits()
            pool.add_listener(waits)
            counts = {"ok": 0, "timeouts": 0}
            workers = [threading.Thread(target=work, args=(pool, stop, i, counts),
                                        name=f"worker-{i}") for i in range(args.threads)]
            kept: list[Any] = []
            for worker in workers:
                worker.start()
            planted = burst_done = False
            burst_thread: threading.Thread | None = None
            live = out.isatty() and not args.no_progress
            last_line = 0.0
            while not stop.is_set():
                elapsed = time.monotonic() - started
                if elapsed >= args.duration:
                    break
                if not planted and elapsed >= args.duration * 0.15:
                    monthly_report(pool, kept)
                    planted = True
                if not burst_done and elapsed >= args.duration * 0.45:
                    burst_thread = threading.Thread(target=burst,
                                                    args=(pool, stop, args.maxconn * 2))
                    burst_thread.start()
                    burst_done = True
                if live or elapsed - last_line >= 2:
                    progress(out, live, elapsed, args.duration, pool, counts)
                    last_line = elapsed
                stop.wait(0.2)
            interrupted = stop.is_set()
            stop.set()
            for worker in workers:
                worker.join(10)
            if burst_thread is not None:
                burst_thread.join(10)
            elapsed = time.monotonic() - started
            progress(out, live, elapsed, args.duration, pool, counts)
            summary(out, pool, handle, waits, counts, port, elapsed)
            for conn in kept:
                pool.putconn(conn)
            handle.uninstrument()
            pool.close()
            if interrupted:
                print("Interrupted: pool closed.", file=out, flush=True)
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
        structlog.reset_defaults()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
