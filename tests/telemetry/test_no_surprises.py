"""No silent surprises from telemetry (issue 14, item 5).

- ``instrument()`` again with other settings raises instead of dropping them (5a);
- with structlog not configured, routine events do not print to stdout (5c).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from psycopg2_pool import ConnectionPool
from telemetry import instrument, instrumentation, uninstrument
from tests.support.otel import Otel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(0, 2, dsn=dsn, name="again")
    yield pool
    uninstrument(pool)
    pool.close()


# -- 5a: instrument() twice ------------------------------------------------------------------


def test_the_same_settings_again_return_the_same_handle(pool: ConnectionPool,
                                                        otel: Otel) -> None:
    first = instrument(pool, leak_threshold=5, meter_provider=otel.meter_provider)
    assert instrument(pool, leak_threshold=5.0, meter_provider=otel.meter_provider) is first
    assert instrument(pool, leak_threshold=5, meter_provider=otel.meter_provider,
                      name="again") is first  # the name it had by default, spelled out


def test_another_leak_threshold_raises_and_changes_nothing(pool: ConnectionPool) -> None:
    handle = instrument(pool)
    with pytest.raises(ValueError) as raised:
        instrument(pool, leak_threshold=5)
    assert str(raised.value) == (
        "pool 'again' is already instrumented with leak_threshold=30.0; this call asks for "
        "leak_threshold=5, which cannot take effect on a live handle. Call "
        "uninstrument(pool) first to instrument it anew, or pass the same settings to get the "
        "existing handle (telemetry.instrumentation(pool) returns it without settings)")
    assert instrumentation(pool) is handle and handle.active
    assert handle.leak_detector is not None and handle.leak_detector.threshold == 30
    handle.uninstrument()
    renewed = instrument(pool, leak_threshold=5)  # what the message says to do
    assert renewed is not handle
    assert renewed.leak_detector is not None and renewed.leak_detector.threshold == 5


def test_turning_the_detector_off_again_raises(pool: ConnectionPool) -> None:
    instrument(pool, leak_threshold=5)
    with pytest.raises(ValueError, match=r"with leak_threshold=5; this call asks for "
                                         r"leak_threshold=None,"):
        instrument(pool, leak_threshold=None)


def test_other_name_provider_or_logger_raise_naming_each(pool: ConnectionPool,
                                                         otel: Otel) -> None:
    instrument(pool, meter_provider=otel.meter_provider)
    with pytest.raises(ValueError) as raised:
        instrument(pool, name="other", tracer_provider=otel.tracer_provider,
                   logger=structlog.get_logger("mine"))
    message = str(raised.value)
    assert message.startswith(
        "pool 'again' is already instrumented with name='again', meter_provider=<MeterProvider "
        "object>, tracer_provider=None, logger=None; this call asks for name='other', "
        "meter_provider=None, tracer_provider=<TracerProvider object>, logger=<")


# -- 5c: structlog not configured ------------------------------------------------------------

QUIET = """
import logging, sys
from psycopg2_pool import ConnectionPool
from telemetry import instrument

if sys.argv[2] == "debug":
    logging.getLogger("psycopg2_pool").setLevel(logging.DEBUG)
pool = ConnectionPool(0, 3, dsn=sys.argv[1], name="quiet")
instrument(pool, leak_threshold=60)
conns = [pool.getconn() for _ in range(3)]
for conn in conns:
    pool.putconn(conn, close=True)  # three connection_discarded events (debug)
held = [pool.getconn() for _ in range(3)]
try:
    pool.getconn()
except Exception:
    pass  # pool_exhausted (warning)
for conn in held:
    pool.putconn(conn)
pool.close()  # pool_closed (info)
"""


def run_quiet(dsn: str, mode: str) -> subprocess.CompletedProcess[str]:
    path = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
    return subprocess.run([sys.executable, "-c", QUIET, dsn, mode], capture_output=True,
                          text=True, timeout=60, env=env)


def test_unconfigured_structlog_prints_warnings_only(dsn: str) -> None:
    result = run_quiet(dsn, "default")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and "pool_exhausted" in lines[0], result.stdout
    assert "connection_discarded" not in result.stdout and "pool_closed" not in result.stdout
    assert result.stderr == ""


def test_the_stdlib_level_brings_routine_events_back(dsn: str) -> None:
    result = run_quiet(dsn, "debug")
    assert result.returncode == 0, result.stderr
    # the three closed on return, and the three idle ones pool.close() closes
    assert result.stdout.count("connection_discarded") == 6
    assert "pool_exhausted" in result.stdout and "pool_closed" in result.stdout


def test_configured_structlog_decides_itself(pool: ConnectionPool) -> None:
    """Once the application configured structlog, every event reaches it (its own filters)."""
    seen: list[str] = []

    def keep(logger: object, method: str, event_dict: dict[str, object]) -> str:
        seen.append(f"{method} {event_dict['event']}")
        return ""

    structlog.configure(processors=[keep], logger_factory=structlog.ReturnLoggerFactory())
    try:
        instrument(pool, leak_threshold=60)
        pool.putconn(pool.getconn(), close=True)
    finally:
        structlog.reset_defaults()
    assert seen == ["debug connection_discarded"]
