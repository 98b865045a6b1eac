"""Test session setup: a real PostgreSQL server for every test that touches a connection.

By default a throwaway server is started with ``pgserver`` (an embedded PostgreSQL, ~1 s) in
a temporary directory and removed at the end. Set ``PSYCOPG2_POOL_TEST_DSN`` to a libpq
connection string to run the suite against another server instead (the user needs
CREATEROLE to let the tests create a role with a connection limit).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest

from psycopg2_pool import ConnectionPool, TooManyRequests

DSN_ENV = "PSYCOPG2_POOL_TEST_DSN"


@pytest.fixture(scope="session")
def dsn() -> Iterator[str]:
    """A libpq DSN of a real server, for the whole session."""
    external = os.environ.get(DSN_ENV)
    if not external:
        pytest.importorskip("pgserver", reason=f"pgserver is not installed and {DSN_ENV} is "
                                               f"not set: no PostgreSQL to test against")
    from telemetry.demo import database

    with database(external) as uri:
        yield uri


MakePool = Callable[..., ConnectionPool]


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
        pool.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    """A PostgreSQL of the test module's own (``faults.OwnServer``), which its tests may stop,
    start and restart without disturbing the rest of the suite: one per module that asks."""
    from faults import OwnServer

    own = OwnServer()
    yield own
    own.close()


@pytest.fixture
def proxy(server: Any) -> Iterator[Any]:
    """A loopback TCP proxy to the module's own server that can stop answering (``hang()``)."""
    from faults import Proxy

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


def count_rows(admin: Any, table: str) -> int:
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(cur.fetchone()[0])


def backend_count(admin: Any, application_name: str) -> int:
    """Server-side connections opened with ``application_name``."""
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (application_name,))
        return int(cur.fetchone()[0])


def settled_backend_count(admin: Any, application_name: str, expected: int,
                          timeout: float = 5.0) -> int:
    """The server-side count once it reaches ``expected`` (or the last one seen at timeout):
    a backend leaves pg_stat_activity a moment after its client closed the connection."""
    deadline = time.monotonic() + timeout
    while True:
        count = backend_count(admin, application_name)
        if count == expected or time.monotonic() >= deadline:
            return count
        time.sleep(0.02)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False): the server
    side of a change shows a moment later (a backend exits after its client closed)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def refuse(pool: ConnectionPool, times: int,
           around: Callable[[], Any] = contextlib.nullcontext) -> None:
    """Fill a ``maxconn=1, max_waiting=1`` pool (one connection out, one caller waiting),
    make ``times`` more ``getconn`` calls, each inside ``around()`` and each refused with
    ``TooManyRequests``, then let the waiter through."""
    held = pool.getconn()
    waiter = threading.Thread(target=lambda: pool.putconn(pool.getconn(timeout=5)))
    waiter.start()
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    for _ in range(times):
        with around(), pytest.raises(TooManyRequests):
            pool.getconn(timeout=5)
    pool.putconn(held)
    waiter.join(5)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def app_name() -> str:
    """A unique application_name, to count a test's own server-side connections."""
    return f"t-{uuid.uuid4().hex[:12]}"


def exception_texts(exc: BaseException) -> list[str]:
    """What an exception shows: str, repr, args, attributes, notes, the formatted traceback,
    and the same for every exception of its ``__cause__``/``__context__`` chain (the secrets
    tests look for a password in all of it)."""
    texts: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        texts += [str(error), repr(error), repr(error.args), repr(getattr(error, "__dict__", {})),
                  repr(getattr(error, "pgerror", None)), *getattr(error, "__notes__", ()),
                  "".join(traceback.format_exception(error))]
        todo += [e for e in (error.__cause__, error.__context__) if e is not None]
    return texts


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


class Otel:
    """A real OpenTelemetry SDK wired to in-memory exporters, for one test."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.tracer_provider.get_tracer("tests")

    def metrics(self) -> dict[str, Any]:
        """Metric name -> SDK Metric, from one collection."""
        data = self.reader.get_metrics_data()
        out: dict[str, Any] = {}
        if data is None:
            return out
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    out[metric.name] = metric
        return out

    def spans(self, name: str | None = None) -> list[Any]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def shutdown(self) -> None:
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


@pytest.fixture
def otel() -> Iterator[Otel]:
    sdk = Otel()
    yield sdk
    sdk.shutdown()


def point(metric: Any, attributes: dict[str, str] | None = None) -> Any:
    """The data point of ``metric`` whose attributes include ``attributes``."""
    wanted = attributes or {}
    for data_point in metric.data.data_points:
        if all(data_point.attributes.get(k) == v for k, v in wanted.items()):
            return data_point
    raise AssertionError(f"no point of {metric.name} with {wanted}: "
                         f"{[dict(p.attributes) for p in metric.data.data_points]}")


_FIGURES: list[str] = []


@pytest.fixture
def figure() -> Callable[[str], None]:
    """Report a measured figure (recovery time, errors seen...) in the session's summary."""
    return _FIGURES.append


#: Set (as .ci/run does) to run the tests marked ``slow``: real Prometheus, gunicorn, a built
#: wheel, valgrind; each proves something no faster test does, and each costs 6 to 25 s.
SLOW_TESTS_ENV = "PSYCOPG2_POOL_SLOW_TESTS"


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if os.environ.get(SLOW_TESTS_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"slow (6-25 s): .ci/run runs it; set {SLOW_TESTS_ENV}=1 "
                                   f"to run it here")
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("figures measured by the tests")
        for line in _FIGURES:
            terminalreporter.write_line(line)
