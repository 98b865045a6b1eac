"""instrument(): every metric's name, unit, type, attributes and values after a known workload."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum

from psycopg2_pool import (
    ConnectionPool,
    DiscardReason,
    PoolExhausted,
    ServerUnavailable,
)
from telemetry import instrument, names
from tests.support.otel import Otel, point
from tests.support.pools import refuse
from tests.support.system import free_port

POOL = {names.POOL_NAME: "metrics-test"}


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(1, 2, dsn=dsn, timeout=0.2, name="metrics-test")
    yield pool
    pool.close()


def workload(pool: ConnectionPool) -> dict[str, Any]:
    """3 checkouts (one holds 50 ms), one timeout, one connection thrown away."""
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
    a = pool.getconn()
    b = pool.getconn()
    time.sleep(0.05)
    with pytest.raises(PoolExhausted):
        pool.getconn()
    pool.putconn(a)
    pool.putconn(b, close=True)
    return {"checkouts": 3, "returns": 3, "opened": 2}


def test_every_metric_matches_its_spec(pool: ConnectionPool, otel: Otel) -> None:
    instrument(pool, meter_provider=otel.meter_provider, leak_threshold=None)
    workload(pool)
    metrics = otel.metrics()
    assert set(metrics) == {m.name for m in names.METRICS}
    for spec in names.METRICS:
        metric = metrics[spec.name]
        assert metric.unit == spec.unit, spec.name
        assert metric.description == spec.description, spec.name
        if spec.instrument == "Histogram":
            assert isinstance(metric.data, Histogram), spec.name
        elif spec.instrument == "ObservableGauge":
            assert isinstance(metric.data, Gauge), spec.name
        else:
            assert isinstance(metric.data, Sum), spec.name
            assert metric.data.is_monotonic == (spec.instrument == "ObservableCounter"), spec.name
        for data_point in metric.data.data_points:
            assert set(data_point.attributes) == set(spec.attributes), spec.name
            assert data_point.attributes[names.POOL_NAME] == "metrics-test"


def test_values_after_a_known_workload(pool: ConnectionPool, otel: Otel) -> None:
    instrument(pool, meter_provider=otel.meter_provider, leak_threshold=None)
    held = pool.getconn()
    expected = workload_with(pool, held)
    metrics = otel.metrics()
    assert point(metrics[names.COUNT], {names.STATE: "used"}).value == 1
    assert point(metrics[names.COUNT], {names.STATE: "idle"}).value == 0
    assert point(metrics[names.MAX]).value == 2
    assert point(metrics[names.IDLE_MAX]).value == 2
    assert point(metrics[names.IDLE_MIN]).value == 1
    assert point(metrics[names.PENDING_REQUESTS]).value == 0
    assert point(metrics[names.TIMEOUTS]).value == 1
    assert point(metrics[names.EXHAUSTIONS]).value == 1
    assert point(metrics[names.ERRORS]).value == 0
    assert point(metrics[names.LEAKS]).value == 0
    assert point(metrics[names.DISCARDS], {names.REASON: "closed_by_user"}).value == 1
    assert point(metrics[names.DISCARDS], {names.REASON: "broken"}).value == 0

    wait = point(metrics[names.WAIT_TIME])
    assert wait.count == expected["checkouts"]
    assert tuple(wait.explicit_bounds) == names.LATENCY_BUCKETS
    use = point(metrics[names.USE_TIME])
    assert use.count == expected["returns"]
    assert use.sum >= 0.05  # one connection was held 50 ms
    assert use.max >= 0.05
    create = point(metrics[names.CREATE_TIME])
    assert create.count == expected["opened"]
    assert 0 < create.sum < 5
    pool.putconn(held)


def workload_with(pool: ConnectionPool, held: Any) -> dict[str, int]:
    """With ``held`` out (maxconn=2): 2 more checkouts, a 50 ms hold, one timeout, one close."""
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
    other = pool.getconn()
    time.sleep(0.05)
    with pytest.raises(PoolExhausted):
        pool.getconn()
    pool.putconn(other, close=True)
    # minconn's connection was opened before instrument(): only the second one is timed.
    return {"checkouts": 3, "returns": 2, "opened": 1}


def test_pending_requests_and_wait_time_while_waiting(pool: ConnectionPool, otel: Otel) -> None:
    instrument(pool, meter_provider=otel.meter_provider, leak_threshold=None)
    a, b = pool.getconn(), pool.getconn()
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.getconn(timeout=5)))
    waiter.start()
    deadline = time.monotonic() + 5
    while pool.get_stats()["requests_waiting"] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert point(otel.metrics()[names.PENDING_REQUESTS]).value == 1
    time.sleep(0.1)
    pool.putconn(a)
    waiter.join()
    pool.putconn(got[0])
    pool.putconn(b)
    metrics = otel.metrics()
    assert point(metrics[names.PENDING_REQUESTS]).value == 0
    wait = point(metrics[names.WAIT_TIME])
    assert wait.count == 3
    assert wait.max >= 0.1  # the waiter's wait, in seconds
    # a took the idle connection (no wait: the first bucket); b waited for the connection the
    # pool opened for it in the background (a connect: a few ms, counted as a wait); the
    # waiter's 0.1 s lands in the (0.05, 0.1] or (0.1, 0.25] bucket, past 50 ms.
    assert wait.bucket_counts[0] == 1
    past_50ms = names.LATENCY_BUCKETS.index(0.05) + 1
    assert sum(wait.bucket_counts[past_50ms:]) >= 1


def test_connection_errors_are_counted(otel: Otel) -> None:
    pool = ConnectionPool(0, 2, host="127.0.0.1", port=1, connect_timeout=2, name="down")
    instrument(pool, meter_provider=otel.meter_provider, leak_threshold=None)
    for _ in range(2):
        with pytest.raises(psycopg2.OperationalError):
            pool.getconn()
    metrics = otel.metrics()
    assert point(metrics[names.ERRORS], {names.POOL_NAME: "down"}).value == 2
    assert point(metrics[names.COUNT], {names.POOL_NAME: "down", names.STATE: "used"}).value == 0
    pool.close()


def test_many_pools_share_instruments(dsn: str, otel: Otel) -> None:
    pools = [ConnectionPool(1, 3, dsn=dsn, name=f"p{i}") for i in range(3)]
    handles = [instrument(p, meter_provider=otel.meter_provider, leak_threshold=None)
               for p in pools]
    held = [p.getconn() for p in pools[:2]]
    metrics = otel.metrics()
    for i, expected_used in enumerate((1, 1, 0)):
        assert point(metrics[names.COUNT], {names.POOL_NAME: f"p{i}", names.STATE: "used"}
                     ).value == expected_used
    handles[1].uninstrument()
    names_seen = {p.attributes[names.POOL_NAME]
                  for p in otel.metrics()[names.MAX].data.data_points}
    assert names_seen == {"p0", "p2"}
    for p, c in zip(pools[:2], held, strict=True):
        p.putconn(c)
    for p in pools:
        p.close()


def test_global_providers_without_sdk_cost_nothing_and_work(pool: ConnectionPool) -> None:
    # No provider given and none set globally: the API's no-op/proxy providers.
    handle = instrument(pool, leak_threshold=None)
    for _ in range(100):
        pool.putconn(pool.getconn())
    handle.flush()
    assert pool.get_stats()["listener_errors"] == 0
    handle.uninstrument()


#: In a fresh interpreter (the global meter provider is set once per process): a pool
#: instrumented through OpenTelemetry's global proxy, before a provider is set (gunicorn's
#: master under --preload), then, with sys.argv[2] == "closed", closed; then the provider
#: set (a worker's post_fork) and a second pool instrumented through it.
GLOBAL_PROXY = """
import sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from psycopg2_pool import ConnectionPool
from telemetry import instrument, names

before = ConnectionPool(0, 2, dsn=sys.argv[1], name="before")
instrument(before, leak_threshold=None)
if sys.argv[2] == "closed":
    before.close()
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
after = ConnectionPool(0, 3, dsn=sys.argv[1], name="after")
instrument(after, leak_threshold=None)
after.putconn(after.getconn())
seen = {}
data = reader.get_metrics_data()
for resource in data.resource_metrics if data else ():
    for scope in resource.scope_metrics:
        for metric in scope.metrics:
            for data_point in metric.data.data_points:
                pool = data_point.attributes[names.POOL_NAME]
                seen.setdefault(metric.name, set()).add(pool)
print(*(sorted(seen.get(name, ())) for name in (names.MAX, names.COUNT, names.USE_TIME)))
"""


@pytest.mark.parametrize("first", ["open", "closed"])
def test_pools_instrumented_before_and_after_the_global_provider_is_set(
        dsn: str, first: str) -> None:
    """The proxy's instruments and the provider's are the same SDK instruments, which keep
    the first callbacks of an observable instrument only: a pool instrumented after the
    provider was set must still be observed, whether the first pool lives on or not."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    result = subprocess.run([sys.executable, "-c", GLOBAL_PROXY, dsn, first], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    both = "['after', 'before']" if first == "open" else "['after']"
    assert result.stdout.strip() == f"{both} {both} ['after']", result.stdout


def test_an_unreachable_server_shows_as_an_outage(otel: Otel) -> None:
    pool = ConnectionPool(0, 2, host="127.0.0.1", port=free_port(), connect_timeout=1,
                          name="down")
    instrument(pool, meter_provider=otel.meter_provider, leak_threshold=None)
    started = time.monotonic()
    gave_up = 0
    while time.monotonic() - started < 2:
        with pytest.raises(ServerUnavailable):
            pool.getconn(timeout=0.5)
        gave_up += 1
    metrics = otel.metrics()
    elapsed = time.monotonic() - started
    errors = point(metrics[names.ERRORS]).value
    stats = pool.get_stats()
    pool.close()
    assert errors > gave_up  # the pool retried while the callers waited
    assert point(metrics[names.ATTEMPTS]).value == errors  # none succeeded
    assert point(metrics[names.OUTAGES]).value == 1  # one outage however many attempts
    assert 1.5 < point(metrics[names.UNAVAILABLE_TIME]).value <= elapsed
    assert isinstance(metrics[names.UNAVAILABLE_TIME].data, Gauge)
    # ServerUnavailable is a timeout (semantic conventions), not an exhaustion nor a refusal
    assert point(metrics[names.TIMEOUTS]).value == gave_up
    assert point(metrics[names.EXHAUSTIONS]).value == 0
    assert point(metrics[names.REFUSED]).value == 0
    assert stats["outages"] == 1 and stats["connections_num"] == 0


def test_attempts_count_successes_and_the_gauge_is_zero_when_connects_work(
        pool: ConnectionPool, otel: Otel) -> None:
    instrument(pool, meter_provider=otel.meter_provider, leak_threshold=None)
    a, b = pool.getconn(), pool.getconn()  # minconn's connection, and one opened now
    pool.putconn(a)
    pool.putconn(b)
    metrics = otel.metrics()
    assert point(metrics[names.ATTEMPTS]).value == 2
    assert point(metrics[names.ERRORS]).value == 0
    assert point(metrics[names.OUTAGES]).value == 0
    assert point(metrics[names.UNAVAILABLE_TIME]).value == 0


def test_refusals_are_counted_apart_from_timeouts(dsn: str, otel: Otel) -> None:
    pool = ConnectionPool(1, 1, dsn=dsn, max_waiting=1, name="full")
    instrument(pool, meter_provider=otel.meter_provider, leak_threshold=None)
    refuse(pool, 3)
    metrics = otel.metrics()
    stats = pool.get_stats()
    pool.close()
    assert point(metrics[names.REFUSED]).value == 3
    assert point(metrics[names.TIMEOUTS]).value == 0  # refused at once: not a timeout
    # every connection was in use when they came: the waiter and the refused calls
    assert point(metrics[names.EXHAUSTIONS]).value == stats["exhausted"] == 4


def test_discards_cover_the_new_reasons(dsn: str, otel: Otel) -> None:
    failing = threading.Event()

    def reset(conn: Any) -> None:
        if failing.is_set():
            raise RuntimeError("reset failed")

    pool = ConnectionPool(0, 2, dsn=dsn, reset=reset, name="discards")
    instrument(pool, meter_provider=otel.meter_provider, leak_threshold=None)
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    pool.putconn(b)
    pool.resize(maxconn=1)  # two idle, one allowed: one closed
    failing.set()
    pool.putconn(pool.getconn())  # reset raises on the way back: closed
    metrics = otel.metrics()
    pool.close()
    reasons = {p.attributes[names.REASON]: p.value
               for p in metrics[names.DISCARDS].data.data_points}
    assert set(reasons) == set(DiscardReason.ALL)
    assert reasons[DiscardReason.RESIZED] == 1
    assert reasons[DiscardReason.FAILED_RESET] == 1
