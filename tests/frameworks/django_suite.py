"""The test runner that ``test_django_suite.py`` gives Django's own ``runtests.py``
(``TEST_RUNNER`` in the settings it writes): Django's ``DiscoverRunner``, which also writes
each test's outcome, and the driver and backend the run was really on, to the JSON file named
by ``$DJANGO_SUITE_RESULTS``.

Outcomes are taken from the result object rather than parsed from ``-v 2`` output: with
``--parallel`` the workers' events are replayed on the parent's result, so one object sees
every test, and a test's name cannot be confused with a traceback's text. This module runs
inside ``runtests.py`` (Django's ``tests/`` first on ``sys.path``, this repository after it).
"""

from __future__ import annotations

import json
import os
import traceback
import unittest
from typing import Any

from django.test.runner import DiscoverRunner

RESULTS_ENV = "DJANGO_SUITE_RESULTS"

#: Worst first: a test with a failing subtest is a failure even if another subtest passed.
RANK = {"error": 0, "fail": 1, "unexpected_success": 2, "ok": 3, "expected_failure": 4,
        "skip": 5}


class RecordingResult(unittest.TextTestResult):
    """Django's text result, also keeping ``{test id: outcome}`` (the worst one seen)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: dict[str, str] = {}
        self.messages: dict[str, str] = {}  #: the traceback of each failure and error
        self.skip_reasons: dict[str, str] = {}

    def _record(self, test: Any, outcome: str, err: Any = None) -> None:
        name = test.id()
        old = self.outcomes.get(name)
        if old is None or RANK[outcome] < RANK[old]:
            self.outcomes[name] = outcome
            if err is not None:
                self.messages[name] = "".join(traceback.format_exception(*err))[-3000:]

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self._record(test, "ok")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._record(test, "fail", err)

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._record(test, "error", err)

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self._record(test, "skip")
        self.skip_reasons[test.id()] = reason

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._record(test, "expected_failure")

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._record(test, "unexpected_success")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._record(test, "fail" if failed else "error", err)


class Runner(DiscoverRunner):  # type: ignore[misc]  # Django ships no type hints
    """``DiscoverRunner`` writing the outcomes, and what the run was on, as JSON: once the
    tests have run, and again once the test databases are destroyed (or failed to be)."""

    report: dict[str, Any]

    def get_resultclass(self) -> type[unittest.TextTestResult]:
        return RecordingResult

    def setup_databases(self, **kwargs: Any) -> Any:
        config = super().setup_databases(**kwargs)
        # After the test databases exist, before the tests (and the parallel workers).
        self.report = {"backends": describe_backends(), "parallel": self.parallel,
                       "declared_skips": django_declared_skips(),
                       "backend_skips": backend_declared_skips(), "teardown": None}
        return config

    def run_suite(self, suite: Any, **kwargs: Any) -> Any:
        result = super().run_suite(suite, **kwargs)
        self.report.update(outcomes=result.outcomes, messages=result.messages,
                           skip_reasons=result.skip_reasons)
        self._write()
        return result

    def teardown_databases(self, old_config: Any, **kwargs: Any) -> None:
        try:
            super().teardown_databases(old_config, **kwargs)
        except Exception as exc:
            self.report["teardown"] = f"{type(exc).__name__}: {exc}"
            raise
        else:
            self.report["teardown"] = "ok"
        finally:
            self._write()

    def _write(self) -> None:
        with open(os.environ[RESULTS_ENV], "w") as out:
            json.dump(self.report, out, indent=1, sort_keys=True)


def django_declared_skips() -> dict[str, list[str]]:
    """The tests Django's own PostgreSQL features skip for the ``default`` alias's settings
    (``django_test_skips``, evaluated as Django's class defines it, whatever a backend's
    subclass adds): with ``OPTIONS["pool"]`` Django skips two health-check tests, "Pool does
    implicit health checks", for any pool."""
    from django.db import connections
    from django.db.backends.postgresql.features import DatabaseFeatures

    skips = DatabaseFeatures.django_test_skips.func(connections["default"].features)
    return {reason: sorted(tests) for reason, tests in skips.items()}


def backend_declared_skips() -> dict[str, list[str]]:
    """The tests the ``default`` alias's backend adds to Django's skips (its subclass of
    Django's features: psycopg2_pool.django declares one, Django's stock backend none)."""
    from django.db import connections

    django = django_declared_skips()
    skips = connections["default"].features.django_test_skips
    out = {reason: sorted(set(tests) - set(django.get(reason, ())))
           for reason, tests in skips.items()}
    return {reason: tests for reason, tests in out.items() if tests}


def describe_backends() -> dict[str, Any]:
    """Per alias: the wrapper's module, the DB-API driver, Django's driver choice, and
    whether a pool serves it (and how many connections it has handed out so far)."""
    from django.db import connections
    from django.db.backends.postgresql import psycopg_any

    out: dict[str, Any] = {}
    for alias in connections:
        wrapper = connections[alias]
        pool = getattr(wrapper, "pool", None)
        out[alias] = {
            "wrapper": type(wrapper).__module__,
            "driver": wrapper.Database.__name__,
            "is_psycopg3": psycopg_any.is_psycopg3,
            "pool": None if pool is None else type(pool).__module__,
        }
    return out

