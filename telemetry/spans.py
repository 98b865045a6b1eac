"""``getconn`` spans, inside a recording trace: for the checkouts worth a look.

A span is made for each ``getconn`` that waited or opened a connection, and for each one that
failed; a checkout served at once from the idle connections gets none (``instrument(pool,
checkout_spans="all")`` asks for one there too). Such a span would cover a wait of 0 µs:
noise in every trace view, and ~20 µs of span machinery on each checkout, more than the
pool itself costs. Whether a span is due is decided by :mod:`telemetry.checkouts`.

The span is made when ``getconn`` is over, with its start time set back by the wait: it
covers the wait exactly, as a child of the caller's current span, and ends before the
caller's queries start (their spans, e.g. from opentelemetry-instrumentation-psycopg2, are its
siblings).
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from psycopg2_pool.errors import ServerUnavailable, TooManyRequests
from psycopg2_pool.events import CheckoutEvent, PoolListener, TimeoutEvent
from psycopg2_pool.roles import server_of

from . import names

_get_current_span = trace.get_current_span


class PoolSpans(PoolListener):
    """Makes the ``getconn`` spans."""

    def __init__(self, pool_name: str, tracer: trace.Tracer) -> None:
        self.pool_name = pool_name
        self.tracer = tracer

    def checkout(self, event: CheckoutEvent) -> None:
        """The span of a checkout, inside a recording span (the recorder decided it is due)."""
        end = time.time_ns()
        attributes = {**self._attributes(event.wait_time, event.waited, "acquired"),
                      names.SPAN_OPENED: event.opened}
        address, _, port = server_of(event.connection).rpartition(":")
        if address != "unknown":  # the server libpq chose among the DSN's hosts
            attributes[names.SERVER_ADDRESS] = address
            if port.isdigit():
                attributes[names.SERVER_PORT] = int(port)
        span = self.tracer.start_span(
            names.SPAN_GETCONN, kind=SpanKind.INTERNAL, start_time=end - int(event.wait_time * 1e9),
            attributes=attributes)
        span.end(end_time=end)

    def on_timeout(self, event: TimeoutEvent) -> None:
        if not _get_current_span().is_recording():
            return
        end = time.time_ns()
        error = event.error
        # error.type tells the three apart; the outcome says whether the call waited at all.
        if isinstance(error, TooManyRequests):
            outcome, waited, status = "refused", False, "refused: max_waiting requests waiting"
        elif isinstance(error, ServerUnavailable):
            outcome, waited, status = "timeout", True, "could not connect to the server"
        else:
            outcome, waited = "timeout", event.timeout > 0
            status = "no more connections in the pool"
        attributes = self._attributes(event.wait_time, waited, outcome)
        attributes[names.ERROR_TYPE] = type(error).__name__
        span = self.tracer.start_span(
            names.SPAN_GETCONN, kind=SpanKind.INTERNAL,
            start_time=end - int(event.wait_time * 1e9), attributes=attributes)
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, status))
        span.end(end_time=end)

    def _attributes(self, wait: float, waited: bool, outcome: str) -> dict[str, Any]:
        return {
            names.POOL_NAME: self.pool_name,
            names.SPAN_WAIT_TIME: wait,
            names.SPAN_WAITED: waited,
            names.SPAN_OUTCOME: outcome,
        }
