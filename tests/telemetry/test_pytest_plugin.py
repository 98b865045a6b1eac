"""The pytest plugin fails a test that leaves a pooled connection out, naming the line.

Each inner session runs in a subprocess that sees this tree installed as pyproject.toml says
(the ``installed`` fixture), so the ``pytest11`` entry point under test is this tree's.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
HEADER = "Connection checked out at (most recent call last):"

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
def installed(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Subprocesses see this tree installed: a dist-info with pyproject.toml's entry points,
    ahead of the environment's own install (pluggy loads the first of a name, skips the rest).
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    site = tmp_path_factory.mktemp("site")
    info = site / f"psycopg2_pool-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n")
    lines = []
    for group, points in project["entry-points"].items():
        lines += [f"[{group}]", *(f"{name} = {value}" for name, value in points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(ROOT)]))


@pytest.fixture
def inner(pytester: pytest.Pytester, dsn: str, monkeypatch: pytest.MonkeyPatch,
          installed: None) -> pytest.Pytester:
    monkeypatch.setenv("LEAK_DSN", dsn)
    pytester.makepyfile(test_inner=INNER)
    return pytester


def inner_line(text: str) -> int:
    """The line of test_inner.py that ends with ``text``."""
    (number,) = [n for n, line in enumerate(INNER.splitlines()[1:], start=1)
                 if line.endswith(text)]
    return number


def exact(result: pytest.RunResult, lines: list[str]) -> None:
    """These lines, exactly and one after the other, are in the session's output."""
    result.stdout.re_match_lines([re.escape(line) + "$" for line in lines], consecutive=True)


def test_option_fails_leaking_tests_naming_the_line(inner: pytest.Pytester) -> None:
    result = inner.runpytest_subprocess("--pool-leaks", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=3)
    path = inner.path / "test_inner.py"
    leaking, dropped = inner_line("# the leaking line"), inner_line("# the dropped line")
    # The same traceback-style block as the log reports: file, line, function, source.
    exact(result, [
        "the test leaked 1 pooled connection(s):",
        f"  pool 'inner': connection checked out and never returned, taken at "
        f"test_inner.py:{leaking} in test_leaves_one_out",
        f"    {HEADER}",
        f'      File "{path}", line {leaking}, in test_leaves_one_out',
        "        keep.append(POOL.getconn())  # the leaking line",
    ])
    exact(result, [
        f"  pool 'inner': connection dropped without putconn(), taken at "
        f"test_inner.py:{dropped} in test_drops_one",
        f"    {HEADER}",
        f'      File "{path}", line {dropped}, in test_drops_one',
        "        POOL.getconn()  # the dropped line",
    ])
    assert "nothing is instrumented" not in result.stdout.str()


def test_without_the_option_only_marked_tests_are_checked(inner: pytest.Pytester) -> None:
    result = inner.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*FAILED*test_marked_leak*"])


OWN_TELEMETRY = '''"""The application's own telemetry module: a common name."""
NAME = "the application's"
'''

OWN_TESTS = '''
import sys

import telemetry


def test_the_applications_own_telemetry_is_imported():
    assert telemetry.NAME == "the application's"
    assert not any(name.startswith("telemetry.") for name in sys.modules)
'''


@pytest.mark.parametrize("args", [(), ("--pool-leaks",)], ids=["plain", "pool-leaks"])
def test_an_application_with_its_own_telemetry_module_runs_pytest(
        pytester: pytest.Pytester, installed: None, args: tuple[str, ...]) -> None:
    """Issue 14: pytest imported ``telemetry.pytest_plugin`` at start-up and aborted."""
    pytester.makepyfile(telemetry=OWN_TELEMETRY, test_app=OWN_TESTS)
    result = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider")
    assert "Error" not in result.stderr.str(), result.stderr.str()
    result.assert_outcomes(passed=1)


OWN_CHECKER = '''
import os

from psycopg2_pool import ConnectionPool

POOL = ConnectionPool(0, 1, dsn=os.environ["LEAK_DSN"], name="own")


class Record:
    site = "app.py:7 in handler"
    traceback = ('Connection checked out at (most recent call last):\\n'
                 '  File "app.py", line 7, in handler\\n'
                 '    conn = pool.getconn()')


class Checker:
    """A leak checker of the application's own: any listener with the two methods."""

    def on_checkout(self, event):
        pass

    def checkouts_since(self, started):
        return [Record()]

    def collected_since(self, started):
        return []


POOL.add_listener(Checker())


def test_blamed_by_its_checker():
    pass
'''


def test_checkers_are_found_among_the_pools_listeners(
        pytester: pytest.Pytester, installed: None, dsn: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``telemetry`` at all (the application's shadows it): the seam is the listeners."""
    monkeypatch.setenv("LEAK_DSN", dsn)
    pytester.makepyfile(telemetry=OWN_TELEMETRY, test_checker=OWN_CHECKER)
    result = pytester.runpytest_subprocess("--pool-leaks", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    exact(result, [
        "the test leaked 1 pooled connection(s):",
        "  pool 'own': connection checked out and never returned, taken at app.py:7 in handler",
        f"    {HEADER}",
        '      File "app.py", line 7, in handler',
        "        conn = pool.getconn()",
    ])


UNINSTRUMENTED = '''
import os

from psycopg2_pool import ConnectionPool

POOL = ConnectionPool(0, 2, dsn=os.environ["LEAK_DSN"], name="plain")
keep = []


def test_leaks_unseen():
    keep.append(POOL.getconn())
'''


def test_nothing_instrumented_is_said(pytester: pytest.Pytester, installed: None, dsn: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14: ``--pool-leaks`` with no leak detector passed a leaking test without a word."""
    monkeypatch.setenv("LEAK_DSN", dsn)
    pytester.makepyfile(test_plain=UNINSTRUMENTED)
    result = pytester.runpytest_subprocess("--pool-leaks", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)  # nothing can tell: but the session says so
    result.stdout.re_match_lines(["=+ psycopg2_pool leak check =+$"])
    exact(result, [
        "--pool-leaks: nothing is instrumented: 1 test(s) were checked, but no pool had a leak "
        "detector, so no leak could be found. Attach one with telemetry's instrument(pool) "
        "(leak_threshold not None).",
        "--pool-leaks: pools without a leak detector, not checked: 'plain'",
    ])


def test_the_plugin_is_not_looked_for_under_telemetry() -> None:
    """The entry point names a module of psycopg2_pool, which never imports telemetry."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {
        "psycopg2_pool_leaks": "psycopg2_pool.pytest_plugin"}


def test_the_old_module_still_loads_for_installs_made_before_the_move() -> None:
    """An install whose entry point still names ``telemetry.pytest_plugin`` keeps working."""
    import psycopg2_pool.pytest_plugin as plugin
    import telemetry.pytest_plugin as old

    for hook in ("pytest_addoption", "pytest_configure", "pytest_runtest_call",
                 "pytest_terminal_summary"):
        assert getattr(old, hook) is getattr(plugin, hook)
