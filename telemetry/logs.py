"""structlog events from the pool's hooks.

Event names are stable snake_case (listed in :mod:`telemetry.names`); every event carries
``pool`` and, inside a trace, ``trace_id``/``span_id``. The logger comes from
``structlog.get_logger`` at call time, so the application's structlog configuration (JSON,
console, or stdlib logging) decides how it is rendered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from time import monotonic
from typing import Any

import structlog
from opentelemetry import trace

from psycopg2_pool.events import (
    CloseEvent,
    ConnectEvent,
    DiscardEvent,
    PoolListener,
    TimeoutEvent,
)

#: structlog logger name (also the stdlib logger name when structlog renders through it).
LOGGER_NAME = "psycopg2_pool"


def trace_fields() -> dict[str, str]:
    """``trace_id``/``span_id`` of the current span, as hex, or nothing outside a trace."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"),
            "span_id": format(context.span_id, "016x")}


class PoolLogs(PoolListener):
    """Logs exhaustion, connection errors, discards and close.

    ``exhaustion_interval`` rate-limits ``pool_exhausted``: a pool that is out of connections
    fails many calls a second, and one warning a second (with the count of the others) says
    as much without slowing the failing path further.
    """

    def __init__(self, pool_name: str, logger: Any = None, *,
                 holders: Callable[[], list[dict[str, Any]]] | None = None,
                 exhaustion_interval: float = 1.0) -> None:
        self.pool_name = pool_name
        self._logger = logger
        self.holders = holders
        self.exhaustion_interval = exhaustion_interval
        self._last_exhaustion = -float("inf")
        self._suppressed = 0
        self._lock = threading.Lock()

    @property
    def logger(self) -> Any:
        """The logger given to ``instrument()``, else structlog's (looked up when used)."""
        return self._logger if self._logger is not None else structlog.get_logger(LOGGER_NAME)

    def log(self, level: str, event: str, **fields: Any) -> None:
        """Emit ``event`` at ``level`` with the pool name and the current trace ids."""
        getattr(self.logger, level)(event, pool=self.pool_name, **fields, **trace_fields())

    def on_timeout(self, event: TimeoutEvent) -> None:
        now = monotonic()
        with self._lock:
            if now - self._last_exhaustion < self.exhaustion_interval:
                self._suppressed += 1
                return
            self._last_exhaustion = now
            suppressed, self._suppressed = self._suppressed, 0
        error = event.error
        fields: dict[str, Any] = {
            "maxconn": getattr(error, "maxconn", None),
            "in_use": getattr(error, "in_use", None),
            "waiting": event.pool.get_stats()["requests_waiting"],
            "waited_s": round(event.wait_time, 6),
            "timeout_s": event.timeout,
            "suppressed": suppressed,
        }
        if self.holders is not None:
            fields["holders"] = self.holders()
        self.log("warning", "pool_exhausted", **fields)

    def on_connect(self, event: ConnectEvent) -> None:
        if event.error is None:
            return
        # The class and libpq's message: it names host, port and user, never the password.
        self.log("error", "connection_failed", error_type=type(event.error).__name__,
                  error=str(event.error).strip(), duration_s=round(event.duration, 6))

    def on_discard(self, event: DiscardEvent) -> None:
        self.log("debug", "connection_discarded", reason=event.reason,
                  backend_pid=event.backend_pid, age_s=round(event.age, 3))

    def on_close(self, event: CloseEvent) -> None:
        if event.in_use:
            self.log("warning", "pool_closed_with_connections_out", in_use=event.in_use)
        else:
            self.log("info", "pool_closed")
