"""OpenTelemetry metrics and spans, structlog events and leak reports for psycopg2_pool.

``from telemetry import instrument``; ``handle = instrument(pool)``; ``handle.uninstrument()``.
See docs/telemetry.md for every metric, span and log event, and docs/leaks.md for leak reports.

Names are imported on first use, so that importing the package (or ``telemetry.pytest_plugin``,
kept for installs made before the plugin moved to ``psycopg2_pool.pytest_plugin``) costs
nothing and needs no OpenTelemetry.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .handle import (
        DEFAULT_LEAK_THRESHOLD,
        PoolInstrumentation,
        instrument,
        instrumentation,
        instrumented_pools,
        uninstrument,
    )
    from .leaks import Leak

_EXPORTS = {
    "DEFAULT_LEAK_THRESHOLD": "handle",
    "PoolInstrumentation": "handle",
    "instrument": "handle",
    "instrumentation": "handle",
    "instrumented_pools": "handle",
    "uninstrument": "handle",
    "Leak": "leaks",
    "names": "",
}

__all__ = [
    "DEFAULT_LEAK_THRESHOLD",
    "Leak",
    "PoolInstrumentation",
    "instrument",
    "instrumentation",
    "instrumented_pools",
    "names",
    "uninstrument",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'telemetry' has no attribute {name!r}")
    if not module:
        return importlib.import_module(f"{__name__}.{name}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
