"""pytest plugin: fail a test that leaves a connection of an instrumented pool checked out.

Installed with the package (entry point ``pytest11``) and inactive until asked for: run pytest
with ``--pool-leaks`` to check every test, or mark tests with ``@pytest.mark.pool_leaks``.
The pools must be instrumented with the leak detector on (``instrument(pool)``; any
``leak_threshold`` but None). Only checkouts made while the test body runs count, so a
fixture that holds a connection for the whole test is not blamed.
"""

from __future__ import annotations

from collections.abc import Generator
from time import monotonic
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from .leaks import Leak


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("psycopg2_pool").addoption(
        "--pool-leaks", action="store_true", default=False,
        help="fail tests that leave a connection of an instrumented psycopg2_pool checked "
             "out (or drop one without returning it)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pool_leaks: fail this test if it leaves a psycopg2_pool connection "
                   "checked out (telemetry's leak detector)")


def _describe(pool_name: str, leak: Leak, what: str) -> str:
    stack = "\n".join(f"      {frame}" for frame in leak.stack)
    return f"  pool {pool_name!r}: connection {what} at {leak.site}\n{stack}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    if not (item.config.getoption("--pool-leaks") or item.get_closest_marker("pool_leaks")):
        return (yield)
    from .handle import instrumented_pools  # only when asked for: needs OpenTelemetry

    started = monotonic()
    result = yield
    problems = []
    for handle in instrumented_pools():
        detector = handle.leak_detector
        if detector is None:
            continue
        for leak in detector.checkouts_since(started):
            problems.append(_describe(handle.name, leak, "checked out and never returned,"
                                                         " taken"))
        for leak in detector.collected_since(started):
            problems.append(_describe(handle.name, leak, "dropped without putconn(), taken"))
    if problems:
        pytest.fail(f"the test leaked {len(problems)} pooled connection(s):\n"
                    + "\n".join(problems), pytrace=False)
    return result
