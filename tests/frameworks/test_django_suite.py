"""Django's own test suite, run on the pooled backend and on Django's stock psycopg2 backend:
the pooled backend passes every test the stock backend passes.

Django's sdist ships its test suite (``tests/runtests.py``); the one of exactly the installed
Django is downloaded once (``pip download``) into a cache reused between runs
(``~/.cache/psycopg2-pool/django/``, or under ``$XDG_CACHE_HOME``). ``runtests.py`` then runs
:data:`APPS` twice in subprocesses, with the same settings but for the engine: Django's
``django.db.backends.postgresql``, then ``psycopg2_pool.django`` with ``OPTIONS["pool"]``.
Each run has its test runner (``tests/frameworks/django_suite.py``) write every test's outcome
to JSON, and which driver and wrapper it was really on.

- **psycopg2 on both.** Django picks psycopg 3 whenever it can import it. The pooled backend
  loads Django's on psycopg2 itself (``loading.py``); the stock run's settings module makes
  ``import psycopg`` fail for its process (``sys.modules["psycopg"] = None``, before Django
  loads a backend), the only way to have the stock engine on psycopg2 without uninstalling
  psycopg 3. Both runs report ``connection.Database``, checked below.
- **Django's parallel runner** (``--parallel 2``, as Django's CI runs its suite): the parent
  creates the test databases, clones one per worker (``CREATE DATABASE ... TEMPLATE``, after
  ``close_pool()``), and forks the workers, each of which renames its aliases to its clone:
  the pooled backend's fork and rename paths, under Django's own tests. It needs ``tblib``
  (the test extra has it) to send a worker's failure to the parent.
- **A server with contrib and ICU.** ``postgres_tests`` creates hstore, citext, btree_gist,
  ... and ``model_fields`` a column with the ICU collation ``sv-x-icu``; pgserver's build has
  neither, so the suite runs on a throwaway server from the packaged PostgreSQL
  (``tests/support/postgres.py``; Debian's ``postgresql``, which .ci/run installs), or on the
  ``PSYCOPG2_POOL_TEST_DSN`` server if it has them and its user may create databases.
- **What counts.** The same tests in both runs; every test that passes on stock (``ok``, or
  an expected failure) has the same outcome on the pooled backend, and its test databases are
  destroyed as cleanly. Two allowances, both through Django's hook for a backend to skip
  tests of its suite (``django_test_skips``): the skips Django's PostgreSQL features declare
  for any ``OPTIONS["pool"]`` (read from Django's class in the run, not listed here: "Pool
  does implicit health checks", two tests that set ``CONN_MAX_AGE = None``, which every pool
  refuses); and the one test this backend declares not applicable
  (``psycopg2_pool/django/features.py``: that Django's psycopg2 backend refuses
  ``OPTIONS["pool"]``), checked to be exactly that one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import psycopg2
import pytest
from psycopg2.extensions import parse_dsn

pytest.importorskip("django", reason="Django is not installed (the test extra has it)")

import django

from tests.frameworks.django_suite import RESULTS_ENV
from tests.support.postgres import packaged_server
from tests.support.system import DSN_ENV, REQUIRE_BINARIES_ENV

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

#: The database-facing apps of Django's suite run on both backends: the issue's list, then
#: those that exercise a connection's life more than its SQL: the time zone set up per
#: connection (timezones), request_finished and ATOMIC_REQUESTS (handlers), the live server's
#: thread (servers), TestCase's per-class transactions and connection checks (test_utils),
#: racing threads (get_or_create), async_unsafe (async).
APPS = ("backends", "transactions", "transaction_hooks", "basic", "queries",
        "select_for_update", "postgres_tests", "db_functions", "model_fields",
        "timezones", "handlers", "servers", "test_utils", "get_or_create", "async")

PARALLEL = 2
#: Outcomes that count as passing (unittest's wasSuccessful()).
PASSING = {"ok", "expected_failure"}
EXTENSIONS = ("hstore", "citext", "btree_gin", "btree_gist", "pg_trgm", "unaccent", "bloom")


def skip_or_fail(message: str) -> None:
    if os.environ.get(REQUIRE_BINARIES_ENV) == "1":
        pytest.fail(f"{message}, and {REQUIRE_BINARIES_ENV}=1 forbids skipping")
    pytest.skip(message)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "psycopg2-pool" / "django"


def django_tests_dir() -> Path:
    """Django's ``tests/`` from the sdist of the installed version (downloaded, extracted and
    kept in :func:`cache_dir` the first time)."""
    version = django.__version__
    release = f"django-{version}"
    tests = cache_dir() / release / "tests"
    if (tests / "runtests.py").exists():
        return tests
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as scratch:
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                            "--no-binary", ":all:", f"django=={version}", "-d", scratch],
                           check=True, capture_output=True, text=True, timeout=300)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            output = getattr(exc, "stderr", "") or ""
            skip_or_fail(f"could not download Django {version}'s sdist, which has its test "
                         f"suite (pip download: {output.strip()[-500:] or exc})")
        sdist = next(Path(scratch).glob("*.tar.gz"))
        prefix = f"{sdist.name.removesuffix('.tar.gz')}/tests/"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: refuse links out, devices
                tar.extractall(scratch, members=members, filter="data")
            else:
                tar.extractall(scratch, members=members)
        # Moved in whole once complete, so that a run cut short leaves nothing half-made.
        (cache_dir() / release).mkdir(exist_ok=True)
        if not tests.exists():  # else another session got there first
            shutil.move(Path(scratch) / prefix, tests)
    return tests


def capable(dsn: str) -> str | None:
    """Why the server cannot run these apps, or None: it needs the contrib extensions,
    the ICU collation ``sv-x-icu``, and a user that may create databases and extensions."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            if cur.fetchone() != (True,):
                return "its user is not a superuser (CREATE DATABASE, CREATE EXTENSION bloom)"
            cur.execute("SELECT name FROM pg_available_extensions WHERE name = ANY(%s)",
                        (list(EXTENSIONS),))
            missing = set(EXTENSIONS) - {name for (name,) in cur.fetchall()}
            if missing:
                return f"it lacks the extensions {', '.join(sorted(missing))}"
            cur.execute("SELECT 1 FROM pg_collation WHERE collname = 'sv-x-icu'")
            if cur.fetchone() is None:
                return "it has no ICU collation sv-x-icu"
            return None
    finally:
        conn.close()


@pytest.fixture(scope="module")
def django_tests() -> Path:
    if importlib.util.find_spec("tblib") is None:
        skip_or_fail("tblib is not installed (Django's parallel runner needs it to report a "
                     "worker's failure; the test extra has it: python3 -m pip install -e "
                     "'.[test]', as .ci/run does)")
    return django_tests_dir()


@pytest.fixture(scope="module")
def suite_dsn() -> Iterator[str]:
    """``PSYCOPG2_POOL_TEST_DSN``'s server if it can run these apps, else a throwaway one
    from the packaged PostgreSQL."""
    external = os.environ.get(DSN_ENV)
    if external and capable(external) is None:
        yield external
        return
    with packaged_server() as dsn:
        reason = capable(dsn)
        assert reason is None, f"the packaged PostgreSQL cannot run Django's suite: {reason}"
        yield dsn


def drop_databases(dsn: str, prefix: str) -> None:
    """Drop what a run cut short left behind (on a server that outlives the test)."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{prefix}%",))
        for (name,) in cur.fetchall():
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


SETTINGS = '''\
"""Django's test settings for the {backend} run (written by test_django_suite.py)."""
{preamble}
SERVER = {server!r}


def database(alias):
    return {{**SERVER, "ENGINE": {engine!r}, "OPTIONS": {{**SERVER["OPTIONS"], **{options!r}}},
            "TEST": {{"NAME": f"{run}_{{alias}}"}}}}


DATABASES = {{"default": database("default"), "other": database("other")}}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
TEST_RUNNER = "tests.frameworks.django_suite.Runner"
'''

HIDE_PSYCOPG3 = '''
import sys

# Django's backend imports psycopg 3 whenever it can: make that import fail in this process,
# so that the stock engine is on psycopg2 (the settings are read before any backend loads).
sys.modules["psycopg"] = None
'''

BACKENDS = {
    "stock": ("django.db.backends.postgresql", {}, HIDE_PSYCOPG3),
    "pooled": ("psycopg2_pool.django", {"pool": True}, ""),
}


def write_settings(directory: Path, backend: str, dsn: str, run: str) -> str:
    """The settings module of one run, in ``directory``; returns its name."""
    engine, options, preamble = BACKENDS[backend]
    info = parse_dsn(dsn)
    server = {key: info.pop(option, "") or "" for key, option in (
        ("NAME", "dbname"), ("USER", "user"), ("PASSWORD", "password"), ("HOST", "host"),
        ("PORT", "port"))}
    server["OPTIONS"] = info
    name = f"djs_settings_{backend}"
    (directory / f"{name}.py").write_text(SETTINGS.format(
        backend=backend, preamble=preamble, server=server, engine=engine, options=options,
        run=f"{run}_{backend}"))
    return name


class Run(NamedTuple):
    backend: str
    report: dict[str, Any]
    seconds: float
    returncode: int
    log: Path


def run_suite(tests: Path, settings_dir: Path, backend: str, dsn: str, run: str) -> Run:
    settings = write_settings(settings_dir, backend, dsn, run)
    results, log = settings_dir / f"{backend}.json", settings_dir / f"{backend}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(settings_dir), str(ROOT))),
           RESULTS_ENV: str(results)}
    began = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.run(
            [sys.executable, "runtests.py", f"--settings={settings}", "--noinput",
             f"--parallel={PARALLEL}", *APPS],
            cwd=tests, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1200)
    seconds = time.monotonic() - began
    report = json.loads(results.read_text()) if results.exists() else {}
    if "outcomes" not in report:
        pytest.fail(f"the {backend} run did not get to the end of its tests (exit "
                    f"{process.returncode}); its output ends:\n{tail(log)}", pytrace=False)
    return Run(backend, report, seconds, process.returncode, log)


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def check_driver(run: Run) -> None:
    """Both runs on psycopg2, the pooled one through its pools, the stock one through
    Django's own wrapper."""
    pooled = run.backend == "pooled"
    wrapper = "psycopg2_pool.django.base" if pooled else "django.db.backends.postgresql.base"
    for alias, seen in run.report["backends"].items():
        assert seen == {"driver": "psycopg2", "is_psycopg3": False, "wrapper": wrapper,
                        "pool": "psycopg2_pool.pool" if pooled else None}, (run.backend, alias)
    assert run.report["parallel"] == PARALLEL


def counts(run: Run) -> dict[str, Counter[str]]:
    """Per app, how many tests had each outcome."""
    out: dict[str, Counter[str]] = {}
    for test, outcome in run.report["outcomes"].items():
        out.setdefault(test.split(".", 1)[0], Counter())[outcome] += 1
    return out


def summary(stock: Run, pooled: Run) -> list[str]:
    lines = [f"Django {django.__version__}'s own suite ({len(APPS)} apps, --parallel "
             f"{PARALLEL}): stock {stock.seconds:.0f} s, pooled {pooled.seconds:.0f} s"]
    per_app = {run.backend: counts(run) for run in (stock, pooled)}
    for app in sorted(set(per_app["stock"]) | set(per_app["pooled"])):
        row = []
        for backend in ("stock", "pooled"):
            c = per_app[backend].get(app, Counter())
            row.append(f"{backend} {c['ok']} ok {c['skip']} skip {c['expected_failure']} "
                       f"xfail {c['fail'] + c['error'] + c['unexpected_success']} failed")
        lines.append(f"  {app}: {sum(per_app['stock'].get(app, Counter()).values())} tests: "
                     + "; ".join(row))
    return lines


def pool_skips(stock: Run, pooled: Run) -> dict[str, str]:
    """{test: reason} for the skips Django's own PostgreSQL features declare for the pooled
    settings and not for the stock ones (Django's skips for any pool)."""
    stock_declared = {(reason, test) for reason, tests in
                      stock.report["declared_skips"].items() for test in tests}
    return {test: reason for reason, tests in pooled.report["declared_skips"].items()
            for test in tests if (reason, test) not in stock_declared}


def test_django_suite_passes_on_the_pooled_backend(
        django_tests: Path, suite_dsn: str, tmp_path: Path,
        figure: Callable[[str], None]) -> None:
    run = f"djs_{uuid.uuid4().hex[:8]}"  # this session's own test database names
    try:
        stock = run_suite(django_tests, tmp_path, "stock", suite_dsn, run)
        pooled = run_suite(django_tests, tmp_path, "pooled", suite_dsn, run)
    finally:
        drop_databases(suite_dsn, run)
    lines = summary(stock, pooled)
    for line in lines:
        figure(line)
    print("\n".join(lines))
    report = "\n".join(lines)

    for each in (stock, pooled):
        check_driver(each)
    before, after = stock.report["outcomes"], pooled.report["outcomes"]
    assert before.keys() == after.keys(), (
        f"not the same tests: only stock {sorted(before.keys() - after.keys())[:20]}, only "
        f"pooled {sorted(after.keys() - before.keys())[:20]}\n{report}")

    # The one test the backend declares not applicable (psycopg2_pool/django/features.py):
    # exactly that declaration, none on the stock backend, none more.
    from psycopg2_pool.django.features import NOT_APPLICABLE

    assert stock.report["backend_skips"] == {}
    assert pooled.report["backend_skips"] == {
        reason: sorted(tests) for reason, tests in NOT_APPLICABLE.items()}
    allowed = pool_skips(stock, pooled)
    allowed.update({test: reason for reason, tests in NOT_APPLICABLE.items() for test in tests})
    regressions = []
    for test, outcome in sorted(before.items()):
        if outcome not in PASSING or after[test] == outcome:
            continue
        reason = pooled.report["skip_reasons"].get(test)
        if after[test] == "skip" and test in allowed and reason == allowed[test]:
            continue  # skipped by Django itself for any pool, or declared by the backend
        message = pooled.report["messages"].get(test, "").strip().splitlines()[-1:]
        regressions.append(f"{test}: stock {outcome}, pooled {after[test]}: "
                           f"{''.join(message)}")
    passing = sum(outcome in PASSING for outcome in before.values())
    assert not regressions, (f"{len(regressions)} of the {passing} tests that pass on the stock "
                             f"backend do not on the pooled one (log: {pooled.log}):\n"
                             + "\n".join(regressions) + f"\n{report}")
    if stock.report["teardown"] == "ok":
        assert pooled.report["teardown"] == "ok", (
            f"the pooled run's test databases were not destroyed: {pooled.report['teardown']}")

