"""The pytest plugin fails a test that leaves a pooled connection out, naming the line."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INNER = '''
import os
import pytest
from psycopg2_pool import ConnectionPool
from telemetry import instrument

POOL = ConnectionPool(0, 4, dsn=os.environ["LEAK_DSN"], name="inner")
instrument(POOL, leak_threshold=60)


@pytest.fixture
def held():
    conn = POOL.getconn()  # a fixture's own connection is not the test's leak
    yield conn
    POOL.putconn(conn)


def test_clean(held):
    with POOL.connection() as conn:
        conn.cursor().execute("SELECT 1")


def test_leaves_one_out():
    keep.append(POOL.getconn())  # the leaking line


def test_drops_one():
    POOL.getconn()  # the dropped line


@pytest.mark.pool_leaks
def test_marked_leak():
    keep.append(POOL.getconn())  # the marked line


keep = []
'''


@pytest.fixture
def inner(pytester: pytest.Pytester, dsn: str, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("LEAK_DSN", dsn)
    pytester.makepyfile(test_inner=INNER)
    return pytester


def test_option_fails_leaking_tests_naming_the_line(inner: pytest.Pytester) -> None:
    result = inner.runpytest_subprocess("--pool-leaks", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines([
        "*test_leaves_one_out*",
        "*connection checked out and never returned, taken at test_inner.py:*"
        " in test_leaves_one_out*",
    ])
    result.stdout.fnmatch_lines(["*dropped without putconn(), taken at test_inner.py:*"
                                 " in test_drops_one*"])


def test_without_the_option_only_marked_tests_are_checked(inner: pytest.Pytester) -> None:
    result = inner.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*FAILED*test_marked_leak*"])
