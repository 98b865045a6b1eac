"""Test session setup: a real PostgreSQL server for every test that touches a connection.

By default a throwaway server is started with ``pgserver`` (an embedded PostgreSQL, ~1 s) in
a temporary directory and removed at the end. Set ``PSYCOPG2_POOL_TEST_DSN`` to a libpq
connection string to run the suite against another server instead (the user needs
CREATEROLE to let the tests create a role with a connection limit).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

DSN_ENV = "PSYCOPG2_POOL_TEST_DSN"


@pytest.fixture(scope="session")
def dsn() -> Iterator[str]:
    """A libpq DSN of a real server, for the whole session."""
    external = os.environ.get(DSN_ENV)
    if external:
        yield external
        return
    pgserver = pytest.importorskip("pgserver", reason=f"pgserver is not installed and "
                                   f"{DSN_ENV} is not set: no PostgreSQL to test against")
    pgdata = tempfile.mkdtemp(prefix="psycopg2-pool-test-")
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


@pytest.fixture
def admin(dsn: str) -> Iterator[Any]:
    """An autocommit connection outside any pool, to look at the server side."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    yield conn
    conn.close()


def backend_count(admin: Any, application_name: str) -> int:
    """Server-side connections opened with ``application_name``."""
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (application_name,))
        return int(cur.fetchone()[0])


@pytest.fixture
def app_name() -> str:
    """A unique application_name, to count a test's own server-side connections."""
    return f"t-{uuid.uuid4().hex[:12]}"


REQUIRE_BINARIES_ENV = "PSYCOPG2_POOL_REQUIRE_BINARIES"


def require_binary(name: str) -> str:
    """The path of a system binary a test needs; skip (or fail, under .ci/run) when absent."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)
    if path:
        return path
    message = (f"`{name}` is not installed (Debian package `{name}`; "
               f"`apt-get install -y {name}`, as .ci/run does)")
    if os.environ.get(REQUIRE_BINARIES_ENV) == "1":
        pytest.fail(f"{message}, and {REQUIRE_BINARIES_ENV}=1 forbids skipping")
    pytest.skip(message)
