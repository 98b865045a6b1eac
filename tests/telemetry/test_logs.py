"""structlog events: names, fields, trace ids, and every way an application renders them."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg2
import pytest
import structlog
from structlog.testing import capture_logs

from psycopg2_pool import (
    ConnectionPool,
    PoolExhausted,
    RecoveredEvent,
    ServerUnavailable,
    UnavailableEvent,
)
from telemetry import instrument, names
from tests.support.faults import Proxy
from tests.support.otel import Otel
from tests.support.pools import refuse
from tests.support.system import free_port


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
    assert "test_logs.py" in holder["site"]
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
        # minconn=1: the pool reopens the slot in the background; wait for that connection
        # (with timeout=0 the call would not wait for it, and the only slot is taken).
        out = pool.getconn(timeout=5)
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
    assert "test_logs.py" in text
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


# -- outages: one event when it begins, one when it ends, a slow pulse in between ---------------


@pytest.fixture
def switch(dsn: str) -> Iterator[Proxy]:
    """A loopback proxy to the session's server whose upstream can be cut (every connect then
    fails at once: the proxy closes it, as a server going down does) and restored."""
    info = psycopg2.extensions.parse_dsn(dsn)
    host = info.get("host", "")
    if not host.startswith("/"):
        pytest.skip("the outage proxy forwards to a unix socket; this server is reached by TCP")
    upstream = str(Path(host) / f".s.PGSQL.{info.get('port', 5432)}")
    proxy = Proxy(SimpleNamespace(socket_path=upstream, user=info.get("user", "postgres"),  # type: ignore[arg-type]
                                  dbname=info.get("dbname", "postgres")))
    proxy.upstream = upstream  # type: ignore[attr-defined]
    yield proxy
    proxy.close()


def cut(proxy: Proxy) -> None:
    proxy.socket_path = "/nonexistent/.s.PGSQL.1"


def restore(proxy: Proxy) -> None:
    proxy.socket_path = proxy.upstream  # type: ignore[attr-defined]


def test_unreachable_server_logs_one_outage_and_rate_limits_the_failures() -> None:
    pool = ConnectionPool(0, 2, host="127.0.0.1", port=free_port(), connect_timeout=1,
                          password="hunter2-secret", name="down")
    instrument(pool, leak_threshold=None)
    calls = 0
    with capture_logs() as logs:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            with pytest.raises(ServerUnavailable):
                pool.getconn(timeout=0.5)
            calls += 1
    stats = pool.get_stats()
    pool.close()
    assert calls >= 3 and stats["connections_errors"] > calls  # retried while callers waited
    (unavailable,) = events(logs, "pool_unavailable")
    assert unavailable["log_level"] == "error" and unavailable["pool"] == "down"
    assert unavailable["error_type"] == "OperationalError"
    assert "127.0.0.1" in unavailable["error"] and "\n" not in unavailable["error"]
    # 2 s < the 5 s interval: the first of each, the others only counted (in the next one)
    (failed,) = events(logs, "connection_failed")
    assert failed["suppressed"] == 0
    (gave_up,) = events(logs, "server_unavailable")
    assert gave_up["log_level"] == "warning"
    assert gave_up["timeout_s"] == 0.5 and gave_up["waited_s"] >= 0.5
    # The outage began at the first failed attempt, a few ms into that first wait.
    assert gave_up["attempts"] >= 1 and 0.3 <= gave_up["unavailable_s"] <= gave_up["waited_s"]
    assert "127.0.0.1" in gave_up["last_error"]
    assert events(logs, "pool_exhausted") == []  # not an exhaustion: nothing is in use
    assert "hunter2" not in repr(logs)


def test_failures_after_the_interval_carry_the_count_of_the_others() -> None:
    pool = ConnectionPool(0, 2, host="127.0.0.1", port=free_port(), connect_timeout=1,
                          name="down")
    handle = instrument(pool, leak_threshold=None)
    with capture_logs() as logs:
        for _ in range(2):
            with pytest.raises(ServerUnavailable):
                pool.getconn(timeout=0.3)
        handle.logs.failure_interval = 0
        with pytest.raises(ServerUnavailable):
            pool.getconn(timeout=1)  # the backoff is at most 0.5 s: attempts fail meanwhile
        pool.close()  # no attempt after this
        errors = pool.get_stats()["connections_errors"]
    failed = events(logs, "connection_failed")
    # every attempt is accounted for: logged, or counted in a later event's suppressed
    assert len(failed) + sum(e["suppressed"] for e in failed) == errors
    assert failed[0]["suppressed"] == 0 and len(failed) >= 2
    gave_up = events(logs, "server_unavailable")
    assert [e["suppressed"] for e in gave_up] == [0, 1]


@pytest.mark.slow  # default suite under 3 minutes: .ci/run's slow set runs it
def test_an_outage_under_load_writes_a_handful_of_events(
        switch: Proxy, caplog: pytest.LogCaptureFixture) -> None:
    """The budget: a 3 s outage, 8 threads calling getconn(timeout=1) in a loop: at most 15
    events in all (the pool's own stdlib warnings included), one when it begins, one when it
    ends."""
    caplog.set_level(logging.WARNING, logger="psycopg2_pool")
    pool = ConnectionPool(0, 4, dsn=switch.dsn(connect_timeout=1), name="flaky")
    instrument(pool, leak_threshold=None)
    cut(switch)
    served: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                conn = pool.getconn(timeout=1)
            except psycopg2.OperationalError as exc:
                errors.append(type(exc).__name__)
                continue
            pool.putconn(conn)
            served.append(1)
            return

    with capture_logs() as logs:
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(3)
        restore(switch)
        for thread in threads:
            thread.join(10)
        stop.set()
    stats = pool.get_stats()
    pool.close()
    assert len(served) == 8, errors
    assert errors and set(errors) == {"ServerUnavailable"}
    outage_events = [e for e in logs if e["event"] not in ("connection_discarded", "pool_closed")]
    pool_records = [r for r in caplog.records if r.name == "psycopg2_pool"]
    assert len(outage_events) + len(pool_records) <= 15, [e["event"] for e in outage_events]
    assert len(events(logs, "pool_unavailable")) == 1
    (recovered,) = events(logs, "pool_recovered")
    assert recovered["log_level"] == "warning"
    assert 2.5 < recovered["outage_s"] < 6
    assert recovered["failed_attempts"] == stats["connections_errors"]
    assert len(events(logs, "connection_failed")) <= 2
    assert 1 <= len(events(logs, "server_unavailable")) <= 2
    assert events(logs, "pool_exhausted") == []


def test_recovered_and_unavailable_event_shapes(pool: ConnectionPool) -> None:
    handle = instrument(pool, leak_threshold=None)
    error = psycopg2.OperationalError('connection to server at "db", port 5432 failed:\n'
                                      "\tConnection refused\n")
    with capture_logs() as logs:
        handle.logs.on_unavailable(UnavailableEvent(pool, error))
        handle.logs.on_recovered(RecoveredEvent(pool, 12.34567, 42, error))
    (unavailable,) = events(logs, "pool_unavailable")
    assert unavailable["error"] == 'connection to server at "db", port 5432 failed: ' \
                                   "Connection refused"
    (recovered,) = events(logs, "pool_recovered")
    assert recovered["outage_s"] == 12.346 and recovered["failed_attempts"] == 42
    assert recovered["last_error_type"] == "OperationalError"
    assert recovered["pool"] == "log-test"


def test_a_refusal_is_its_own_rate_limited_event(dsn: str) -> None:
    pool = ConnectionPool(1, 1, dsn=dsn, max_waiting=1, name="full")
    instrument(pool, leak_threshold=None)
    with capture_logs() as logs:
        refuse(pool, 3)
    pool.close()
    (refused,) = events(logs, "request_refused")
    assert refused["log_level"] == "warning"
    assert refused["max_waiting"] == 1 and refused["waiting"] == 1
    assert refused["maxconn"] == 1 and refused["in_use"] == 1
    assert refused["unavailable_s"] == 0 and refused["suppressed"] == 0
    assert events(logs, "pool_exhausted") == []

