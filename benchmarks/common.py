"""What the benchmark scripts share: a PostgreSQL to run against (the demo's helper)."""

from __future__ import annotations

from telemetry.demo import database as server

__all__ = ["server"]
