"""What ``telemetry.instrument()`` costs a pool, measured side by side in one run.

Scenarios (interleaved rounds, medians, ratios to the uninstrumented pool):

- bare getconn/putconn cycle, and the ``SELECT 1`` checkout-query-return cycle, each
  uninstrumented, instrumented with the leak detector off, instrumented (metrics + logs + leak
  detection, no active trace), and instrumented inside an active trace;
- the leak detector's checkout-site capture alone, per checkout;
- memory: RSS before and after 1,000,000 instrumented cycles (``--memory-cycles``).

The OpenTelemetry SDK is real: a MeterProvider with an in-memory reader collected every second
by a thread (as a periodic exporter would), and a TracerProvider with a no-op exporter.

    python3 benchmarks/telemetry_overhead.py            # ~1 minute
    python3 benchmarks/telemetry_overhead.py --quick    # seconds (the test suite's smoke run)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import server  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter  # noqa: E402

from psycopg2_pool import ConnectionPool  # noqa: E402
from telemetry import instrument, metrics, stacks  # noqa: E402
from telemetry.worker import WORKER  # noqa: E402


class Raising:
    """A listener that raises on every event: what a broken telemetry costs the pool."""

    def on_checkout(self, event: Any) -> None:
        raise RuntimeError("broken listener")

    def on_checkin(self, event: Any) -> None:
        raise RuntimeError("broken listener")


class NullExporter(SpanExporter):
    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bare(pool: ConnectionPool, n: int) -> None:
    getconn, putconn = pool.getconn, pool.putconn
    for _ in range(n):
        putconn(getconn())


def select1(pool: ConnectionPool, n: int) -> None:
    for _ in range(n):
        conn = pool.getconn()
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
        pool.putconn(conn)


class Variant:
    """A pool set up one way; ``run`` times ``n`` cycles of a workload in µs per cycle.

    ``hot_path``: the background flush is paused and the buffers may grow while timing; the
    buffered values are recorded into the SDK after the clock stops (and that cost is
    reported on its own). Otherwise everything runs as in production.
    """

    def __init__(self, name: str, dsn: str, setup: Callable[[ConnectionPool], Any],
                 traced: bool, tracer: Any, hot_path: bool = False) -> None:
        self.name = name
        self.pool = ConnectionPool(1, 2, dsn=dsn, name=name)
        self.handle = setup(self.pool)
        self.traced = traced
        self.tracer = tracer
        self.hot_path = hot_path
        self.flush_us: list[float] = []

    def run(self, workload: Callable[[ConnectionPool, int], None], n: int
            ) -> tuple[float, float]:
        """(wall µs, process CPU µs) per cycle; CPU counts every thread, the flush's too."""
        context = (self.tracer.start_as_current_span("bench") if self.traced
                   else contextlib.nullcontext())
        with self.paused(), context:
            started, cpu = time.perf_counter(), time.process_time()
            workload(self.pool, n)
            elapsed = (time.perf_counter() - started) / n * 1e6
            cpu_used = (time.process_time() - cpu) / n * 1e6
        if self.hot_path:
            values = len(self.handle.metrics.wait_times) + len(self.handle.metrics.use_times)
            started = time.perf_counter()
            self.handle.flush()
            if values:
                self.flush_us.append((time.perf_counter() - started) / values * 1e6)
        return elapsed, cpu_used

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        if not self.hot_path:
            yield
            return
        backlog, metrics.BACKLOG = metrics.BACKLOG, 10**9
        task, self.handle._task = self.handle._task, None
        WORKER.remove(task)
        try:
            yield
        finally:
            metrics.BACKLOG = backlog
            self.handle._task = WORKER.add(self.handle._background)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.uninstrument()
        self.pool.close()


def collector(reader: InMemoryMetricReader, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        reader.get_metrics_data()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("PSYCOPG2_POOL_BENCH_DSN"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--bare-cycles", type=int, default=50_000)
    parser.add_argument("--select-cycles", type=int, default=250)
    parser.add_argument("--memory-cycles", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="tiny numbers: a smoke run")
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "telemetry_overhead.md")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.bare_cycles, args.select_cycles, args.memory_cycles = 2, 500, 20, 2_000

    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(NullExporter()))
    tracer = tracer_provider.get_tracer("bench")
    stop = threading.Event()
    threading.Thread(target=collector, args=(reader, stop), daemon=True).start()
    logging.getLogger("psycopg2_pool").setLevel(logging.CRITICAL)  # the raising listener

    def instrumented(leaks: float | None) -> Callable[[ConnectionPool], Any]:
        return lambda pool: instrument(pool, meter_provider=meter_provider,
                                       tracer_provider=tracer_provider, leak_threshold=leaks)

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    with server(args.dsn) as dsn:
        variants = [
            Variant("uninstrumented", dsn, lambda pool: None, False, tracer),
            Variant("instrument(), leaks off", dsn, instrumented(None), False, tracer),
            Variant("instrument()", dsn, instrumented(30.0), False, tracer),
            Variant("instrument(), hot path only", dsn, instrumented(30.0), False, tracer,
                    hot_path=True),
            Variant("instrument(), in a trace", dsn, instrumented(30.0), True, tracer),
            Variant("a listener raising on every event", dsn,
                    lambda pool: pool.add_listener(Raising()), False, tracer),
        ]
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        # A round trip flips between ~25 and ~200 µs on these VMs as the scheduler moves
        # processes: SELECT 1 gets four times as many, shorter, interleaved rounds.
        for workload, n, rounds in ((bare, args.bare_cycles, args.rounds),
                                    (select1, args.select_cycles, args.rounds * 4)):
            for variant in variants:  # warm up
                variant.run(workload, max(1, n // 10))
            for _ in range(rounds):
                order = variants[:]
                random.shuffle(order)
                for variant in order:
                    results.setdefault((workload.__name__, variant.name), []).append(
                        variant.run(workload, n))

        say(f"# telemetry overhead ({time.strftime('%Y-%m-%d')})")
        say()
        say(f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}. Medians of {args.rounds} interleaved rounds of "
            f"{args.bare_cycles} bare cycles, and {args.rounds * 4} of {args.select_cycles} "
            f"SELECT 1 cycles.")
        say()
        say("| cycle | variant | µs per cycle | overhead µs | ratio | CPU µs per cycle "
            "| CPU ratio |")
        say("|---|---|---|---|---|---|---|")
        for workload_name in ("bare", "select1"):
            runs = results[(workload_name, "uninstrumented")]
            base = statistics.median(r[0] for r in runs)
            base_cpu = statistics.median(r[1] for r in runs)
            for variant in variants:
                runs = results[(workload_name, variant.name)]
                value = statistics.median(r[0] for r in runs)
                cpu = statistics.median(r[1] for r in runs)
                label = "getconn/putconn" if workload_name == "bare" else "SELECT 1"
                say(f"| {label} | {variant.name} | {value:.2f} | {value - base:+.2f} | "
                    f"{value / base:.3f}x | {cpu:.2f} | {cpu / base_cpu:.2f}x |")
        flush = [us for variant in variants for us in variant.flush_us]
        say()
        say("\"hot path only\": the background flush paused while timing; the latencies it "
            "buffered were then recorded into the SDK histograms at "
            f"{statistics.median(flush):.2f} µs per value (median), off the hot path.")
        for variant in variants:
            variant.close()

        # The checkout-site capture alone (what the leak detector adds per checkout).
        def deep(level: int) -> float:
            if level:
                return deep(level - 1)
            n = 200_000 if not args.quick else 2_000
            started = time.perf_counter()
            for _ in range(n):
                stacks.capture(1)
            return (time.perf_counter() - started) / n * 1e6

        capture_us = statistics.median(deep(8) for _ in range(5))
        say()
        say(f"Checkout-site capture (leak detector), 10-frame stack: {capture_us:.2f} µs "
            f"per checkout.")

        pool = ConnectionPool(1, 2, dsn=dsn, name="memory")
        handle = instrument(pool, meter_provider=meter_provider, leak_threshold=30.0)
        bare(pool, 20_000)
        handle.flush()
        before = rss_mb()
        started = time.perf_counter()
        bare(pool, args.memory_cycles)
        handle.flush()
        reader.get_metrics_data()
        after = rss_mb()
        say(f"Memory: {args.memory_cycles:,} instrumented cycles (leak detection on) in "
            f"{time.perf_counter() - started:.1f} s: RSS {before:.1f} MB -> {after:.1f} MB "
            f"({after - before:+.2f} MB).")
        handle.uninstrument()
        pool.close()
    stop.set()
    meter_provider.shutdown()
    tracer_provider.shutdown()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
