"""The pools the benchmarks compare, each behind the same small interface.

Peers: ``psycopg2.pool.ThreadedConnectionPool``, psycopg2-pool 1.2 (its sdist, fetched with pip
into ``benchmarks/.cache`` and loaded under the module name ``psycopg2_pool_12``, since it shares
our import name), ``psycopg_pool.ConnectionPool`` (psycopg 3), and this pool bare and with
``telemetry.instrument()`` (leak detection off, on, and inside a recording trace).
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
