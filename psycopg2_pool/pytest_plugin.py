"""pytest plugin: fail a test that leaves a pooled connection checked out, naming the line.

Installed with the package (entry point ``pytest11``) and inactive until asked for: run pytest
with ``--pool-leaks`` to check every test, or mark tests with ``@pytest.mark.pool_leaks``.
The pools need a leak checker attached (``telemetry.instrument(pool)`` with any
``leak_threshold`` but None); a session that checks tests but finds none says so in its
summary. Only checkouts made while the test body runs count, so a fixture that holds a
connection for the whole test is not blamed.

It lives here rather than in ``telemetry`` because pytest imports it at start-up in every
session: under the name ``telemetry`` it broke the sessions of applications that have a
``telemetry`` module of their own. It depends on pytest and finds checkers through the pools'
listeners (:mod:`psycopg2_pool.leakcheck`), never importing ``telemetry``.
"""

from __future__ import annotations

import weakref
from collections.abc import Generator
from time import monotonic
from typing import Any

import pytest

from .leakcheck import LeakRecord, checkers, open_pools


class _Session:
    """What the checked tests saw, for the terminal summary."""

    def __init__(self) -> None:
        self.checked = 0  # tests checked
        self.with_checker = 0  # of those, tests that found at least one leak checker
        self.unchecked_pools: dict[str, None] = {}  # names of pools without a checker

    def summary(self) -> list[str]:
        """Warning lines, or none when every checked test had a pool to check."""
        if not self.checked:
            return []
        lines = []
        if not self.with_checker:
            lines.append(f"--pool-leaks: nothing is instrumented: {self.checked} test(s) were "
                         f"checked, but no pool had a leak detector, so no leak could be "
                         f"found. Attach one with telemetry's instrument(pool) (leak_threshold "
                         f"not None).")
        if self.unchecked_pools:
            names = ", ".join(repr(name) for name in self.unchecked_pools)
            lines.append(f"--pool-leaks: pools without a leak detector, not checked: {names}")
        return lines


_SESSION = pytest.StashKey[_Session]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("psycopg2_pool").addoption(
        "--pool-leaks", action="store_true", default=False,
        help="fail tests that leave a connection of an instrumented psycopg2_pool checked "
             "out (or drop one without returning it)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pool_leaks: fail this test if it leaves a psycopg2_pool connection "
                   "checked out (telemetry's leak detector)")
    config.stash[_SESSION] = _Session()


def _describe(pool_name: str, leak: LeakRecord, what: str) -> str:
    block = "\n".join(f"    {line}" for line in leak.traceback.splitlines())
    return f"  pool {pool_name!r}: connection {what} at {leak.site}\n{block}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    if not (item.config.getoption("--pool-leaks") or item.get_closest_marker("pool_leaks")):
        return (yield)
    # Weakly: a test may check that a pool of its own is freed. A pool the test closes
    # is still checked (its checker stays attached until uninstrumented).
    before = [weakref.ref(pool) for pool in open_pools()]
    started = monotonic()
    result = yield
    pools = dict.fromkeys([*(p for ref in before if (p := ref()) is not None), *open_pools()])
    session = item.config.stash[_SESSION]
    session.checked += 1
    problems = []
    found = False
    for pool in pools:
        attached = checkers(pool)
        if not attached:
            session.unchecked_pools[pool.name] = None
        for checker in attached:
            found = True
            for leak in checker.checkouts_since(started):
                problems.append(_describe(pool.name, leak,
                                          "checked out and never returned, taken"))
            for leak in checker.collected_since(started):
                problems.append(_describe(pool.name, leak, "dropped without putconn(), taken"))
    session.with_checker += found
    if problems:
        pytest.fail(f"the test leaked {len(problems)} pooled connection(s):\n"
                    + "\n".join(problems), pytrace=False)
    return result


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash[_SESSION].summary() if _SESSION in config.stash else []
    if lines:
        terminalreporter.write_sep("=", "psycopg2_pool leak check", yellow=True)
        for line in lines:
            terminalreporter.write_line(line, yellow=True)
