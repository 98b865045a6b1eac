"""Record many values into an OpenTelemetry SDK histogram at once, off the hot path.

``Histogram.record()`` costs ~5 µs a value in the Python SDK (measurement object, attribute
cleaning and hashing per reader), which would more than double a pool checkout if paid there.
The hot path only appends to a list; at collection (and every half second) the buffered values
come here:

- **merge** (the fast way, ~0.1 µs a value): sort them once, count them into the SDK's own
  bucket boundaries, and add counts, sum, min and max into each reader's
  ``_ExplicitBucketHistogramAggregation`` under its lock. This uses SDK internals, so every
  step is feature-detected, and a test compares the result with ``record()`` for the same
  values (cumulative and delta readers, views);
- **replay** (the public way): ``record()`` each value. Used whenever the merge is not sure:
  another SDK version, an exponential or custom view, negative or non-finite values.

No value is counted twice or lost either way. Exemplars are not kept for buffered values.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import Any

#: Values merged per slice: bounds how long one sort holds the GIL (~1 ms).
SLICE = 8192
#: Records between GIL releases when replaying in the background.
REPLAY_CHUNK = 64


def record_many(histogram: Any, attributes: Mapping[str, Any], values: list[float], *,
                yield_gil: bool = False) -> None:
    """Record ``values`` (consumed: the list is sorted in place) into ``histogram``."""
    replay = False
    for start in range(0, len(values), SLICE):
        part = values[start:start + SLICE]
        if replay or not _merge(histogram, attributes, part):
            replay = True  # not mergeable here: replay this slice and the rest
            _replay(histogram, attributes, part, yield_gil)


def _replay(histogram: Any, attributes: Mapping[str, Any], values: Sequence[float],
            yield_gil: bool) -> None:
    record = histogram.record
    for done, value in enumerate(values, 1):
        record(value, attributes)
        if yield_gil and done % REPLAY_CHUNK == 0:
            time.sleep(0)  # let a thread waiting for the GIL (a query's answer) go first


def _bucket_counts(ordered: list[float], bounds: Sequence[float]) -> list[int]:
    """Counts per bucket as the SDK assigns them: bucket i holds bounds[i-1] < v <= bounds[i]."""
    counts, previous = [], 0
    for bound in bounds:
        cumulative = bisect_right(ordered, bound)
        counts.append(cumulative - previous)
        previous = cumulative
    counts.append(len(ordered) - previous)
    return counts


def _aggregations(instrument: Any, attributes: Mapping[str, Any]) -> tuple[list[Any], bool] | None:
    """The SDK aggregations holding our points, one per reader (and view); whether some
    reader has none yet. None when any of them is not an explicit-bucket histogram."""
    from opentelemetry.sdk.metrics._internal._view_instrument_match import _hash_attributes
    from opentelemetry.sdk.metrics._internal.aggregation import (
        _ExplicitBucketHistogramAggregation,
    )

    found, missing = [], False
    for storage in instrument._measurement_consumer._reader_storages.values():
        for match in storage._get_or_init_view_instrument_match(instrument):
            keys = match._view._attribute_keys
            selected = (dict(attributes) if keys is None
                        else {k: v for k, v in attributes.items() if k in keys})
            aggregation = match._attributes_aggregation.get(_hash_attributes(selected))
            if aggregation is None:
                missing = True
            elif type(aggregation) is not _ExplicitBucketHistogramAggregation:
                return None
            else:
                found.append(aggregation)
    return found, missing


def _merge(histogram: Any, attributes: Mapping[str, Any], values: list[float]) -> bool:
    """Merge ``values`` into the SDK's aggregations; False (nothing done) when unsure."""
    if not values:
        return True
    try:
        instrument = getattr(histogram, "_real_instrument", None) or histogram  # API proxy
        if not hasattr(instrument, "_measurement_consumer"):
            return False  # a no-op or foreign instrument: record() knows what to do
        values.sort()
        if not (values[0] >= 0 and math.isfinite(values[-1])):
            return False  # record() drops such values with a warning: let it
        targets = _aggregations(instrument, attributes)
        if targets is None:
            return False
        aggregations, missing = targets
        if missing:  # a reader has no point for these attributes yet: let the SDK make it
            histogram.record(values.pop(0), attributes)
            targets = _aggregations(instrument, attributes)
            if targets is None or targets[1]:
                _replay(histogram, attributes, values, False)
                return True
            aggregations = targets[0]
            if not values:
                return True
        total, lowest, highest = math.fsum(values), values[0], values[-1]
        counts_by_bounds: dict[tuple[float, ...], list[int]] = {}
        for aggregation in aggregations:
            bounds = tuple(aggregation._boundaries)
            counts = counts_by_bounds.get(bounds)
            if counts is None:
                counts = counts_by_bounds[bounds] = _bucket_counts(values, bounds)
            with aggregation._lock:
                if aggregation._value is None:
                    aggregation._value = aggregation._get_empty_bucket_counts()
                current = aggregation._value
                for index, count in enumerate(counts):
                    if count:
                        current[index] += count
                aggregation._sum += total
                if aggregation._record_min_max:
                    aggregation._min = min(aggregation._min, lowest)
                    aggregation._max = max(aggregation._max, highest)
        return True
    except (AttributeError, TypeError, ImportError, KeyError):  # SDK internals changed
        return False
