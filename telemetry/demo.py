"""psycopg2-pool-demo: an instrumented pool under load, a planted leak, metrics on loopback.

Starts an embedded PostgreSQL (pgserver) unless ``--dsn`` or ``PSYCOPG2_POOL_DEMO_DSN`` names a
server, runs worker threads against a small instrumented pool for ``--duration`` seconds with a
progress line, plants one leak and one burst that exhausts the pool, serves Prometheus metrics
on 127.0.0.1, and ends with a summary. Ctrl-C stops it cleanly at any time (exit status 130;
a second Ctrl-C interrupts the shutdown itself).
"""

from __future__ import annotations

import argparse
import errno
import io
import os
import random
import signal
import statistics
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

from psycopg2_pool import CheckoutEvent, ConnectionPool, PoolExhausted
from psycopg2_pool.testing import embedded_server

from .handle import instrument

DSN_ENV = "PSYCOPG2_POOL_DEMO_DSN"
SERVICE_NAME = "psycopg2-pool-demo"  # the metrics' service.name unless OTEL_SERVICE_NAME says
INTERRUPTED = 128 + signal.SIGINT  # the exit status of a program stopped by Ctrl-C (130)


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


class PortInUse(Exception):
    """The metrics port is taken: said in one line, before any server is started."""


def resource() -> Any:
    """The metrics' OpenTelemetry resource: ``service.name`` is ``psycopg2-pool-demo`` unless
    ``OTEL_SERVICE_NAME`` (or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``) names one."""
    from opentelemetry.sdk.resources import Resource

    detected = Resource.create()
    if str(detected.attributes.get("service.name", "")).startswith("unknown_service"):
        return Resource.create({"service.name": SERVICE_NAME})
    return detected


@contextmanager
def metrics_endpoint(port: int) -> Iterator[tuple[Any, int]]:
    """A MeterProvider whose metrics are served at http://127.0.0.1:<port>/metrics."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(port, addr="127.0.0.1")
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise PortInUse(
            f"cannot serve the metrics on 127.0.0.1:{port}: the port is in use (another demo, "
            f"or an exporter?). Choose another with --port PORT, or --port 0 for a free one."
        ) from None
    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=resource())
    try:
        yield provider, server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        provider.shutdown()


class Console(io.TextIOBase):
    """The demo's output: a live status line (in a terminal) that log lines, written from any
    thread, do not glue onto. A log line clears the status line, takes its place, and the status
    line is drawn again below it. Without a terminal every status is a line of its own."""

    def __init__(self, out: TextIO, live: bool) -> None:
        super().__init__()
        self.out, self.live = out, live
        self._lock = threading.RLock()
        self._status = ""   # the status line to draw again after a line of text
        self._shown = False  # whether it is on the screen, with the cursor after it

    def write(self, text: str) -> int:
        with self._lock:
            if self._shown:
                self.out.write("\r\033[K")  # back to the line's start, and clear it
                self._shown = False
            self.out.write(text)
            if self._status and text.endswith("\n"):
                self.out.write(self._status)
                self._shown = True
            self.out.flush()
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return self.out.isatty()

    def line(self, text: str = "") -> None:
        """One whole line of text, in one write (no other thread's line lands inside it)."""
        self.write(text + "\n")

    def status(self, text: str) -> None:
        """Show ``text`` as the status line (live), or print it as a line (not live)."""
        with self._lock:
            if not self.live:
                self.line(text)
                return
            self._status = text
            self.out.write("\r" + text + "\033[K")
            self._shown = True
            self.out.flush()

    def end_status(self) -> None:
        """Leave the last status on screen, as an ordinary line, and draw it no more."""
        with self._lock:
            if self._shown:
                self.out.write("\n")
            self._status, self._shown = "", False
            self.out.flush()


class Waits:
    """Listener collecting checkout waits for the summary's percentiles."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def on_checkout(self, event: CheckoutEvent) -> None:
        self.waits.append(event.wait_time)


def work(pool: ConnectionPool, stop: threading.Event, seed: int, queries: list[int]) -> None:
    """A request handler: check out, run a short query, return; think; repeat. Counts its
    queries in ``queries[seed]``, written by this thread only."""
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            with pool.connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT pg_sleep(%s)", (rng.uniform(0.001, 0.01),))
            queries[seed] += 1
        except PoolExhausted:
            pass  # counted by the pool: get_stats()["timeouts"]
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


def progress(elapsed: float, duration: float, stats: dict[str, Any], maxconn: float) -> str:
    """The status line, from the same statistics as the summary (the last one agrees with it)."""
    width = 30
    done = min(1.0, elapsed / duration)
    bar = "#" * int(done * width) + "-" * (width - int(done * width))
    return (f"[{bar}] {elapsed:5.1f}/{duration:.0f} s  getconn {stats['requests']:6d}  "
            f"in use {stats['pool_in_use']}/{maxconn}  waiting "
            f"{stats['requests_waiting']:2d}  timeouts {stats['timeouts']:4d}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] \
        if len(values) > 1 else values[0]


def shipped(relative: str) -> Path | None:
    """A file the project ships beside the package (``dashboards/...``, ``docs/...``): in the
    checkout this module runs from, else where the wheel installed it
    (``<prefix>/share/psycopg2-pool/``); None if neither has it."""
    roots = [Path(__file__).resolve().parent.parent]
    for scheme in (None, f"{os.name}_user"):
        try:
            data = sysconfig.get_path("data", scheme) if scheme else sysconfig.get_path("data")
        except KeyError:
            continue
        roots.append(Path(data) / "share" / "psycopg2-pool")
    return next((root / relative for root in roots if (root / relative).is_file()), None)


def where(relative: str) -> str:
    path = shipped(relative)
    return str(path) if path else f"{relative} in the psycopg2-pool repository"


@dataclass
class Report:
    """What the summary says, gathered while the pool was still open."""

    elapsed: float
    stats: dict[str, Any]
    queries: int
    waits: list[float]
    leaks: list[Any]
    interrupted: bool


def summary(console: Console, report: Report, port: int) -> None:
    stats, leaks = report.stats, report.leaks
    say = console.line
    say()
    say("Summary")
    say(f"  ran {report.elapsed:.1f} s: {stats['requests']} getconn calls, {report.queries} "
        f"queries; {stats['exhausted']} calls found every connection in use and waited, "
        f"{stats['timeouts']} of them gave up (timeouts)")
    say(f"  wait: p50 {percentile(report.waits, 50) * 1000:.2f} ms, p95 "
        f"{percentile(report.waits, 95) * 1000:.2f} ms, max "
        f"{max(report.waits, default=0) * 1000:.1f} ms")
    say(f"  connections opened {stats['connections_num']}, discarded "
        f"{stats['connections_discarded']}, in use at the end {stats['pool_in_use']}")
    if leaks:
        leak = leaks[0]
        say(f"  LEAK: a connection checked out {leak.held_s:.1f} s before the end was not returned "
            f"until the demo put it back on the way out.")
        say(f"        taken at {leak.site} (thread {leak.thread}, backend pid "
            f"{leak.backend_pid})")
        for frame in leak.stack[1:4]:
            say(f"        called from {frame}")
    else:
        say("  no leak found")
    say(f"\n  Metrics were served at http://127.0.0.1:{port}/metrics. To see them in Grafana, "
        f"scrape your application's\n  endpoint from Prometheus, as here:\n"
        f"      scrape_configs: [{{job_name: demo, static_configs: "
        f"[{{targets: ['127.0.0.1:{port}']}}]}}]\n"
        f"  and import the dashboard {where('dashboards/psycopg2-pool-overview.json')}\n"
        f"  (how: {where('docs/dashboards.md')}).")
    if report.interrupted:
        say("Interrupted: pool closed.")


def load(args: argparse.Namespace, dsn: str, provider: Any, console: Console,
         stop: threading.Event) -> Report:
    """The workload: workers, the planted leak, the burst; everything stopped and closed (so
    that no event is logged after the summary) before the report is returned."""
    started = time.monotonic()
    pool = ConnectionPool(1, args.maxconn, dsn=dsn, timeout=args.timeout, name="demo",
                          application_name="psycopg2-pool-demo")
    kept: list[Any] = []
    try:
        handle = instrument(pool, meter_provider=provider, leak_threshold=args.leak_threshold)
        waits = Waits()
        pool.add_listener(waits)
        queries = [0] * args.threads
        workers = [threading.Thread(target=work, args=(pool, stop, i, queries),
                                    name=f"worker-{i}") for i in range(args.threads)]
        for worker in workers:
            worker.start()
        planted = burst_done = False
        burst_thread: threading.Thread | None = None
        last_line = -2.0
        try:
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
                if console.live or elapsed - last_line >= 2:
                    console.status(progress(elapsed, args.duration, pool.get_stats(),
                                            pool.maxconn))
                    last_line = elapsed
                stop.wait(0.2)
        finally:
            interrupted = stop.is_set()
            stop.set()
            for worker in workers:
                worker.join(10)
            if burst_thread is not None:
                burst_thread.join(10)
        elapsed = time.monotonic() - started
        stats = pool.get_stats()
        console.status(progress(elapsed, args.duration, stats, pool.maxconn))
        console.end_status()
        report = Report(elapsed, stats, sum(queries), waits.waits, handle.leaks(), interrupted)
        for conn in kept:  # logged (connection_leak_returned) here, before the summary
            pool.putconn(conn)
        kept.clear()
        handle.uninstrument()
    finally:
        for conn in kept:
            pool.putconn(conn)
        pool.close()
    return report


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """The demo; returns the exit status: 0, 1 (the metrics port is taken), 130 (Ctrl-C)."""
    import structlog

    console = Console(out, live=out.isatty() and not args.no_progress)
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="%H:%M:%S"),
                    structlog.dev.ConsoleRenderer(colors=out.isatty())],
        logger_factory=structlog.WriteLoggerFactory(cast(TextIO, console)))
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def interrupt(*_: Any) -> None:
        stop.set()  # finish cleanly; a second Ctrl-C raises KeyboardInterrupt in the cleanup
        signal.signal(signal.SIGINT, signal.default_int_handler)

    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        signal.signal(signal.SIGINT, interrupt)
    try:
        # The port first: a taken port stops the demo before any server is started.
        with metrics_endpoint(args.port) as (provider, port):
            with embedded_server(args.dsn, cast(TextIO, console)) as dsn:
                console.line(f"Prometheus metrics: http://127.0.0.1:{port}/metrics")
                report = load(args, dsn, provider, console, stop)
            summary(console, report, port)
    except PortInUse as exc:
        print(f"psycopg2-pool-demo: {exc}", file=err, flush=True)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
        structlog.reset_defaults()
    return INTERRUPTED if report.interrupted else 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except KeyboardInterrupt:  # the second Ctrl-C, during the shutdown
        print("psycopg2-pool-demo: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
