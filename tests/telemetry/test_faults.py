"""Telemetry that blocks must not stall the pool: only the thread that calls into the blocked
exporter, processor or logger waits, never the pool's lock or the other threads' checkouts.
(Telemetry that raises is covered next to each signal's tests.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from psycopg2_pool import ConnectionPool, PoolExhausted
from telemetry import checkouts, instrument
from tests.support.pools import MakePool

BLOCK = 1.5  # how long the blocked telemetry holds its caller


def cycles_while(pool: ConnectionPool, blocked: threading.Event, n: int = 300) -> float:
    """Seconds another thread takes for ``n`` checkouts while ``blocked`` is set."""
    assert blocked.wait(5), "the telemetry never blocked"
    started = time.monotonic()
    for _ in range(n):
        pool.putconn(pool.getconn())
    assert blocked.is_set(), "the blocked call ended before the other thread finished"
    return time.monotonic() - started


def test_a_blocking_span_processor_holds_only_its_own_thread(make_pool: MakePool) -> None:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    blocked = threading.Event()

    class Blocking(SpanProcessor):
        def on_end(self, span: Any) -> None:
            if span.name == "getconn" and not blocked.is_set():
                blocked.set()
                time.sleep(BLOCK)
                blocked.clear()

    provider = TracerProvider()
    provider.add_span_processor(Blocking())
    pool = make_pool(2, 2, timeout=5)
    instrument(pool, tracer_provider=provider, leak_threshold=None, checkout_spans="all")
    traced: list[Any] = []

    def in_a_trace() -> None:
        with provider.get_tracer("t").start_as_current_span("request"):
            traced.append(pool.getconn())

    thread = threading.Thread(target=in_a_trace)
    thread.start()
    assert cycles_while(pool, blocked) < BLOCK / 2
    thread.join(5)
    pool.putconn(traced[0])  # the blocked thread got its connection in the end
    assert pool.get_stats()["pool_in_use"] == 0
    provider.shutdown()


def test_a_blocking_metric_exporter_neither_stalls_nor_grows(make_pool: MakePool,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        PeriodicExportingMetricReader,
    )

    release = threading.Event()
    exporting = threading.Event()

    class Stuck(MetricExporter):
        def __init__(self) -> None:
            super().__init__(preferred_temporality={}, preferred_aggregation={})

        def export(self, metrics_data: Any, timeout_millis: float = 10_000,
                   **kwargs: Any) -> MetricExportResult:
            exporting.set()
            release.wait(30)
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            release.set()

    monkeypatch.setattr(checkouts, "BACKLOG", 1000)  # small, to see the bound kick in
    reader = PeriodicExportingMetricReader(Stuck(), export_interval_millis=50)
    provider = MeterProvider(metric_readers=[reader])
    pool = make_pool(1, 1)
    handle = instrument(pool, meter_provider=provider, leak_threshold=None)
    assert exporting.wait(5)
    started = time.monotonic()
    for _ in range(20_000):
        pool.putconn(pool.getconn())
    elapsed = time.monotonic() - started
    assert elapsed < 5  # ~0.1 s normally: the stuck export thread is not in the way
    assert len(handle.metrics.wait_times) <= 1001 and len(handle.metrics.use_times) <= 1001
    release.set()
    provider.shutdown()


@pytest.fixture
def blocking_logger() -> Iterator[tuple[Any, threading.Event]]:
    blocked = threading.Event()
    done = threading.Event()

    class Logger:
        """A logger whose every call blocks, as a logging handler on a full pipe would (until
        the test is over: the pool's close then logs without a wait)."""

        def __getattr__(self, level: str) -> Any:
            def log(event: str, **kw: Any) -> None:
                if not blocked.is_set() and not done.is_set():
                    blocked.set()
                    time.sleep(BLOCK)
                    blocked.clear()
            return log

    yield Logger(), blocked
    done.set()  # torn down before make_pool, which closes the pools


def test_a_blocking_logger_on_exhaustion_holds_only_the_thread_that_timed_out(
        make_pool: MakePool, blocking_logger: tuple[Any, threading.Event]) -> None:
    logger, blocked = blocking_logger
    pool = make_pool(2, 2)
    instrument(pool, logger=logger, leak_threshold=None)
    held = [pool.getconn(), pool.getconn()]
    errors: list[BaseException] = []

    def exhaust() -> None:
        try:
            pool.getconn(timeout=0.01)
        except PoolExhausted as exc:
            errors.append(exc)

    thread = threading.Thread(target=exhaust)
    thread.start()
    assert blocked.wait(5)
    started = time.monotonic()
    pool.putconn(held.pop())  # the pool is not locked by the blocked logger
    for _ in range(300):
        pool.putconn(pool.getconn())
    assert time.monotonic() - started < BLOCK / 2 and blocked.is_set()
    thread.join(5)
    assert len(errors) == 1
    pool.putconn(held.pop())


def test_a_blocking_logger_for_leak_reports_stalls_nothing(
        make_pool: MakePool, blocking_logger: tuple[Any, threading.Event]) -> None:
    logger, blocked = blocking_logger
    pool = make_pool(1, 2)
    handle = instrument(pool, logger=logger, leak_threshold=0.05)
    leaked = pool.getconn()
    assert blocked.wait(5)  # the background report of the leak is stuck in the logger
    assert cycles_while(pool, blocked) < BLOCK / 2
    pool.putconn(leaked)
    handle.uninstrument()
