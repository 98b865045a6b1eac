"""The pools the benchmarks compare, each behind the same small interface.

Peers: ``psycopg2.pool.ThreadedConnectionPool``, psycopg2-pool 1.2 (its sdist, fetched with pip
into ``benchmarks/.cache`` and loaded under the module name ``psycopg2_pool_12``, since it shares
our import name), ``psycopg_pool.ConnectionPool`` (psycopg 3), and this pool bare and with
``telemetry.instrument()`` (leak detection off, on, and inside a recording trace), and
SQLAlchemy's ``QueuePool``, bare and with ``opentelemetry-instrumentation-sqlalchemy``.
A peer whose package is missing is skipped with the reason printed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from common import ROOT

CACHE = ROOT / "benchmarks" / ".cache"

BASELINE = "psycopg2.pool"
THIS = "this pool"
SQLALCHEMY = "SQLAlchemy QueuePool"


@dataclass
class Peer:
    """A pool under test: how to make one of ``size`` connections that waits ``timeout``
    seconds when exhausted (where it can), check out, return and close it."""

    name: str
    make: Callable[[str, int, float], Any]
    getconn: Callable[[Any], Any]
    putconn: Callable[[Any, Any], None]
    close: Callable[[Any], None]
    instrumented: bool = False
    traced: bool = False  # checkouts run inside a recording span
    waits: bool = True  # False: an exhausted pool raises at once (counted as errors)
    context: Callable[[], contextlib.AbstractContextManager[Any]] = field(
        default=contextlib.nullcontext)


def load_psycopg2_pool_12() -> ModuleType | None:
    """psycopg2-pool 1.2 under another module name, or None (with the reason printed)."""
    target = CACHE / "psycopg2_pool_12.py"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            result = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 "-d", tmp, "psycopg2-pool==1.2"], capture_output=True, text=True)
            archives = list(Path(tmp).glob("psycopg2-pool-1.2*.tar.gz"))
            if result.returncode or not archives:
                print(f"skipping psycopg2-pool 1.2: pip download failed: "
                      f"{result.stderr.strip()[-200:]}")
                return None
            with tarfile.open(archives[0]) as archive:
                member = archive.extractfile("psycopg2-pool-1.2/psycopg2_pool/__init__.py")
                assert member is not None
                target.write_bytes(member.read())
    spec = importlib.util.spec_from_file_location("psycopg2_pool_12", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Telemetry:
    """A real OpenTelemetry SDK: an in-memory metric reader collected every second by a
    thread (as a periodic exporter would; not with ``collect=False``), and a tracer whose
    spans go to a no-op exporter."""

    def __init__(self, collect: bool = True) -> None:
        import threading

        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            SimpleSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class NullExporter(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(NullExporter()))
        self.tracer = self.tracer_provider.get_tracer("benchmarks")
        self._stop = threading.Event()
        self._collector = threading.Thread(target=self._collect, daemon=True)
        if collect:
            self._collector.start()

    def _collect(self) -> None:
        while not self._stop.wait(1.0):
            self.reader.get_metrics_data()

    @contextlib.contextmanager
    def trace(self) -> Iterator[None]:
        with self.tracer.start_as_current_span("request"):
            yield

    def shutdown(self) -> None:
        self._stop.set()
        if self._collector.is_alive():
            self._collector.join()
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


def sqlalchemy_peers(sdk: Telemetry, *, instrumented: bool = True) -> list[Peer]:
    """SQLAlchemy's ``QueuePool`` as its users get it, bare and under
    ``opentelemetry-instrumentation-sqlalchemy``; none, or only the bare one, when a package
    is missing (with the reason printed).

    SQLAlchemy's defaults are kept, since they are what its users get: ``reset_on_return``
    calls ``rollback()`` on every connection returned (the other pools do not; psycopg2 sends
    nothing to the server for it here, as no transaction is open after the workloads' own
    rollback, so it costs a call, not a round trip), ``pre_ping`` is off, FIFO order."""
    try:
        import psycopg2
        import sqlalchemy
        from sqlalchemy.pool import Pool, QueuePool
    except ImportError as exc:
        print(f"skipping {SQLALCHEMY}: {exc}")
        return []

    def creator(dsn: str) -> Callable[[], Any]:
        return lambda: psycopg2.connect(dsn)

    def fill(pool: Pool, size: int) -> None:
        """Open the ``size`` connections at once, as the other peers do (a QueuePool opens
        them on demand, which would charge the connects to the first round)."""
        held = [pool.connect() for _ in range(size)]
        for conn in held:
            conn.close()

    def bare(dsn: str, size: int, timeout: float) -> QueuePool:
        pool = QueuePool(creator(dsn), pool_size=size, max_overflow=0,
                         timeout=timeout)
        fill(pool, size)
        return pool

    # ``connect()`` gives a ``_ConnectionFairy``, which proxies ``cursor()`` and ``rollback()``
    # to the psycopg2 connection; its ``close()`` returns it to the pool.
    found = [Peer(SQLALCHEMY, bare, lambda p: p.connect(), lambda p, c: c.close(),
                  lambda p: p.dispose())]
    if not instrumented:
        return found
    try:
        from opentelemetry.instrumentation.dependencies import get_dependency_conflicts
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    except ImportError as exc:
        print(f"skipping {SQLALCHEMY} + OpenTelemetry (both variants): {exc}")
        return found
    # The instrumentor would log this and instrument nothing (SQLAlchemy 2.1 with 0.66b1).
    conflict = get_dependency_conflicts(SQLAlchemyInstrumentor().instrumentation_dependencies())
    if conflict is not None:
        print(f"skipping {SQLALCHEMY} + OpenTelemetry (both variants): {conflict}")
        return found

    def traced_engine(dsn: str, size: int, timeout: float) -> Any:
        # The instrumentation attaches to Engines, not to a bare pool, so this peer's pool is
        # an Engine's: the same QueuePool with the same settings. instrument() (once, as
        # `opentelemetry-instrument` does at start-up) wraps create_engine, which then gives
        # each new engine an EngineTracer: its listeners on the pool's connect, close,
        # checkout and checkin events keep the db.client.connections.usage up-down counter
        # (state idle / used: two add() calls per checkout, two per checkin), and it wraps
        # Engine.connect() in a "connect" span. (The instrumentor is a singleton: a second
        # instrument(engine=...) while instrumented is ignored, hence the wrapped
        # create_engine for the engines of both peers below, which exist at the same time.)
        instrumentor = SQLAlchemyInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=sdk.tracer_provider,
                                    meter_provider=sdk.meter_provider)
        engine = sqlalchemy.create_engine(  # the module's attribute: the wrapped function
            "postgresql+psycopg2://", creator=creator(dsn), poolclass=QueuePool,
            pool_size=size, max_overflow=0, pool_timeout=timeout)
        fill(engine.pool, size)
        return engine

    # raw_connection() is the engine's pool.connect(): the bare peer's checkout, with the
    # instrumentation's pool listeners. They make no span, so this checkout has no "in a
    # trace" variant (its statement spans are for statements run through a Connection, not
    # the DBAPI cursor the workloads use).
    found.append(Peer(f"{SQLALCHEMY} + OpenTelemetry", traced_engine,
                      lambda e: e.raw_connection(), lambda e, c: c.close(),
                      lambda e: e.dispose(), instrumented=True))

    class Connections:
        """engine.connect() as a pool: getconn gives the Connection's DBAPI connection (the
        pool's fairy, for the workloads' cursor() and rollback()), putconn closes the
        Connection, which returns it to the pool."""

        def __init__(self, dsn: str, size: int, timeout: float) -> None:
            self.engine = traced_engine(dsn, size, timeout)
            self.held: dict[int, Any] = {}

        def getconn(self) -> Any:
            connection = self.engine.connect()
            fairy = connection.connection
            self.held[id(fairy)] = connection
            return fairy

        def putconn(self, fairy: Any) -> None:
            self.held.pop(id(fairy)).close()

    # The instrumentation's one span at checkout is the "connect" span around
    # Engine.connect(), the checkout of SQLAlchemy's Core and ORM users (a Connection over a
    # pool checkout; a span even outside a trace, as a root). Inside a recording trace it is
    # a child of the request span, as ours are; this checkout goes through the Engine and its
    # Connection too, which the peers above do not.
    found.append(Peer(f"{SQLALCHEMY} + OpenTelemetry, engine.connect() in a trace",
                      Connections, lambda p: p.getconn(), lambda p, c: p.putconn(c),
                      lambda p: p.engine.dispose(), instrumented=True, traced=True,
                      context=sdk.trace))
    return found


def peers(sdk: Telemetry, *, instrumented: bool = True) -> list[Peer]:
    """Every peer that can be loaded here, baseline first."""
    import psycopg2.pool
    from psycopg_pool import ConnectionPool as PsycopgPool

    from psycopg2_pool import ConnectionPool
    from telemetry import instrument

    def mine(dsn: str, size: int, timeout: float) -> ConnectionPool:
        return ConnectionPool(size, size, dsn=dsn, timeout=timeout)

    def instrumented_pool(leaks: float | None) -> Callable[[str, int, float], Any]:
        def make(dsn: str, size: int, timeout: float) -> ConnectionPool:
            pool = mine(dsn, size, timeout)
            instrument(pool, meter_provider=sdk.meter_provider,
                       tracer_provider=sdk.tracer_provider, leak_threshold=leaks)
            return pool
        return make

    def close_instrumented(pool: ConnectionPool) -> None:
        from telemetry import uninstrument

        uninstrument(pool)
        pool.close()

    found = [Peer(BASELINE, lambda dsn, n, t: psycopg2.pool.ThreadedConnectionPool(n, n, dsn),
                  lambda p: p.getconn(), lambda p, c: p.putconn(c), lambda p: p.closeall(),
                  waits=False)]
    old = load_psycopg2_pool_12()
    if old is not None:
        found.append(Peer(
            "psycopg2-pool 1.2",
            lambda dsn, n, t: old.ThreadSafeConnectionPool(minconn=n, maxconn=n, dsn=dsn),
            lambda p: p.getconn(), lambda p, c: p.putconn(c), lambda p: p.clear(),
            waits=False))
    def psycopg_pool(dsn: str, size: int, timeout: float) -> PsycopgPool:
        pool = PsycopgPool(dsn, min_size=size, max_size=size, open=True, timeout=timeout)
        pool.wait()  # it opens its connections in the background
        return pool

    found.append(Peer("psycopg_pool 3", psycopg_pool, lambda p: p.getconn(),
                      lambda p, c: p.putconn(c), lambda p: p.close()))
    found += sqlalchemy_peers(sdk, instrumented=instrumented)
    found.append(Peer(THIS, mine, lambda p: p.getconn(), lambda p, c: p.putconn(c),
                      lambda p: p.close()))
    if instrumented:
        found += [
            Peer(f"{THIS} + instrument(), leaks off", instrumented_pool(None),
                 lambda p: p.getconn(), lambda p, c: p.putconn(c), close_instrumented,
                 instrumented=True),
            Peer(f"{THIS} + instrument()", instrumented_pool(30.0),
                 lambda p: p.getconn(), lambda p, c: p.putconn(c), close_instrumented,
                 instrumented=True),
            Peer(f"{THIS} + instrument(), in a trace", instrumented_pool(30.0),
                 lambda p: p.getconn(), lambda p, c: p.putconn(c), close_instrumented,
                 instrumented=True, traced=True, context=sdk.trace),
        ]
    return found
