"""OpenTelemetry metrics and spans, structlog events and leak reports for psycopg2_pool.

``from telemetry import instrument``; ``handle = instrument(pool)``; ``handle.uninstrument()``.
See docs/metrics.md for every metric, span and log event, and docs/leaks.md for leak reports.
"""

from __future__ import annotations

from .instrumentation import (
    DEFAULT_LEAK_THRESHOLD,
    PoolInstrumentation,
    instrument,
    instrumentation,
    instrumented_pools,
    uninstrument,
)
from .leaks import Leak

__all__ = [
    "DEFAULT_LEAK_THRESHOLD",
    "Leak",
    "PoolInstrumentation",
    "instrument",
    "instrumentation",
    "instrumented_pools",
    "uninstrument",
]
