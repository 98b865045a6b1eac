"""The telemetry's one listener on the checkout path.

Every ``getconn`` and ``putconn`` of an instrumented pool pays for what runs here, so the
latency buffers, the span decision and the leak detector's part share one call and one
context lookup (a listener call costs ~0.15 µs, ``trace.get_current_span()`` ~0.4 µs):

- checkout: the wait time appended to the metrics buffer; inside a trace, the span current
  then, kept for leak reports; and a ``getconn`` span only when the checkout waited or
  opened a connection (or always, ``checkout_spans="all"``);
- checkin: the use time appended; a checkout that was reported as a suspected leak is
  reported as returned.

The rest of a leak record (the stack that took the connection, the time, the thread) is not
made here: the pool keeps it on its own record of each checkout, which it has anyway, while
the leak detector asks for it (``checkout_stack_depth``; the stack walked in C where built,
:mod:`psycopg2_pool.stacks`), and the detector reads it off the hot path
(``pool.checkouts()``).

Formatting stacks, recording histograms and scanning for leaks happen off this path: when a
report is made, at collection, or on the background worker (:mod:`telemetry.worker`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation import _SPAN_KEY

from psycopg2_pool.events import CheckoutEvent

from .leaks import LeakDetector
from .metrics import BACKLOG, PoolMetrics
from .spans import PoolSpans

#: Which checkouts get a ``getconn`` span inside a recording trace (``instrument()``'s
#: ``checkout_spans``): those that waited or opened a connection, every one, or none.
CHECKOUT_SPANS = ("waited", "all", "none")

_INVALID_SPAN = trace.INVALID_SPAN


def _context_getter() -> Callable[[], Any]:
    """The current OpenTelemetry context in one C call when the runtime context is the
    default contextvars one (what ``get_current()`` returns, through two Python frames)."""
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    getter = getattr(variable, "get", None)
    if getter is not None and getter() is otel_context.get_current():
        return getter  # type: ignore[no-any-return]
    return otel_context.get_current


_get_context = _context_getter()


class CheckoutRecorder:
    """Records each checkout and checkin of one pool for its metrics, spans and leaks.

    It takes the fields form of the two listener methods (``on_checkout_fields``,
    ``on_checkin_fields``): no event object is built for it.
    """

    def __init__(self, metrics: PoolMetrics, spans: PoolSpans, detector: LeakDetector | None,
                 checkout_spans: str = "waited") -> None:
        if checkout_spans not in CHECKOUT_SPANS:
            raise ValueError(f"checkout_spans must be one of {', '.join(CHECKOUT_SPANS)}; "
                             f"got {checkout_spans!r}")
        self._metrics = metrics
        self._wait_times = metrics.wait_times
        self._use_times = metrics.use_times
        self._spans = spans
        self._every_span = checkout_spans == "all"  # else only checkouts that waited/opened
        self._no_span = checkout_spans == "none"
        if detector is not None:  # the detector's own tables, written here directly
            self._detector = detector
            self._trace_spans, self._reported, self._expected = detector.tables()
        else:  # nothing to record: the cheaper methods
            self.on_checkout_fields = self._checkout_metrics_only  # type: ignore[method-assign]
            self.on_checkin_fields = self._checkin_metrics_only  # type: ignore[method-assign]

    def on_checkout_fields(self, pool: Any, conn: Any, wait_time: float, waited: bool,
                           opened: bool) -> None:
        span = _get_context().get(_SPAN_KEY, _INVALID_SPAN)
        # The rest of the leak record (the stack, the time, the thread) is kept by the pool
        # on its own record of the checkout, which the detector reads (pool.checkouts()).
        if span is not _INVALID_SPAN:  # inside a trace: leak reports and holders name it
            self._trace_spans[id(conn)] = span
        buffer = self._wait_times
        buffer.append(wait_time)
        if len(buffer) > BACKLOG:  # checked here for both buffers: they grow together
            self._metrics.flush()
        if waited or opened or self._every_span:
            self._span(span, pool, conn, wait_time, waited, opened)

    def on_checkin_fields(self, pool: Any, conn: Any, use_time: float, kept: bool,
                          reason: str | None) -> None:
        if self._trace_spans:
            self._trace_spans.pop(id(conn), None)
        self._use_times.append(use_time)
        if self._expected or self._reported:  # rare: some checkout was declared or reported
            self._detector.returned(conn, use_time)

    def _checkout_metrics_only(self, pool: Any, conn: Any, wait_time: float, waited: bool,
                               opened: bool) -> None:
        buffer = self._wait_times
        buffer.append(wait_time)
        if len(buffer) > BACKLOG:
            self._metrics.flush()
        if waited or opened or self._every_span:
            self._span(None, pool, conn, wait_time, waited, opened)

    def _checkin_metrics_only(self, pool: Any, conn: Any, use_time: float, kept: bool,
                              reason: str | None) -> None:
        self._use_times.append(use_time)

    def _span(self, span: Any, pool: Any, conn: Any, wait_time: float, waited: bool,
              opened: bool) -> None:
        """A ``getconn`` span is due, unless spans are off or no recording span is current
        (``span``: the current one, when the caller already looked it up)."""
        if self._no_span:
            return
        if span is None:
            span = _get_context().get(_SPAN_KEY, _INVALID_SPAN)
        if span.is_recording():
            self._spans.checkout(CheckoutEvent(pool, conn, wait_time, waited, opened))
