"""``instrument(pool)`` / ``uninstrument(pool)``: attach metrics, spans, logs and leak detection.

The telemetry sees the pool only through its public listener interface
(:mod:`psycopg2_pool.events`). Instrumenting a pool twice with the same settings returns the
existing handle, so nothing is counted twice; with other settings it raises.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace

from psycopg2_pool import ConnectionPool
from psycopg2_pool.events import CloseEvent

from . import names
from .checkouts import CheckoutRecorder
from .leaks import Leak, LeakDetector
from .logs import LogEmitter, PoolLogs
from .metrics import PoolMetrics
from .spans import PoolSpans
from .worker import WORKER

#: Default leak threshold in seconds: long enough for a slow report query, short enough to
#: be seen during development. ``leak_threshold=None`` turns the detector off.
DEFAULT_LEAK_THRESHOLD = 30.0

_UNSET: Any = object()

try:
    from importlib.metadata import version as _dist_version

    _VERSION = _dist_version("psycopg2-pool")
except Exception:  # noqa: BLE001 - running from a source tree
    _VERSION = "0"


class PoolInstrumentation:
    """The handle ``instrument()`` returns: what was attached, and how to take it off."""

    def __init__(self, pool: ConnectionPool, *, name: str | None, meter_provider: Any,
                 tracer_provider: Any, logger: Any, leak_threshold: float | None,
                 checkout_spans: str = "waited") -> None:
        if leak_threshold is not None and (isinstance(leak_threshold, bool) or not isinstance(
                leak_threshold, (int, float)) or not leak_threshold > 0):
            raise ValueError(f"leak_threshold must be a number of seconds > 0, or None to turn "
                             f"the leak detector off; got {leak_threshold!r}")
        self._pool = weakref.ref(pool)  # the registry must not keep the pool alive
        self.name = name or pool.name
        meter = (meter_provider or otel_metrics.get_meter_provider()).get_meter(
            names.SCOPE, _VERSION)
        tracer = (tracer_provider or otel_trace.get_tracer_provider()).get_tracer(
            names.SCOPE, _VERSION)
        # Built in dependency order, each part given what it uses; none refers back.
        log = LogEmitter(self.name, logger)
        # Off (None): not attached at all, so checkouts pay nothing for it.
        detector = (LeakDetector(leak_threshold, log, pool) if leak_threshold is not None
                    else None)
        self.leak_detector = detector
        self.logs = PoolLogs(log, holders=None if detector is None
                             else detector.exhaustion_holders)
        self.metrics = PoolMetrics(pool, self.name, meter,
                                   leak_count=None if detector is None else detector.count)
        self.spans = PoolSpans(self.name, tracer)
        # The only listener on the checkout path: one call per getconn and per putconn for
        # the metrics, the spans and the leak record. The others see the rarer events.
        self.checkouts = CheckoutRecorder(self.metrics, self.spans, detector, checkout_spans)
        # The detector before the logs: on a timeout it makes the holders that its note on
        # the error and the pool_exhausted log event share. Last, this handle (on_close:
        # stop the background work with the pool).
        self._listeners: tuple[object, ...] = (
            self.checkouts, *(() if detector is None else (detector,)), self.metrics, self.spans,
            self.logs, self)
        for listener in self._listeners:
            pool.add_listener(listener)
        self._task: int | None = WORKER.add(self._background)
        self._active = True

    @property
    def pool(self) -> ConnectionPool | None:
        """The instrumented pool (None once it was garbage-collected)."""
        return self._pool()

    def on_close(self, event: CloseEvent) -> None:
        """The pool closed: final flush, no more background work nor observations.

        The listeners stay, so connections returned later are still logged (a leak that
        comes back, for instance) until :meth:`uninstrument`.
        """
        self._stop()

    def _stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            WORKER.remove(task)
            self.metrics.close()

    @property
    def active(self) -> bool:
        """False once :meth:`uninstrument` was called."""
        return self._active

    def uninstrument(self) -> None:
        """Detach every listener, flush the metrics, stop background work. Idempotent."""
        with _registry_lock:
            if not self._active:
                return
            self._active = False
            pool = self._pool()
            if pool is not None and _registry.get(pool) is self:
                del _registry[pool]
        pool = self._pool()
        if pool is not None:
            for listener in self._listeners:
                pool.remove_listener(listener)
        self._stop()

    def leaks(self, *, all_checkouts: bool = False) -> list[Leak]:
        """Connections held past the leak threshold (``all_checkouts``: every checked-out one).

        Empty when the leak detector is off (``leak_threshold=None``).
        """
        if self.leak_detector is None:
            return []
        return self.leak_detector.leaks(all_checkouts=all_checkouts)

    def expect_long_hold(self, conn: Any, reason: str = "expected long hold") -> None:
        """Declare that this checkout of ``conn`` is meant to be long: never report it."""
        if self.leak_detector is not None:
            self.leak_detector.expect_long_hold(conn, reason)

    def flush(self) -> None:
        """Record buffered latencies into the SDK now (exporters also trigger it)."""
        self.metrics.flush()

    def _background(self) -> None:
        self.metrics.flush(background=True)
        if self.leak_detector is not None:
            self.leak_detector.scan()

    def __repr__(self) -> str:
        state = "active" if self._active else "uninstrumented"
        return f"<PoolInstrumentation {self.name!r} {state}>"


_registry: weakref.WeakKeyDictionary[ConnectionPool, PoolInstrumentation] = (
    weakref.WeakKeyDictionary())
_registry_lock = threading.Lock()


#: What each handle was asked for (``instrument()``'s arguments, ``name`` resolved), to tell
#: a repeated call from a conflicting one.
_requested: weakref.WeakKeyDictionary[PoolInstrumentation, dict[str, Any]] = (
    weakref.WeakKeyDictionary())

#: Compared by identity: two providers or loggers are the same only if they are one object.
_BY_IDENTITY = ("meter_provider", "tracer_provider", "logger")


def instrument(pool: ConnectionPool, *, name: str | None = None, meter_provider: Any = None,
               tracer_provider: Any = None, logger: Any = None,
               leak_threshold: float | None = DEFAULT_LEAK_THRESHOLD,
               checkout_spans: str = "waited") -> PoolInstrumentation:
    """Attach OpenTelemetry metrics and spans, structlog events and the leak detector.

    ``meter_provider``/``tracer_provider`` default to the global ones (with only
    opentelemetry-api installed they are no-ops and cost next to nothing); ``logger`` defaults
    to ``structlog.get_logger("psycopg2_pool")``; ``name`` to the pool's name.
    ``checkout_spans``: inside a recording trace, a ``getconn`` span for the checkouts that
    waited or opened a connection (``"waited"``, and for failures always), for every checkout
    (``"all"``) or for failures only (``"none"``).

    Instrumenting an instrumented pool with the same settings returns its existing handle
    (nothing is counted twice); with different ones it raises ``ValueError``: the new settings
    could not take effect, and dropping them silently would leave, say, a leak threshold other
    than the one the program states. ``uninstrument(pool)`` first to change them.
    """
    if not isinstance(pool, ConnectionPool):
        raise TypeError(f"instrument() takes a psycopg2_pool.ConnectionPool, "
                        f"got {type(pool).__name__}")
    requested = {"name": name or pool.name, "meter_provider": meter_provider,
                 "tracer_provider": tracer_provider, "logger": logger,
                 "leak_threshold": leak_threshold, "checkout_spans": checkout_spans}
    with _registry_lock:
        existing = _registry.get(pool)
        if existing is not None:
            _check_same(existing, requested)
            return existing
        handle = PoolInstrumentation(pool, name=name, meter_provider=meter_provider,
                                     tracer_provider=tracer_provider, logger=logger,
                                     leak_threshold=leak_threshold,
                                     checkout_spans=checkout_spans)
        _requested[handle] = requested
        _registry[pool] = handle
        return handle


def _check_same(handle: PoolInstrumentation, requested: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming every setting of ``requested`` the live handle differs in."""
    before = _requested.get(handle, {})
    differ = [key for key, value in requested.items()
              if key in before and (before[key] is not value if key in _BY_IDENTITY
                                    else before[key] != value)]
    if not differ:
        return
    has = ", ".join(f"{key}={_shown(before[key])}" for key in differ)
    asks = ", ".join(f"{key}={_shown(requested[key])}" for key in differ)
    raise ValueError(f"pool {handle.name!r} is already instrumented with {has}; this call "
                     f"asks for {asks}, which cannot take effect on a live handle. "
                     f"Call uninstrument(pool) first to instrument it anew, or pass the same "
                     f"settings to get the existing handle (telemetry.instrumentation(pool) "
                     f"returns it without settings)")


def _shown(value: Any) -> str:
    """A setting for a message: numbers and names as written, objects by their type."""
    if value is None or isinstance(value, (int, float, str)):
        return repr(value)
    return f"<{type(value).__name__} object>"


def uninstrument(pool: ConnectionPool) -> None:
    """Undo :func:`instrument` for ``pool`` (nothing happens if it is not instrumented)."""
    with _registry_lock:
        handle = _registry.get(pool)
    if handle is not None:
        handle.uninstrument()


def instrumentation(pool: ConnectionPool) -> PoolInstrumentation | None:
    """The active handle of an instrumented pool, or None."""
    return _registry.get(pool)


def instrumented_pools() -> list[PoolInstrumentation]:
    """Every active handle (the pytest plugin looks at them)."""
    with _registry_lock:
        return list(_registry.values())
