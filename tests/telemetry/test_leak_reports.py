"""Leak reports as an application's own structlog configuration renders them.

Real renderers (``ConsoleRenderer(colors=False)``, ``JSONRenderer``, and the stdlib logging
bridge), leaks planted below, and the exact file, line and source text of every frame.
"""

from __future__ import annotations

import contextvars
import gc
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from psycopg2_pool import ConnectionPool
from telemetry import instrument
from tests.support.otel import Otel

HERE = Path(__file__)
SOURCE = HERE.read_text().splitlines()
#: Worded like Python's "Traceback (most recent call last):".
STACK_HEADER = "Connection checked out at (most recent call last):"


def line_of(marker: str) -> int:
    for number, line in enumerate(SOURCE, start=1):
        if line.rstrip().endswith(f"# PLANT: {marker}"):
            return number
    raise AssertionError(f"no line marked {marker}")


# -- the planted leaks ----------------------------------------------------------------------

def take(pool: ConnectionPool, keep: list[Any]) -> None:
    keep.append(pool.getconn())  # PLANT: take


def request(pool: ConnectionPool, keep: list[Any]) -> None:
    take(pool, keep)  # PLANT: request


def drop(pool: ConnectionPool) -> None:
    pool.getconn()  # PLANT: drop


def dropping_request(pool: ConnectionPool) -> None:
    drop(pool)  # PLANT: dropping-request


HELD = [("request", "request"), ("take", "take")]  # (marker, function), outermost first
DROPPED = [("dropping-request", "dropping_request"), ("drop", "drop")]


def block(frames: list[tuple[str, str]]) -> list[str]:
    """The traceback-style block expected for these planted frames."""
    lines = [STACK_HEADER]
    for marker, function in frames:
        number = line_of(marker)
        lines += [f'  File "{HERE}", line {number}, in {function}',
                  f"    {SOURCE[number - 1].strip()}"]
    return lines


def frame_dicts(frames: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"file": str(HERE), "line": line_of(marker), "function": function,
             "source": SOURCE[line_of(marker) - 1].strip()} for marker, function in frames]


def site(marker: str, function: str) -> str:
    return f"{os.path.relpath(HERE)}:{line_of(marker)} in {function}"


def in_thread(target: Callable[..., Any], *args: Any) -> None:
    """Run in a thread of its own: above the planted frames are only threading's (trimmed)."""
    worker = threading.Thread(target=target, args=args, name="request-1")
    worker.start()
    worker.join()


def plant_every_kind(dsn: str, otel: Otel) -> str:
    """Leak one connection of each report kind; the trace id of the traced checkout."""
    pool = ConnectionPool(0, 4, dsn=dsn, name="reports")
    handle = instrument(pool, leak_threshold=0.05)
    keep: list[Any] = []
    try:
        with otel.tracer.start_as_current_span("GET /report") as span:
            context = contextvars.copy_context()
        in_thread(context.run, request, pool, keep)  # checked out inside the trace
        time.sleep(0.08)
        handle.leak_detector.scan()  # type: ignore[union-attr]  # connection_leak_suspected
        pool.putconn(keep.pop())  # connection_leak_returned
        in_thread(dropping_request, pool)
        gc.collect()  # connection_leaked: queued by the collector's callback, which takes no
        pool.checkouts()  # lock; announced by the collector thread, or first thing here
        in_thread(request, pool, keep)
        pool.close()  # connection_leak_suspected, when=pool_closed
        pool.putconn(keep.pop())
    finally:
        pool.close()
        handle.uninstrument()
    return format(span.get_span_context().trace_id, "032x")


@pytest.fixture
def structlog_config() -> Iterator[Callable[..., None]]:
    """``structlog.configure`` for one test, the previous configuration restored after."""
    saved = structlog.get_config()
    yield structlog.configure
    structlog.configure(**saved)


KINDS = ["connection_leak_suspected", "connection_leak_returned", "connection_leaked",
         "connection_leak_suspected"]


def console_events(text: str) -> list[tuple[str, list[str]]]:
    """(event line, the lines that follow it) for each ConsoleRenderer event of ``text``."""
    events: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("["):
            events.append((line, []))
        else:
            events[-1][1].append(line)
    return [(line, rest) for line, rest in events if "leak" in line]


def check_console(text: str, trace_id: str) -> None:
    events = console_events(text)
    assert [line.split()[2] for line in (e[0] for e in events)] == KINDS, text
    for (line, rest), frames in zip(events, [HELD, HELD, DROPPED, HELD], strict=True):
        assert rest == block(frames), text
        marker, function = frames[-1]
        assert f"site='{site(marker, function)}'" in line
        assert f"checkout_frames=<{len(frames)} frames>" in line  # short: the block has them
        assert "File " not in line
    assert f"checkout_trace_id={trace_id}" in events[0][0]
    assert "checkout_trace_id=None" in events[2][0]
    assert "when=pool_closed" in events[3][0]


def test_console_renderer_prints_a_traceback_block_for_every_kind(
        dsn: str, otel: Otel, structlog_config: Callable[..., None]) -> None:
    out = io.StringIO()
    structlog_config(processors=[structlog.processors.add_log_level,
                                 structlog.dev.ConsoleRenderer(colors=False)],
                     logger_factory=structlog.WriteLoggerFactory(file=out))
    trace_id = plant_every_kind(dsn, otel)
    check_console(out.getvalue(), trace_id)


def test_json_renderer_keeps_every_kind_structured(
        dsn: str, otel: Otel, structlog_config: Callable[..., None]) -> None:
    out = io.StringIO()
    structlog_config(processors=[structlog.processors.add_log_level,
                                 structlog.processors.JSONRenderer()],
                     logger_factory=structlog.WriteLoggerFactory(file=out))
    trace_id = plant_every_kind(dsn, otel)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    events = [e for e in events if "leak" in e["event"]]
    assert [e["event"] for e in events] == KINDS
    for event, frames in zip(events, [HELD, HELD, DROPPED, HELD], strict=True):
        assert event["checkout_frames"] == frame_dicts(frames)  # most recent call last
        assert event["site"] == site(*frames[-1])
        assert event["stack"] == "\n".join(block(frames))  # the same, as structlog's key
        assert event["pool"] == "reports"
        assert event["backend_pid"] > 0
    assert [e["checkout_trace_id"] for e in events] == [trace_id, trace_id, None, None]
    # The dropped one is announced off the garbage collector's callback (by the collector
    # thread, or by checkouts()), while request-1 is ending: either name is the truth then.
    threads = [e["thread"] for e in events]
    assert threads[2] in ("request-1", "request-1 (ended)")
    assert threads[:2] + threads[3:] == ["request-1 (ended)"] * 3
    assert events[1]["held_s"] >= 0.08 and events[3]["when"] == "pool_closed"


def processor_formatter(handler: logging.Handler) -> list[Any]:
    """structlog's recommended bridge: ProcessorFormatter renders on the stdlib handler."""
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=structlog.dev.ConsoleRenderer(colors=False)))
    return [structlog.stdlib.add_log_level,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter]


def rendered_message(handler: logging.Handler) -> list[Any]:
    """The older bridge: structlog renders, the stdlib logger carries the string."""
    handler.setFormatter(logging.Formatter("%(message)s"))
    return [structlog.stdlib.add_log_level, structlog.dev.ConsoleRenderer(colors=False)]


@pytest.mark.parametrize("bridge", [processor_formatter, rendered_message],
                         ids=["processor-formatter", "rendered-message"])
def test_stdlib_logging_bridge_prints_the_block(
        dsn: str, otel: Otel, structlog_config: Callable[..., None],
        bridge: Callable[[logging.Handler], list[Any]]) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("psycopg2_pool")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        structlog_config(processors=bridge(handler),
                         logger_factory=structlog.stdlib.LoggerFactory(),
                         wrapper_class=structlog.stdlib.BoundLogger)
        trace_id = plant_every_kind(dsn, otel)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    check_console(out.getvalue(), trace_id)
