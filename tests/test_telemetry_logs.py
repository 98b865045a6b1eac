"""structlog events: names, fields, trace ids, and every way an application renders them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
import structlog
from conftest import Otel
from structlog.testing import capture_logs

from psycopg2_pool import ConnectionPool, PoolExhausted
from telemetry import instrument, names


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(1, 1, dsn=dsn, name="log-test")
    yield pool
    pool.close()


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_exhaustion_is_a_warning_with_counts_and_holders(pool: ConnectionPool) -> None:
    instrument(pool, leak_threshold=60)
    with capture_logs() as logs:
        held = pool.getconn()  # line below names this one
        with pytest.raises(PoolExhausted):
            pool.getconn()
        pool.putconn(held)
    (event,) = events(logs, "pool_exhausted")
    assert event["log_level"] == "warning"
    assert event["pool"] == "log-test"
    assert event["maxconn"] == 1 and event["in_use"] == 1 and event["waiting"] == 0
    assert event["timeout_s"] == 0
    (holder,) = event["holders"]
    assert holder["count"] == 1
    assert "test_telemetry_logs.py" in holder["site"]
    assert "test_exhaustion_is_a_warning_with_counts_and_holders" in holder["site"]


def test_exhaustion_warnings_are_rate_limited(pool: ConnectionPool) -> None:
    handle = instrument(pool, leak_threshold=None)
    with capture_logs() as logs:
        held = pool.getconn()
        for _ in range(5):
            with pytest.raises(PoolExhausted):
                pool.getconn()
        handle.logs.exhaustion_interval = 0
        with pytest.raises(PoolExhausted):
            pool.getconn()
        pool.putconn(held)
    exhausted = events(logs, "pool_exhausted")
    assert [e["suppressed"] for e in exhausted] == [0, 4]


def test_connection_failure_is_an_error_without_the_password() -> None:
    pool = ConnectionPool(0, 1, host="127.0.0.1", port=1, connect_timeout=2,
                          password="hunter2-secret", name="down")
    instrument(pool, leak_threshold=None)
    with capture_logs() as logs, pytest.raises(psycopg2.OperationalError):
        pool.getconn()
    (event,) = events(logs, "connection_failed")
    assert event["log_level"] == "error"
    assert event["error_type"] == "OperationalError"
    assert "127.0.0.1" in event["error"]
    assert "hunter2" not in repr(logs)
    pool.close()


def test_discards_are_debug_and_close_with_connections_out_is_a_warning(
        pool: ConnectionPool) -> None:
    instrument(pool, leak_threshold=None)
    with capture_logs() as logs:
        conn = pool.getconn()
        pool.putconn(conn, close=True)
        out = pool.getconn()
        pool.close()
        pool.putconn(out)
    (discard_user, discard_closed) = events(logs, "connection_discarded")
    assert discard_user["log_level"] == "debug"
    assert discard_user["reason"] == "closed_by_user"
    assert discard_user["backend_pid"] > 0
    assert discard_closed["reason"] == "pool_closed"
    (closed,) = events(logs, "pool_closed_with_connections_out")
    assert closed["log_level"] == "warning" and closed["in_use"] == 1


def test_events_inside_a_trace_carry_its_ids(pool: ConnectionPool, otel: Otel) -> None:
    instrument(pool, leak_threshold=None)
    with capture_logs() as logs, otel.tracer.start_as_current_span("request") as span:
        held = pool.getconn()
        with pytest.raises(PoolExhausted):
            pool.getconn()
        pool.putconn(held)
    (event,) = events(logs, "pool_exhausted")
    assert event["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert event["span_id"] == format(span.get_span_context().span_id, "016x")


def test_every_event_name_is_declared(pool: ConnectionPool) -> None:
    handle = instrument(pool, leak_threshold=0.05)
    with capture_logs() as logs:
        held = pool.getconn()
        with pytest.raises(PoolExhausted):
            pool.getconn()
        import time

        time.sleep(0.1)
        handle.leak_detector.scan()  # type: ignore[union-attr]
        pool.putconn(held)
        pool.putconn(pool.getconn(), close=True)
        pool.close()
    assert {e["event"] for e in logs} <= set(names.LOG_EVENT_NAMES)
    assert len({e["event"] for e in logs}) >= 5


def exhaust(pool: ConnectionPool) -> None:
    held = pool.getconn()
    with pytest.raises(PoolExhausted):
        pool.getconn()
    pool.putconn(held)


def test_rendered_as_json(pool: ConnectionPool) -> None:
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(out))
    instrument(pool, leak_threshold=60)
    exhaust(pool)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    (event,) = [line for line in lines if line["event"] == "pool_exhausted"]
    assert event["level"] == "warning" and event["pool"] == "log-test"


def test_rendered_on_the_console_with_a_leak_stack(pool: ConnectionPool) -> None:
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.dev.ConsoleRenderer(colors=False)],
        logger_factory=structlog.PrintLoggerFactory(out))
    handle = instrument(pool, leak_threshold=0.01)
    held = pool.getconn()
    import time

    time.sleep(0.05)
    handle.leak_detector.scan()  # type: ignore[union-attr]
    pool.putconn(held)
    text = out.getvalue()
    assert "connection_leak_suspected" in text
    assert "test_telemetry_logs.py" in text
    assert pool.get_stats()["listener_errors"] == 0


def test_rendered_through_stdlib_logging(pool: ConnectionPool,
                                         caplog: pytest.LogCaptureFixture) -> None:
    structlog.configure(
        processors=[structlog.stdlib.add_log_level,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger)
    caplog.set_level(logging.WARNING, logger="psycopg2_pool")
    instrument(pool, leak_threshold=60)
    exhaust(pool)
    records = [r for r in caplog.records if r.name == "psycopg2_pool"]
    assert records and records[0].levelno == logging.WARNING
    assert "pool_exhausted" in str(records[0].msg)


def test_a_logger_given_to_instrument_is_used(pool: ConnectionPool) -> None:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    class Logger:
        def __getattr__(self, level: str) -> Any:
            return lambda event, **kw: seen.append((level, event, kw))

    instrument(pool, logger=Logger(), leak_threshold=None)
    exhaust(pool)
    assert ("warning", "pool_exhausted") in [(lvl, ev) for lvl, ev, _ in seen]
