"""Bulk recording gives exactly what ``Histogram.record()`` gives for the same values.

The fast path merges into SDK internals: if an SDK release changes them, these tests say so
(and the code falls back to ``record()``, which the last tests check too).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
)
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View

from telemetry import bulk_record, names

ATTRIBUTES = {names.POOL_NAME: "bulk"}


def readers() -> list[InMemoryMetricReader]:
    from opentelemetry.sdk.metrics import Histogram

    return [InMemoryMetricReader(),
            InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA})]


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    if data is None:
        return []
    return [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            if m.name == name for p in m.data.data_points]


def comparable(point: Any) -> tuple[Any, ...]:
    if isinstance(point, HistogramDataPoint):
        return (point.count, tuple(point.bucket_counts), point.min, point.max,
                round(point.sum, 9), tuple(point.explicit_bounds), dict(point.attributes))
    return (point.count, round(point.sum, 9), point.min, point.max, dict(point.attributes))


def values(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    out = [rng.expovariate(200) for _ in range(n)]
    out += [0.0, 0.0001, 0.00025, 10.0, 25.0]  # zeros, exact bounds, beyond the last bound
    return out


@pytest.mark.parametrize("views", [False, True], ids=["advisory-bounds", "view-bounds"])
def test_merge_equals_record(views: bool) -> None:
    view_list = [View(instrument_name="h", aggregation=None)] if views else []
    fast_readers, slow_readers = readers(), readers()
    fast = MeterProvider(metric_readers=fast_readers, views=view_list).get_meter("t")
    slow = MeterProvider(metric_readers=slow_readers, views=view_list).get_meter("t")
    bounds = list(names.LATENCY_BUCKETS)
    fast_h = fast.create_histogram("h", unit="s", explicit_bucket_boundaries_advisory=bounds)
    slow_h = slow.create_histogram("h", unit="s", explicit_bucket_boundaries_advisory=bounds)
    for round_number in range(3):  # several collections: cumulative and delta both checked
        batch = values(3000, round_number)
        for value in batch:
            slow_h.record(value, ATTRIBUTES)
        merged = list(batch)
        assert bulk_record._merge(fast_h, ATTRIBUTES, merged) is True
        for fast_reader, slow_reader in zip(fast_readers, slow_readers, strict=True):
            got = [comparable(p) for p in points(fast_reader, "h")]
            want = [comparable(p) for p in points(slow_reader, "h")]
            assert got == want and got


def test_first_values_create_the_point_then_merge() -> None:
    (reader, _) = all_readers = readers()
    meter = MeterProvider(metric_readers=all_readers).get_meter("t")
    histogram = meter.create_histogram("h", unit="s",
                                       explicit_bucket_boundaries_advisory=[0.1, 1.0])
    bulk_record.record_many(histogram, ATTRIBUTES, [0.05, 0.5, 5.0])
    (point,) = points(reader, "h")
    assert point.count == 3 and list(point.bucket_counts) == [1, 1, 1]
    assert point.min == 0.05 and point.max == 5.0


def test_unsupported_aggregation_falls_back_to_record() -> None:
    reader = InMemoryMetricReader()
    view = View(instrument_name="h", aggregation=ExponentialBucketHistogramAggregation())
    meter = MeterProvider(metric_readers=[reader], views=[view]).get_meter("t")
    histogram = meter.create_histogram("h", unit="s")
    histogram.record(0.01, ATTRIBUTES)
    assert bulk_record._merge(histogram, ATTRIBUTES, [0.02, 0.03]) is False
    bulk_record.record_many(histogram, ATTRIBUTES, [0.02, 0.03])
    (point,) = points(reader, "h")
    assert point.count == 3


def test_bad_values_are_left_to_record() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    histogram = meter.create_histogram("h", unit="s")
    histogram.record(0.01, ATTRIBUTES)
    assert bulk_record._merge(histogram, ATTRIBUTES, [-1.0, 0.5]) is False
    assert bulk_record._merge(histogram, ATTRIBUTES, [float("nan")]) is False


def test_no_sdk_behind_the_api_is_harmless() -> None:
    from opentelemetry.metrics import NoOpMeter

    histogram = NoOpMeter("t").create_histogram("h")
    bulk_record.record_many(histogram, ATTRIBUTES, [0.1, 0.2])  # nothing to record into
