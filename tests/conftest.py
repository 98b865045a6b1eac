"""Test session setup: a real PostgreSQL server for every test that touches a connection, and
the fixtures the tests share (the helpers they import are in ``tests.support``).

By default a throwaway server is started with ``pgserver`` (an embedded PostgreSQL, ~1 s;
``psycopg2_pool.testing.embedded_server``) in a temporary directory and removed at the end.
Set ``PSYCOPG2_POOL_TEST_DSN`` to a libpq connection string to run the suite against another
server instead (the user needs CREATEROLE to let the tests create a role with a connection
limit).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest

from psycopg2_pool import ConnectionPool
from psycopg2_pool.testing import embedded_server
from tests.support.otel import Otel
from tests.support.pools import MakePool
from tests.support.system import DSN_ENV


@pytest.fixture(scope="session")
def dsn() -> Iterator[str]:
    """A libpq DSN of a real server, for the whole session."""
    external = os.environ.get(DSN_ENV)
    if not external:
        pytest.importorskip("pgserver", reason=f"pgserver is not installed and {DSN_ENV} is "
                                               f"not set: no PostgreSQL to test against")
    with embedded_server(external) as uri:
        yield uri


@pytest.fixture
def make_pool(dsn: str) -> Iterator[MakePool]:
    """Pools on the test server (``dsn`` unless given), all closed at the end of the test."""
    made: list[ConnectionPool] = []

    def make(*args: Any, **kwargs: Any) -> ConnectionPool:
        kwargs.setdefault("dsn", dsn)
        pool = ConnectionPool(*args, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        # On a thread, bounded: a pool that a failing test left deadlocked fails this test's
        # teardown instead of hanging the whole suite.
        errors: list[BaseException] = []
        closer = threading.Thread(target=close_into, args=(pool, errors), daemon=True)
        closer.start()
        closer.join(10)
        if closer.is_alive():
            pytest.fail(f"{pool!r}.close() did not return within 10 s (deadlock)",
                        pytrace=False)
        if errors:
            raise errors[0]


def close_into(pool: ConnectionPool, errors: list[BaseException]) -> None:
    try:
        pool.close()
    except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
        errors.append(exc)


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    """A PostgreSQL of the test module's own (``tests.support.faults.OwnServer``), which its
    tests may stop, start and restart without disturbing the rest of the suite: one per module
    that asks."""
    from tests.support.faults import OwnServer

    own = OwnServer()
    yield own
    own.close()


@pytest.fixture
def proxy(server: Any) -> Iterator[Any]:
    """A loopback TCP proxy to the module's own server that can stop answering (``hang()``)."""
    from tests.support.faults import Proxy

    p = Proxy(server)
    yield p
    p.close()


@pytest.fixture
def admin(dsn: str) -> Iterator[Any]:
    """An autocommit connection outside any pool, to look at the server side."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def table(admin: Any) -> Iterator[str]:
    """A fresh one-column table, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (id int)")
    yield name
    with admin.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def limited_role(admin: Any) -> Iterator[str]:
    """A non-superuser login role allowed two connections at once."""
    role = f"limited_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2")
    yield role
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE usename = %s", (role,))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,))
            if cur.fetchone()[0] == 0:
                break
            time.sleep(0.01)
        cur.execute(f"DROP ROLE {role}")


@pytest.fixture
def app_name() -> str:
    """A unique application_name, to count a test's own server-side connections."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def otel() -> Iterator[Otel]:
    sdk = Otel()
    yield sdk
    sdk.shutdown()


_FIGURES: list[str] = []


@pytest.fixture
def figure() -> Callable[[str], None]:
    """Report a measured figure (recovery time, errors seen...) in the session's summary."""
    return _FIGURES.append


#: Set (as .ci/run does) to run the tests marked ``slow``: real Prometheus, gunicorn, a built
#: wheel, valgrind, replication, Django's own test suite; each proves something no faster test
#: does, and costs 2 to 25 s, Django's suite about 2 minutes (the default suite stays under 3
#: minutes; its shorter siblings stay in it).
SLOW_TESTS_ENV = "PSYCOPG2_POOL_SLOW_TESTS"


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if os.environ.get(SLOW_TESTS_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"slow (2 s to 2 min): .ci/run runs it; set {SLOW_TESTS_ENV}=1 "
                                   f"to run it here")
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("figures measured by the tests")
        for line in _FIGURES:
            terminalreporter.write_line(line)
