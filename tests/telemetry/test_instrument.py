"""instrument()/uninstrument(): idempotence, clean removal, and telemetry that fails safely."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from structlog.testing import capture_logs

from psycopg2_pool import ConnectionPool, PoolExhausted
from telemetry import instrument, instrumentation, names, uninstrument
from telemetry.worker import WORKER
from tests.support.otel import Otel, point


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(1, 2, dsn=dsn, name="inst-test")
    yield pool
    pool.close()


def test_instrument_twice_returns_the_same_handle(pool: ConnectionPool, otel: Otel) -> None:
    first = instrument(pool, meter_provider=otel.meter_provider, leak_threshold=None)
    second = instrument(pool, meter_provider=otel.meter_provider, leak_threshold=None)
    assert first is second
    # the checkout recorder, metrics, spans, logs, and the handle (on_close)
    assert len(pool.listeners) == 5
    pool.putconn(pool.getconn())
    assert point(otel.metrics()[names.USE_TIME]).count == 1  # not counted twice


def test_uninstrument_removes_everything(pool: ConnectionPool, otel: Otel) -> None:
    handle = instrument(pool, meter_provider=otel.meter_provider,
                        tracer_provider=otel.tracer_provider, leak_threshold=1)
    assert WORKER.running
    pool.putconn(pool.getconn())
    handle.uninstrument()
    handle.uninstrument()  # idempotent
    assert pool.listeners == ()
    assert instrumentation(pool) is None
    WORKER.join()
    assert not WORKER.running, [h for h in __import__("telemetry").instrumented_pools()]
    before = point(otel.metrics()[names.USE_TIME]).count if names.USE_TIME in otel.metrics() \
        else 0
    with capture_logs() as logs, otel.tracer.start_as_current_span("request"):
        pool.putconn(pool.getconn())
        held = [pool.getconn(), pool.getconn()]
        with pytest.raises(PoolExhausted):
            pool.getconn()
        for conn in held:
            pool.putconn(conn)
    assert logs == []
    assert otel.spans(names.SPAN_GETCONN) == []
    metrics = otel.metrics()
    for metric in metrics.values():  # no point of this pool is observed any more
        for data_point in metric.data.data_points:
            if metric.name in (names.USE_TIME, names.WAIT_TIME, names.CREATE_TIME):
                continue  # histograms keep their cumulative state
            assert data_point.attributes.get(names.POOL_NAME) != "inst-test" or False
    if names.USE_TIME in metrics:
        assert point(metrics[names.USE_TIME]).count == before
    # and it can be instrumented again
    again = instrument(pool, meter_provider=otel.meter_provider, leak_threshold=None)
    assert again is not handle and again.active
    uninstrument(pool)
    assert not again.active


def test_instrument_refuses_what_is_not_a_pool() -> None:
    with pytest.raises(TypeError, match="ConnectionPool"):
        instrument(object())  # type: ignore[arg-type]


@pytest.mark.parametrize("threshold", [0, -1, "10", float("nan"), True])
def test_bad_leak_threshold(pool: ConnectionPool, threshold: Any) -> None:
    with pytest.raises(ValueError, match="leak_threshold"):
        instrument(pool, leak_threshold=threshold)
    assert pool.listeners == ()


class RaisingProcessor(SpanProcessor):
    """Fails on the pool's spans only (the application's own span must work)."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if span.name == names.SPAN_GETCONN:
            raise RuntimeError("span processor failure")

    def on_end(self, span: ReadableSpan) -> None:
        if span.name == names.SPAN_GETCONN:
            raise RuntimeError("span processor failure")


def test_raising_span_processor_does_not_break_the_pool(pool: ConnectionPool,
                                                        otel: Otel) -> None:
    otel.tracer_provider.add_span_processor(RaisingProcessor())
    instrument(pool, tracer_provider=otel.tracer_provider, leak_threshold=None,
               checkout_spans="all")
    with otel.tracer.start_as_current_span("request"):
        for _ in range(20):
            pool.putconn(pool.getconn())
    assert pool.get_stats()["listener_errors"] == 20


def test_raising_structlog_processor_and_logger_do_not_break_the_pool(
        pool: ConnectionPool) -> None:
    def explode(logger: Any, method: str, event: Any) -> Any:
        raise RuntimeError("processor failure")

    structlog.configure(processors=[explode])
    try:
        instrument(pool, leak_threshold=60)
        held = [pool.getconn(), pool.getconn()]
        for _ in range(3):
            with pytest.raises(PoolExhausted):
                pool.getconn()
        for conn in held:
            pool.putconn(conn, close=True)
        assert pool.get_stats()["listener_errors"] >= 1
    finally:
        structlog.reset_defaults()


def test_raising_metric_reader_does_not_break_the_pool(pool: ConnectionPool) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        PeriodicExportingMetricReader,
    )

    class Exploding(MetricExporter):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def export(self, metrics_data: Any, timeout_millis: float = 10_000,
                   **kwargs: Any) -> MetricExportResult:
            self.calls += 1
            raise RuntimeError("exporter failure")

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            pass

    exporter = Exploding()
    provider = MeterProvider(metric_readers=[
        PeriodicExportingMetricReader(exporter, export_interval_millis=50)])
    handle = instrument(pool, meter_provider=provider, leak_threshold=None)
    deadline = time.monotonic() + 3
    while exporter.calls < 3 and time.monotonic() < deadline:
        pool.putconn(pool.getconn())
    assert exporter.calls >= 3
    handle.uninstrument()
    provider.shutdown()


def test_slow_listener_cost_is_bounded_by_the_pool(pool: ConnectionPool) -> None:
    # A listener that raises on every event costs the pool one caught exception per event.
    class Exploding:
        def on_checkout(self, event: Any) -> None:
            raise RuntimeError("boom")

        def on_checkin(self, event: Any) -> None:
            raise RuntimeError("boom")

    pool.add_listener(Exploding())
    for _ in range(1000):
        pool.putconn(pool.getconn())
    assert pool.get_stats()["listener_errors"] == 2000
