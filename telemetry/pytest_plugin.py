"""Moved to :mod:`psycopg2_pool.pytest_plugin` (issue 14: the ``telemetry`` name clash).

The ``pytest11`` entry point names ``psycopg2_pool.pytest_plugin`` now. This module stays so
that an install made before the move, whose entry point still names it, starts pytest as
before; reinstalling the package removes that entry point (and the clash with an
application's own ``telemetry`` module that comes with it).
"""

from __future__ import annotations

from psycopg2_pool.pytest_plugin import (
    pytest_addoption,
    pytest_configure,
    pytest_runtest_call,
    pytest_terminal_summary,
)

__all__ = ["pytest_addoption", "pytest_configure", "pytest_runtest_call",
           "pytest_terminal_summary"]
