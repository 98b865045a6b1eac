"""Log events, through structlog, from the pool's events.

Event names are stable snake_case (listed in :mod:`telemetry.names`); every event carries
``pool`` and, inside a trace, ``trace_id``/``span_id``. The logger comes from
``structlog.get_logger`` at call time, so the application's structlog configuration (JSON,
console, or stdlib logging) decides how it is rendered, and which levels pass.

An application that never configured structlog did not ask for these events: structlog's
default then prints every level to stdout, a ``connection_discarded`` line per connection. So
until ``structlog.configure()`` is called (or a ``logger`` is given to ``instrument()``), an
event passes only at a level the stdlib logger ``psycopg2_pool`` is enabled for — WARNING
unless the application set a level, as for any library's stdlib logger: warnings and errors
still show, routine events (debug, info) do not. ``logging.getLogger("psycopg2_pool")
.setLevel(logging.DEBUG)`` (or ``basicConfig(level=...)``) shows them without configuring
structlog.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any

import structlog
from opentelemetry import trace

from psycopg2_pool.errors import ServerUnavailable, TooManyRequests, one_line
from psycopg2_pool.events import (
    CloseEvent,
    ConnectEvent,
    DiscardEvent,
    PoolListener,
    RecoveredEvent,
    RoleChangeEvent,
    RoleRestoredEvent,
    TimeoutEvent,
    UnavailableEvent,
)

from . import names

#: Decides which levels pass while structlog is not configured (see the module docstring).
_STDLIB_LOGGER = logging.getLogger(names.LOGGER_NAME)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


class RateLimit:
    """At most one event per interval; counts the ones it holds back.

    The interval is passed at each call, so that it can be read from an attribute that a
    program (or a test) changes on a live listener.
    """

    __slots__ = ("_last", "_lock", "_suppressed")

    def __init__(self) -> None:
        self._last = -float("inf")
        self._suppressed = 0
        self._lock = threading.Lock()

    def allow(self, interval: float) -> int | None:
        """None to hold this event back (counted), else how many were held back before it."""
        now = monotonic()
        with self._lock:
            if now - self._last < interval:
                self._suppressed += 1
                return None
            self._last = now
            suppressed, self._suppressed = self._suppressed, 0
            return suppressed


def trace_fields() -> dict[str, str]:
    """``trace_id``/``span_id`` of the current span, as hex, or nothing outside a trace."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"),
            "span_id": format(context.span_id, "016x")}


class LogEmitter:
    """Emits one pool's log events: ``log(level, event, **fields)``, a plain callable.

    The listeners that log (:class:`PoolLogs`, the leak detector) are each given this one
    emitter, so every log event of a pool carries the same ``pool`` and goes to the same logger.
    """

    __slots__ = ("_logger", "pool_name")

    def __init__(self, pool_name: str, logger: Any = None) -> None:
        self.pool_name = pool_name
        self._logger = logger

    @property
    def logger(self) -> Any:
        """The logger given to ``instrument()``, else structlog's (looked up when used)."""
        logger = self._logger
        return logger if logger is not None else structlog.get_logger(names.LOGGER_NAME)

    def __call__(self, level: str, event: str, **fields: Any) -> None:
        """Emit ``event`` at ``level`` with the pool name and the current trace ids.

        Held back, while structlog is not configured and no logger was given, below the
        level of the stdlib ``psycopg2_pool`` logger (WARNING by default): an unconfigured
        structlog would print every routine event to stdout.
        """
        if self._logger is None and not structlog.is_configured() and \
                not _STDLIB_LOGGER.isEnabledFor(_LEVELS.get(level, logging.WARNING)):
            return
        getattr(self.logger, level)(event, pool=self.pool_name, **fields, **trace_fields())


class PoolLogs(PoolListener):
    """Logs exhaustion, refusals, connection errors and outages, discards and close.

    Events that come in bursts are rate-limited per pool, each with ``suppressed``, the count
    of those held back since the last one logged:

    - ``exhaustion_interval`` (1 s) for ``pool_exhausted`` and ``request_refused``: a pool out
      of connections fails many calls a second, and one warning a second says as much
      without slowing the failing path further.
    - ``failure_interval`` (5 s) for ``connection_failed`` and ``server_unavailable``: during
      an outage every retry fails and every waiting caller times out; ``pool_unavailable``
      (once, when it begins) and ``pool_recovered`` (once, when it ends, with its length and
      failed attempts) tell the story, and these two keep a slow pulse in between.
    """

    def __init__(self, log: LogEmitter, *,
                 holders: Callable[[TimeoutEvent], list[dict[str, Any]]] | None = None,
                 exhaustion_interval: float = 1.0, failure_interval: float = 5.0) -> None:
        """``log``: the pool's :class:`LogEmitter`. ``holders``: who holds the connections
        when a ``getconn`` gives up, for ``pool_exhausted`` (the leak detector's
        ``exhaustion_holders``, made once per timeout); None when the detector is off."""
        self.log = log
        self._holders = holders
        self.exhaustion_interval = exhaustion_interval
        self.failure_interval = failure_interval
        self._exhausted = RateLimit()
        self._refused = RateLimit()
        self._failed = RateLimit()
        self._unavailable = RateLimit()

    def on_timeout(self, event: TimeoutEvent) -> None:
        error = event.error
        if isinstance(error, ServerUnavailable):
            self._server_unavailable(event, error)
        elif isinstance(error, TooManyRequests):
            self._request_refused(event, error)
        else:
            self._pool_exhausted(event, error)

    def _pool_exhausted(self, event: TimeoutEvent, error: BaseException) -> None:
        suppressed = self._exhausted.allow(self.exhaustion_interval)
        if suppressed is None:
            return
        fields: dict[str, Any] = {
            "maxconn": getattr(error, "maxconn", None),
            "in_use": getattr(error, "in_use", None),
            "waiting": event.pool.get_stats()["requests_waiting"],
            "waited_s": round(event.wait_time, 6),
            "timeout_s": event.timeout,
            "suppressed": suppressed,
        }
        if self._holders is not None:
            fields["holders"] = self._holders(event)
        self.log("warning", names.LOG_POOL_EXHAUSTED, **fields)

    def _request_refused(self, event: TimeoutEvent, error: TooManyRequests) -> None:
        # Its own event, not pool_exhausted: the queue is full, which happens as much during
        # an outage (nothing opens) as when every connection is in use; unavailable_s tells.
        suppressed = self._refused.allow(self.exhaustion_interval)
        if suppressed is None:
            return
        pool = event.pool
        stats = pool.get_stats()
        self.log("warning", names.LOG_REQUEST_REFUSED,
                  max_waiting=getattr(pool, "max_waiting", None),
                  waiting=stats["requests_waiting"], maxconn=error.maxconn,
                  in_use=error.in_use, unavailable_s=stats.get("unavailable_s", 0.0),
                  suppressed=suppressed)

    def _server_unavailable(self, event: TimeoutEvent, error: ServerUnavailable) -> None:
        suppressed = self._unavailable.allow(self.failure_interval)
        if suppressed is None:
            return
        cause = error.__cause__
        self.log("warning", names.LOG_SERVER_UNAVAILABLE, waited_s=round(event.wait_time, 6),
                  timeout_s=event.timeout, attempts=error.attempts,
                  unavailable_s=round(error.unavailable_for, 3),
                  waiting=event.pool.get_stats()["requests_waiting"],
                  last_error_type=type(cause).__name__ if cause is not None else None,
                  last_error=one_line(cause), suppressed=suppressed)

    def on_connect(self, event: ConnectEvent) -> None:
        if event.error is None:
            return
        suppressed = self._failed.allow(self.failure_interval)
        if suppressed is None:
            return
        # The class and libpq's message: it names host, port and user, never the password.
        self.log("error", names.LOG_CONNECTION_FAILED, error_type=type(event.error).__name__,
                  error=str(event.error).strip(), duration_s=round(event.duration, 6),
                  suppressed=suppressed)

    def on_unavailable(self, event: UnavailableEvent) -> None:
        self.log("error", names.LOG_POOL_UNAVAILABLE, error_type=type(event.error).__name__,
                  error=one_line(event.error))

    def on_recovered(self, event: RecoveredEvent) -> None:
        self.log("warning", names.LOG_POOL_RECOVERED, outage_s=round(event.outage, 3),
                  failed_attempts=event.attempts,
                  last_error_type=type(event.error).__name__ if event.error is not None
                  else None, last_error=one_line(event.error))

    def on_discard(self, event: DiscardEvent) -> None:
        self.log("debug", names.LOG_CONNECTION_DISCARDED, reason=event.reason,
                  backend_pid=event.backend_pid, age_s=round(event.age, 3))

    def on_role_change(self, event: RoleChangeEvent) -> None:
        self.log("warning", names.LOG_SERVER_ROLE_CHANGED, server=event.server,
                  role=event.role, reported=event.reported, idle_closed=event.idle_closed,
                  in_use=event.in_use)

    def on_role_restored(self, event: RoleRestoredEvent) -> None:
        self.log("warning", names.LOG_POOL_MOVED, lost=event.lost, server=event.server,
                  role=event.role, after_s=round(event.after, 3))

    def on_close(self, event: CloseEvent) -> None:
        if event.in_use:
            self.log("warning", names.LOG_POOL_CLOSED_WITH_CONNECTIONS_OUT, in_use=event.in_use)
        else:
            self.log("info", names.LOG_POOL_CLOSED)
