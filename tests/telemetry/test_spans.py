"""getconn spans: made only inside a recording trace, parented right, errors recorded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from psycopg2_pool import ConnectionPool, PoolExhausted, ServerUnavailable
from telemetry import instrument, names
from tests.support.otel import Otel
from tests.support.pools import refuse
from tests.support.system import free_port


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(1, 1, dsn=dsn, timeout=0.2, name="span-test")
    yield pool
    pool.close()


def test_no_span_outside_a_trace(pool: ConnectionPool, otel: Otel) -> None:
    instrument(pool, tracer_provider=otel.tracer_provider, leak_threshold=None)
    pool.putconn(pool.getconn())
    assert otel.spans() == []


def test_no_span_inside_a_non_recording_span(pool: ConnectionPool, otel: Otel) -> None:
    instrument(pool, tracer_provider=otel.tracer_provider, leak_threshold=None)
    with trace.use_span(trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)):
        pool.putconn(pool.getconn())
    assert otel.spans() == []


def test_no_span_for_a_checkout_served_at_once(pool: ConnectionPool, otel: Otel) -> None:
    instrument(pool, tracer_provider=otel.tracer_provider, leak_threshold=None)
    with otel.tracer.start_as_current_span("request"):
        pool.putconn(pool.getconn())
    assert otel.spans(names.SPAN_GETCONN) == []
    assert [s.name for s in otel.spans()] == ["request"]


def test_every_checkout_gets_a_span_when_asked(pool: ConnectionPool, otel: Otel) -> None:
    instrument(pool, tracer_provider=otel.tracer_provider, leak_threshold=None,
               checkout_spans="all")
    with otel.tracer.start_as_current_span("request") as request:
        conn = pool.getconn()
    pool.putconn(conn)
    (span,) = otel.spans(names.SPAN_GETCONN)
    assert span.parent.span_id == request.get_span_context().span_id
    assert span.context.trace_id == request.get_span_context().trace_id
    assert span.attributes[names.POOL_NAME] == "span-test"
    assert span.attributes["psycopg2_pool.outcome"] == "acquired"
    assert span.attributes["psycopg2_pool.waited"] is False
    assert span.attributes["psycopg2_pool.opened"] is False
    assert span.status.status_code == StatusCode.UNSET


def test_a_checkout_that_opened_its_connection_gets_a_span(dsn: str, otel: Otel) -> None:
    pool = ConnectionPool(0, 1, dsn=dsn, name="opens")
    instrument(pool, tracer_provider=otel.tracer_provider, leak_threshold=None)
    with otel.tracer.start_as_current_span("request") as request:
        started = time.monotonic()
        conn = pool.getconn(timeout=0)  # nothing idle: opened on this thread
        took = time.monotonic() - started
    pool.putconn(conn)
    pool.close()
    (span,) = otel.spans(names.SPAN_GETCONN)
    assert span.parent.span_id == request.get_span_context().span_id
    assert span.attributes["psycopg2_pool.opened"] is True
    assert span.attributes["psycopg2_pool.waited"] is False
    wait = span.attributes["psycopg2_pool.wait_time"]
    assert 0 < wait <= took  # the wait covers the connect
    assert (span.end_time - span.start_time) / 1e9 == pytest.approx(wait, abs=0.002)


def test_no_checkout_spans_but_failures(pool: ConnectionPool, otel: Otel) -> None:
    instrument(pool, tracer_provider=otel.tracer_provider, leak_threshold=None,
               checkout_spans="none")
    held = pool.getconn()
    threading.Timer(0.05, pool.putconn, args=(held,)).start()
    with otel.tracer.start_as_current_span("request"):
        pool.putconn(pool.getconn(timeout=5))  # waited: no span asked for
        held = pool.getconn()
        with pytest.raises(PoolExhausted):
            pool.getconn(timeout=0.05)
    pool.putconn(held)
    (span,) = otel.spans(names.SPAN_GETCONN)
    assert span.attributes["psycopg2_pool.outcome"] == "timeout"


def test_checkout_spans_must_be_a_known_choice(pool: ConnectionPool) -> None:
    with pytest.raises(ValueError, match="checkout_spans must be one of waited, all, none"):
        instrument(pool, checkout_spans="some")


def test_span_covers_the_wait(pool: ConnectionPool, otel: Otel) -> None:
    instrument(pool, tracer_provider=otel.tracer_provider, leak_threshold=None)
    held = pool.getconn()
    threading.Timer(0.15, pool.putconn, args=(held,)).start()
    with otel.tracer.start_as_current_span("request") as request:
        conn = pool.getconn(timeout=5)
    pool.putconn(conn)
    (span,) = otel.spans(names.SPAN_GETCONN)
    duration = (span.end_time - span.start_time) / 1e9
    assert span.parent.span_id == request.get_span_context().span_id
    assert span.attributes["psycopg2_pool.waited"] is True
    assert span.attributes["psycopg2_pool.opened"] is False
    assert 0.1 <= duration < 2
    assert span.attributes["psycopg2_pool.wait_time"] == pytest.approx(duration, abs=0.01)


def test_exhaustion_marks_the_span_as_error(pool: ConnectionPool, otel: Otel) -> None:
    instrument(pool, tracer_provider=otel.tracer_provider, leak_threshold=None)
    held = pool.getconn()
    with otel.tracer.start_as_current_span("request"), pytest.raises(PoolExhausted):
        pool.getconn()
    pool.putconn(held)
    (span,) = otel.spans(names.SPAN_GETCONN)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["psycopg2_pool.outcome"] == "timeout"
    assert span.attributes[names.ERROR_TYPE] == "PoolExhausted"
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes["exception.type"].endswith("PoolExhausted")
    assert "no more connections in the pool" in event.attributes["exception.message"]


def test_server_unavailable_is_an_error_of_its_own_type(otel: Otel) -> None:
    pool = ConnectionPool(0, 1, host="127.0.0.1", port=free_port(), connect_timeout=1,
                          name="down")
    instrument(pool, tracer_provider=otel.tracer_provider, leak_threshold=None)
    with otel.tracer.start_as_current_span("request"), pytest.raises(ServerUnavailable):
        pool.getconn(timeout=0.3)
    pool.close()
    (span,) = otel.spans(names.SPAN_GETCONN)
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "could not connect to the server"
    assert span.attributes[names.ERROR_TYPE] == "ServerUnavailable"
    assert span.attributes["psycopg2_pool.outcome"] == "timeout"
    assert span.attributes["psycopg2_pool.waited"] is True
    assert span.attributes["psycopg2_pool.wait_time"] >= 0.3
    (event,) = span.events
    assert event.attributes["exception.type"].endswith("ServerUnavailable")
    assert "could not connect" in event.attributes["exception.message"]


def test_a_refusal_is_an_error_that_did_not_wait(dsn: str, otel: Otel) -> None:
    pool = ConnectionPool(1, 1, dsn=dsn, max_waiting=1, name="full")
    instrument(pool, tracer_provider=otel.tracer_provider, leak_threshold=None)
    refuse(pool, 1, around=lambda: otel.tracer.start_as_current_span("request"))
    pool.close()
    (span,) = otel.spans(names.SPAN_GETCONN)  # the waiter's getconn is outside any trace
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes[names.ERROR_TYPE] == "TooManyRequests"
    assert span.attributes["psycopg2_pool.outcome"] == "refused"
    assert span.attributes["psycopg2_pool.waited"] is False


def test_query_spans_of_the_psycopg2_instrumentation_nest_beside_it(
        dsn: str, otel: Otel) -> None:
    from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor

    instrumentor = Psycopg2Instrumentor()
    instrumentor.instrument(tracer_provider=otel.tracer_provider, skip_dep_check=True)
    try:
        pool = ConnectionPool(0, 2, dsn=dsn, name="nested")  # opened after instrument()
        instrument(pool, tracer_provider=otel.tracer_provider, leak_threshold=None)
        with otel.tracer.start_as_current_span("request") as request, \
                pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT 42")
            assert cur.fetchone() == (42,)
        pool.close()
    finally:
        instrumentor.uninstrument()
    (getconn,) = otel.spans(names.SPAN_GETCONN)
    queries = [s for s in otel.spans() if s.name not in (names.SPAN_GETCONN, "request")]
    assert queries, [s.name for s in otel.spans()]
    request_id = request.get_span_context().span_id
    assert getconn.parent.span_id == request_id
    for query in queries:
        assert query.parent.span_id == request_id  # siblings, not children of getconn
        assert query.start_time >= getconn.end_time
        assert "password" not in str(dict(query.attributes)).lower()


def test_pooled_connections_are_psycopg2_connections(dsn: str) -> None:
    pool = ConnectionPool(0, 1, dsn=dsn)
    conn: Any = pool.getconn()
    assert isinstance(conn, psycopg2.extensions.connection)
    pool.putconn(conn)
    pool.close()


def test_span_cost_outside_a_trace_is_one_lookup(pool: ConnectionPool, otel: Otel) -> None:
    # Not a timing assertion: outside a trace the tracer is never asked for a span.
    class CountingTracer:
        calls = 0

        def start_span(self, *args: Any, **kwargs: Any) -> Any:
            CountingTracer.calls += 1
            raise AssertionError("no span may be started outside a trace")

    class Provider:
        def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
            return CountingTracer()

    instrument(pool, tracer_provider=Provider(), leak_threshold=None)
    for _ in range(10):
        pool.putconn(pool.getconn())
    time.sleep(0)
    assert CountingTracer.calls == 0
    assert pool.get_stats()["listener_errors"] == 0
