"""OpenTelemetry metrics for connection pools (semantic conventions, db client connections).

Two rules keep ``getconn``/``putconn`` cheap:

- Gauges and counters are observable instruments: their callbacks read ``pool.get_stats()``
  when a reader collects, so the hot path updates nothing for them.
- Latencies (wait, use, create time) are appended to a list on the hot path (~50 ns) and
  recorded into the SDK histograms off it, in bulk (:mod:`telemetry.bulk_record`): at each
  collection (the observable callbacks run before the SDK reads its histograms) and every
  half second by the background worker, which bounds the memory the buffers take.

Instruments are made once per meter and shared by every pool instrumented with that meter:
the SDK keeps only the first callback of an observable instrument created twice by name.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from psycopg2_pool import ConnectionPool, DiscardReason
from psycopg2_pool import stats as keys
from psycopg2_pool.events import ConnectEvent, PoolListener

from . import names
from .bulk_record import record_many
from .names import METRIC_BY_NAME

#: Buffered values per histogram before the hot path records them itself: the background
#: flush normally keeps far below it; past it, callers pay the SDK's price (backpressure)
#: instead of the buffer growing without bound.
BACKLOG = 20_000


class PoolMetrics(PoolListener):
    """One pool's metrics: buffers latencies, answers the observable callbacks.

    ``leak_count``: the leak detector's count, read at each collection (None: the detector is
    off, and the leaks metric stays at 0).
    """

    def __init__(self, pool: ConnectionPool, pool_name: str, meter: Meter,
                 leak_count: Callable[[], int] | None = None) -> None:
        self._pool = weakref.ref(pool)  # the telemetry never keeps a pool alive
        self.attributes = {names.POOL_NAME: pool_name}
        self.leak_count = leak_count
        # Lists: append is one atomic C call; drains take a prefix (see _drain).
        self.wait_times: list[float] = []
        self.use_times: list[float] = []
        self.create_times: list[float] = []
        self._drain_lock = threading.Lock()
        self.instruments = _instruments(meter)
        self.instruments.add(self)

    # -- the checkout path is telemetry.checkouts': it appends to the buffers above, and
    # calls flush() itself when one passes BACKLOG (backpressure) --------------------------

    def on_connect(self, event: ConnectEvent) -> None:
        if event.error is None:
            self.create_times.append(event.duration)

    # -- off the hot path --------------------------------------------------------------------

    def flush(self, *, background: bool = False) -> None:
        """Record the buffered latencies into the SDK histograms.

        ``background``: when values must be replayed one by one, give the GIL up now and then
        so that threads waiting for it (a query that just got its answer) are not held up.
        """
        shared = self.instruments
        self._drain(self.wait_times, shared.wait_time, background)
        self._drain(self.use_times, shared.use_time, background)
        self._drain(self.create_times, shared.create_time, background)

    def _drain(self, buffer: list[float], histogram: Any, background: bool = False) -> None:
        """Record what ``buffer`` holds now; values appended meanwhile stay for the next."""
        with self._drain_lock:
            count = len(buffer)
            if not count:
                return
            values = buffer[:count]
            del buffer[:count]  # appends racing with us land after ``count``: kept
        record_many(histogram, self.attributes, values, yield_gil=background)

    def close(self) -> None:
        """Flush, then stop reporting (uninstrument)."""
        self.flush()
        self.instruments.remove(self)

    def observe(self) -> dict[str, Any]:
        """The pool's stats, read once per collection (empty once the pool is gone)."""
        pool = self._pool()
        if pool is None:
            return {}
        stats = pool.get_stats()
        stats["leaks"] = self.leak_count() if self.leak_count is not None else 0
        stats["servers"] = pool.servers()
        return stats


class _SharedInstruments:
    """The instruments of one meter, and the pools that report through them."""

    def __init__(self, meter: Meter) -> None:
        self.pools: list[PoolMetrics] = []
        self._lock = threading.Lock()
        self._snapshot: dict[int, dict[str, Any]] = {}

        def histogram(name: str) -> Any:
            spec = METRIC_BY_NAME[name]
            return meter.create_histogram(
                name, unit=spec.unit, description=spec.description,
                explicit_bucket_boundaries_advisory=list(names.LATENCY_BUCKETS))

        self.wait_time = histogram(names.WAIT_TIME)
        self.use_time = histogram(names.USE_TIME)
        self.create_time = histogram(names.CREATE_TIME)

        def observable(name: str, callback: Callable[[CallbackOptions], Iterable[Observation]]
                       ) -> None:
            spec = METRIC_BY_NAME[name]
            create = {"ObservableCounter": meter.create_observable_counter,
                      "ObservableUpDownCounter": meter.create_observable_up_down_counter,
                      "ObservableGauge": meter.create_observable_gauge}[spec.instrument]
            create(name, callbacks=[callback], unit=spec.unit, description=spec.description)

        # The first callback the SDK runs in a collection flushes the histograms and takes one
        # stats snapshot per pool; the others read that snapshot.
        observable(names.COUNT, self._observe_count)
        observable(names.IDLE_MAX, self._gauge(keys.POOL_MAX))
        observable(names.IDLE_MIN, self._gauge(keys.POOL_MIN))
        observable(names.MAX, self._gauge(keys.POOL_MAX))
        observable(names.PENDING_REQUESTS, self._gauge(keys.REQUESTS_WAITING))
        observable(names.TIMEOUTS, self._gauge(keys.TIMEOUTS))
        observable(names.EXHAUSTIONS, self._gauge(keys.EXHAUSTED))
        observable(names.ERRORS, self._gauge(keys.CONNECTIONS_ERRORS))
        observable(names.ATTEMPTS, self._gauge(keys.CONNECTIONS_NUM, keys.CONNECTIONS_ERRORS))
        observable(names.OUTAGES, self._gauge(keys.OUTAGES))
        observable(names.ROLE_CHANGES, self._gauge(keys.ROLE_CHANGES))
        observable(names.UNAVAILABLE_TIME, self._gauge(keys.UNAVAILABLE_S))
        observable(names.REFUSED, self._gauge(keys.REQUESTS_REFUSED))
        observable(names.LEAKS, self._gauge("leaks"))
        observable(names.DISCARDS, self._observe_discards)
        observable(names.SERVER_CONNECTIONS, self._observe_servers)

    def add(self, metrics: PoolMetrics) -> None:
        with self._lock:
            self.pools = [*self.pools, metrics]

    def remove(self, metrics: PoolMetrics) -> None:
        with self._lock:
            self.pools = [m for m in self.pools if m is not metrics]
            self._snapshot.pop(id(metrics), None)

    def _observe_count(self, options: CallbackOptions) -> Iterable[Observation]:
        snapshot = {}
        observations = []
        for metrics in self.pools:
            metrics.flush()
            stats = metrics.observe()
            snapshot[id(metrics)] = stats
            if not stats:
                continue
            attributes = metrics.attributes
            observations.append(Observation(stats[keys.POOL_AVAILABLE],
                                            {**attributes, names.STATE: "idle"}))
            observations.append(Observation(stats[keys.POOL_IN_USE],
                                            {**attributes, names.STATE: "used"}))
        self._snapshot = snapshot
        return observations

    def _stats(self, metrics: PoolMetrics) -> dict[str, Any]:
        stats = self._snapshot.get(id(metrics))
        return stats if stats is not None else metrics.observe()

    def _gauge(self, *keys: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """A callback observing one stats key per pool (or the sum of several keys)."""
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            out = []
            for metrics in self.pools:
                stats = self._stats(metrics)
                values = [stats.get(key) for key in keys]
                if any(v is None for v in values):  # pool gone, or no such figure
                    continue
                value = sum(v for v in values if v is not None)
                if value == float("inf"):  # maxconn unbounded: no meaningful maximum
                    continue
                out.append(Observation(value, metrics.attributes))
            return out
        return callback

    def _observe_discards(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for metrics in self.pools:
            stats = self._stats(metrics)
            for reason in DiscardReason.ALL if stats else ():
                out.append(Observation(stats.get(keys.discarded(reason), 0),
                                       {**metrics.attributes, names.REASON: reason}))
        return out


    def _observe_servers(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for metrics in self.pools:
            for server, count in self._stats(metrics).get("servers", {}).items():
                address, _, port = server.rpartition(":")
                attributes = {**metrics.attributes, names.SERVER_ADDRESS: address}
                if port.isdigit():
                    attributes[names.SERVER_PORT] = int(port)
                out.append(Observation(count, attributes))
        return out


_by_meter: weakref.WeakKeyDictionary[Meter, _SharedInstruments] = weakref.WeakKeyDictionary()
_by_meter_lock = threading.Lock()


def _instruments(meter: Meter) -> _SharedInstruments:
    """The instruments of ``meter``, made on its first pool.

    A meter of OpenTelemetry's global proxy (got before a meter provider was set: a pool
    built in gunicorn's master under ``--preload``) and the provider's meter it forwards to
    once one is set make the same SDK instruments, which keep the first callbacks of an
    observable instrument only. So both share one set: a second set's callbacks would never
    run, and its pools would show no gauges nor, being flushed by those callbacks, latencies.
    """
    real = _real(meter)
    with _by_meter_lock:
        shared = _by_meter.get(real)
        if shared is None:  # made through a proxy that now forwards to this meter?
            shared = next((s for key, s in _by_meter.items() if _real(key) is real), None)
        if shared is None:
            shared = _SharedInstruments(meter)
        _by_meter[real] = shared
        return shared


def _real(meter: Meter) -> Meter:
    """The meter a global proxy's meter forwards to once a provider is set, else itself."""
    forwards: Meter | None = getattr(meter, "_real_meter", None)  # the API's _ProxyMeter
    return forwards if forwards is not None else meter
