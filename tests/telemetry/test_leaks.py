"""The leak detector: planted leaks in realistic shapes, each report naming its line."""

from __future__ import annotations

import gc
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from psycopg2_pool import ConnectionPool, PoolExhausted
from telemetry import PoolInstrumentation, instrument, names
from telemetry.leaks import holders_note
from tests.support.forking import in_child
from tests.support.otel import Otel, point

HERE = Path(__file__)


def line_of(marker: str) -> int:
    """The line of this file that carries ``# PLANT: <marker>``."""
    for number, line in enumerate(HERE.read_text().splitlines(), start=1):
        if line.rstrip().endswith(f"# PLANT: {marker}"):
            return number
    raise AssertionError(f"no line marked {marker}")


def site(marker: str, function: str) -> str:
    """How a report names the line: ``file:line in function``, file relative to the cwd."""
    return f"{os.path.relpath(HERE)}:{line_of(marker)} in {function}"


def frame(marker: str, function: str) -> dict[str, Any]:
    """How ``checkout_frames`` gives that line: the file as Python prints it, the source."""
    line = line_of(marker)
    return {"file": str(HERE), "line": line, "function": function,
            "source": HERE.read_text().splitlines()[line - 1].strip()}


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(0, 4, dsn=dsn, name="leak-test")
    yield pool
    pool.close()


@pytest.fixture
def handle(pool: ConnectionPool) -> Iterator[PoolInstrumentation]:
    handle = instrument(pool, leak_threshold=0.05)
    yield handle
    handle.uninstrument()


def suspected(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "connection_leak_suspected"]


def scan_after_threshold(handle: PoolInstrumentation) -> None:
    time.sleep(0.08)
    assert handle.leak_detector is not None
    handle.leak_detector.scan()


# -- the planted leaks ----------------------------------------------------------------------

def early_return(pool: ConnectionPool, keep: list[Any]) -> str:
    conn = pool.getconn()  # PLANT: early-return
    keep.append(conn)
    if keep:
        return "cached"  # forgot pool.putconn(conn) on this path
    pool.putconn(conn)
    return "fresh"


def swallowed_exception(pool: ConnectionPool, keep: list[Any]) -> None:
    conn = pool.getconn()  # PLANT: swallowed
    keep.append(conn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1/0")
        pool.putconn(conn)
    except Exception:  # noqa: BLE001 - the planted bug: the error path skips putconn
        pass


def rows(pool: ConnectionPool) -> Iterator[int]:
    conn = pool.getconn()  # PLANT: generator
    with conn.cursor() as cur:
        cur.execute("SELECT generate_series(1, 3)")
        yield from (row[0] for row in cur.fetchall())
    pool.putconn(conn)


class Repository:
    def __init__(self, pool: ConnectionPool) -> None:
        self.conn = pool.getconn()  # PLANT: stored-on-object


def get_db(pool: ConnectionPool) -> Any:
    return pool.getconn()  # PLANT: helper


def caller_of_helper(pool: ConnectionPool) -> Any:
    return get_db(pool)  # PLANT: helper-caller


def in_a_thread(pool: ConnectionPool, keep: list[Any]) -> None:
    keep.append(pool.getconn())  # PLANT: thread


def dropped(pool: ConnectionPool) -> None:
    pool.getconn()  # PLANT: dropped


# -- held past the threshold: reported once, naming the line --------------------------------

@pytest.mark.parametrize(("plant", "marker", "function"), [
    (lambda pool, keep: early_return(pool, keep), "early-return", "early_return"),
    (lambda pool, keep: swallowed_exception(pool, keep), "swallowed", "swallowed_exception"),
    (lambda pool, keep: keep.append(next(gen := rows(pool))) or keep.append(gen),
     "generator", "rows"),
    (lambda pool, keep: keep.append(Repository(pool)), "stored-on-object", "__init__"),
    (lambda pool, keep: keep.append(caller_of_helper(pool)), "helper", "get_db"),
], ids=["early-return", "swallowed-exception", "abandoned-generator", "stored-on-object",
        "helper-for-caller"])
def test_held_leak_is_reported_once_with_its_line(pool: ConnectionPool,
                                                  handle: PoolInstrumentation,
                                                  plant: Any, marker: str,
                                                  function: str) -> None:
    keep: list[Any] = []
    with capture_logs() as logs:
        plant(pool, keep)
        scan_after_threshold(handle)
        handle.leak_detector.scan()  # type: ignore[union-attr]  # a second scan: no repeat
    (report,) = suspected(logs)
    assert report["site"] == site(marker, function)
    assert report["checkout_frames"][-1] == frame(marker, function)  # most recent call last
    assert report["pool"] == "leak-test"
    assert report["held_s"] >= 0.05
    assert report["thread"] == threading.current_thread().name
    assert report["backend_pid"] > 0
    assert report["threshold_s"] == 0.05
    # application frames only: no pytest, pluggy or pool frames in the stack
    assert all(f["file"] == str(HERE) for f in report["checkout_frames"])
    assert handle.leak_detector.count() == 1  # type: ignore[union-attr]


def test_helper_report_also_names_the_caller(pool: ConnectionPool,
                                             handle: PoolInstrumentation) -> None:
    with capture_logs() as logs:
        conn = caller_of_helper(pool)
        scan_after_threshold(handle)
    (report,) = suspected(logs)
    assert report["checkout_frames"][-2:] == [frame("helper-caller", "caller_of_helper"),
                                              frame("helper", "get_db")]
    pool.putconn(conn)


def test_leak_in_another_thread_names_that_thread(pool: ConnectionPool,
                                                  handle: PoolInstrumentation) -> None:
    keep: list[Any] = []
    worker = threading.Thread(target=in_a_thread, args=(pool, keep), name="report-worker")
    with capture_logs() as logs:
        worker.start()
        worker.join()
        scan_after_threshold(handle)
    (report,) = suspected(logs)
    assert report["site"] == site("thread", "in_a_thread")
    assert report["thread"] == "report-worker (ended)"


def test_dropped_reference_is_a_definite_leak_and_frees_the_slot(
        pool: ConnectionPool, handle: PoolInstrumentation) -> None:
    with capture_logs() as logs:
        dropped(pool)
        gc.collect()
        pool.checkouts()  # announced by the collector thread, at the latest by this call
    (report,) = [e for e in logs if e["event"] == "connection_leaked"]
    assert report["log_level"] == "error"
    assert report["site"] == site("dropped", "dropped")
    assert pool.get_stats()["pool_size"] == 0  # the slot was given back
    assert pool.get_stats()["discarded_garbage_collected"] == 1
    assert handle.leak_detector.count() == 1  # type: ignore[union-attr]


def test_background_worker_reports_without_help(dsn: str) -> None:
    pool = ConnectionPool(0, 2, dsn=dsn, name="bg")
    handle = instrument(pool, leak_threshold=0.1)
    with capture_logs() as logs:
        conn = pool.getconn()  # PLANT: background
        deadline = time.monotonic() + 5
        while not suspected(logs) and time.monotonic() < deadline:
            time.sleep(0.02)
    (report,) = suspected(logs)
    assert report["site"] == site("background", "test_background_worker_reports_without_help")
    pool.putconn(conn)
    pool.close()
    handle.uninstrument()


def test_a_forked_child_reports_its_leaks(dsn: str) -> None:
    """A pool instrumented before os.fork() (gunicorn's master under --preload): the child
    has the detector's task but not the parent's thread; the child starts its own, so a
    connection the child leaks is reported, with the child's line."""
    from telemetry.worker import WORKER

    pool = ConnectionPool(0, 2, dsn=dsn, name="forked")
    handle = instrument(pool, leak_threshold=0.1)
    assert WORKER.running

    def leak_in_the_child() -> Any:
        with capture_logs() as logs:
            conn = pool.getconn()  # PLANT: forked child
            deadline = time.monotonic() + 5
            while not suspected(logs) and time.monotonic() < deadline:
                time.sleep(0.02)
        pool.putconn(conn)
        return [WORKER.running, [e["site"] for e in suspected(logs)]]

    running, sites = in_child(leak_in_the_child)
    assert running is True
    assert sites == [site("forked child", "leak_in_the_child")]
    pool.close()
    handle.uninstrument()


def test_returned_after_report_is_logged_with_total_time(pool: ConnectionPool,
                                                         handle: PoolInstrumentation) -> None:
    with capture_logs() as logs:
        conn = pool.getconn()
        scan_after_threshold(handle)
        time.sleep(0.05)
        pool.putconn(conn)
    (returned,) = [e for e in logs if e["event"] == "connection_leak_returned"]
    assert returned["log_level"] == "info"
    assert returned["held_s"] >= 0.13
    assert returned["site"].startswith(os.path.relpath(HERE))


def test_expected_long_hold_is_not_reported(pool: ConnectionPool,
                                            handle: PoolInstrumentation) -> None:
    with capture_logs() as logs:
        conn = pool.getconn()
        handle.expect_long_hold(conn, "LISTEN loop")
        scan_after_threshold(handle)
        pool.putconn(conn)
    assert suspected(logs) == []
    assert handle.leak_detector.count() == 0  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="not checked out"):
        handle.expect_long_hold(conn)


def test_close_reports_connections_still_out(pool: ConnectionPool,
                                             handle: PoolInstrumentation) -> None:
    with capture_logs() as logs:
        conn = pool.getconn()  # PLANT: at-close
        pool.close()
    (report,) = suspected(logs)
    assert report["when"] == "pool_closed"
    assert report["site"] == site("at-close", "test_close_reports_connections_still_out")
    pool.putconn(conn)


def test_exhaustion_names_who_took_them_all(dsn: str, otel: Otel) -> None:
    pool = ConnectionPool(0, 4, dsn=dsn, name="exhaust")
    handle = instrument(pool, leak_threshold=60)
    keep: list[Any] = [Repository(pool)]  # outside any trace: no trace id for this one
    time.sleep(0.01)  # the requests' checkouts are younger: the untraced one is the oldest
    requests: list[str] = []
    for name in ("GET /a", "GET /b"):
        with otel.tracer.start_as_current_span(name) as span:
            keep.append(Repository(pool) if name == "GET /a" else caller_of_helper(pool))
            requests.append(format(span.get_span_context().trace_id, "032x"))
    with otel.tracer.start_as_current_span("GET /c") as span:
        keep.append(Repository(pool))
        requests.append(format(span.get_span_context().trace_id, "032x"))
    try:
        with capture_logs() as logs, pytest.raises(PoolExhausted) as raised:
            pool.getconn()
        (event,) = [e for e in logs if e["event"] == "pool_exhausted"]
        stored, helper = event["holders"]
        assert stored == {"site": site("stored-on-object", "__init__"), "count": 3,
                          "oldest_s": stored["oldest_s"],
                          "trace_ids": [requests[0], requests[2]]}  # oldest first
        assert helper == {"site": site("helper", "get_db"), "count": 1,
                          "oldest_s": helper["oldest_s"], "trace_ids": [requests[1]]}
        assert stored["oldest_s"] >= 0.01
        (note,) = raised.value.__notes__  # from the same holders as the log event
        age = r"[0-9.]+"
        assert re.fullmatch(
            re.escape(f"connections checked out by: 3 held by "
                      f"{site('stored-on-object', '__init__')} (oldest ") + age
            + re.escape(f" s; traces {requests[0]}, {requests[2]}); 1 held by "
                        f"{site('helper', 'get_db')} (oldest ") + age
            + re.escape(f" s; traces {requests[1]})"), note), note
    finally:
        del keep
        gc.collect()
        pool.close()
        handle.uninstrument()


def test_exhaustion_holders_are_made_once_for_the_note_and_the_log(
        pool: ConnectionPool, handle: PoolInstrumentation) -> None:
    """One timeout, one walk over the checkouts: the error's note and ``pool_exhausted``
    share it (a second timeout makes its own)."""
    detector = handle.leak_detector
    assert detector is not None
    made: list[list[dict[str, object]]] = []
    holders = detector.holders

    def counting() -> list[dict[str, object]]:
        made.append(holders())
        return made[-1]

    detector.holders = counting  # type: ignore[method-assign]  # the real one, counted
    handle.logs.exhaustion_interval = 0  # log both timeouts
    keep = [pool.getconn() for _ in range(4)]
    try:
        for timeouts in (1, 2):
            with capture_logs() as logs, pytest.raises(PoolExhausted) as raised:
                pool.getconn()
            assert len(made) == timeouts
            (event,) = [e for e in logs if e["event"] == "pool_exhausted"]
            assert event["holders"] is made[-1]
            assert raised.value.__notes__ == [holders_note(made[-1])]
    finally:
        for conn in keep:
            pool.putconn(conn)


def test_exhaustion_lists_a_few_traces_per_site(dsn: str, otel: Otel) -> None:
    pool = ConnectionPool(0, 7, dsn=dsn, name="exhaust-many")
    handle = instrument(pool, leak_threshold=60)
    keep: list[Any] = []
    for number in range(7):
        with otel.tracer.start_as_current_span(f"request {number}"):
            keep.append(Repository(pool))
    try:
        (holder,) = handle.leak_detector.holders()  # type: ignore[union-attr]
        assert holder["count"] == 7
        assert len(holder["trace_ids"]) == 5  # type: ignore[arg-type]  # bounded
    finally:
        del keep
        gc.collect()
        pool.close()
        handle.uninstrument()


def test_snapshot_api(pool: ConnectionPool, handle: PoolInstrumentation, otel: Otel) -> None:
    with otel.tracer.start_as_current_span("request") as span:
        conn = pool.getconn()  # PLANT: snapshot
    other = pool.getconn()
    assert handle.leaks() == []  # nothing past the threshold yet
    (first, second) = handle.leaks(all_checkouts=True)
    assert {first.site, second.site} >= {site("snapshot", "test_snapshot_api")}
    time.sleep(0.08)
    pool.putconn(other)
    (leak,) = handle.leaks()
    assert leak.site == site("snapshot", "test_snapshot_api")
    assert leak.trace_id == format(span.get_span_context().trace_id, "032x")
    assert leak.held_s >= 0.05 and not leak.reported
    assert leak.backend_pid == conn.info.backend_pid
    pool.putconn(conn)
    assert handle.leaks(all_checkouts=True) == []


def test_leak_counter_metric(dsn: str, otel: Otel) -> None:
    pool = ConnectionPool(0, 2, dsn=dsn, name="leak-metric")
    handle = instrument(pool, meter_provider=otel.meter_provider, leak_threshold=0.05)
    conn = pool.getconn()
    dropped(pool)
    gc.collect()
    scan_after_threshold(handle)
    assert point(otel.metrics()[names.LEAKS]).value == 2
    pool.putconn(conn)
    pool.close()
    handle.uninstrument()


def test_reports_never_hold_the_pool_lock(pool: ConnectionPool) -> None:
    """A logger that needs the pool while it formats a report must not deadlock."""
    used_pool: list[bool] = []

    class PoolUsingLogger:
        def __getattr__(self, level: str) -> Any:
            def log(event: str, **fields: Any) -> None:
                if event == "connection_leak_suspected":
                    done = threading.Event()

                    def use() -> None:
                        pool.putconn(pool.getconn())
                        used_pool.append(True)
                        done.set()

                    threading.Thread(target=use).start()
                    assert done.wait(5), "the pool was blocked while a report was made"
            return log

    handle = instrument(pool, logger=PoolUsingLogger(), leak_threshold=0.05)
    conn = pool.getconn()
    scan_after_threshold(handle)
    assert used_pool == [True]
    pool.putconn(conn)
    handle.uninstrument()


def test_detector_off_attaches_nothing(pool: ConnectionPool) -> None:
    handle = instrument(pool, leak_threshold=None)
    assert handle.leak_detector is None
    conn = pool.getconn()
    assert handle.leaks(all_checkouts=True) == []
    pool.putconn(conn)
    handle.uninstrument()


def test_nothing_is_retained_per_returned_connection(pool: ConnectionPool,
                                                     handle: PoolInstrumentation) -> None:
    for _ in range(1000):
        pool.putconn(pool.getconn())
    assert handle.leak_detector.tables() == ({}, {}, {})  # type: ignore[union-attr]
    assert pool.checkouts() == []  # the pool's records say who holds what: nobody


def test_background_work_stops_when_the_pool_closes(dsn: str) -> None:
    from telemetry import instrumented_pools
    from telemetry.worker import WORKER

    for other in instrumented_pools():  # earlier tests' pools are closed or uninstrumented
        assert other.pool is None or other.pool.closed or not other.active
    pool = ConnectionPool(0, 1, dsn=dsn)
    handle = instrument(pool, leak_threshold=0.05)
    assert WORKER.running
    pool.close()
    WORKER.join()
    assert not WORKER.running
    handle.uninstrument()


def test_collected_since_compares_the_checkout_time_exactly(pool: ConnectionPool,
                                                            handle: PoolInstrumentation) -> None:
    """The pytest plugin's question: dropped, and checked out at or after the test started."""
    detector = handle.leak_detector
    assert detector is not None
    dropped(pool)
    gc.collect()
    pool.checkouts()  # as the plugin reads: collected connections are announced first
    (_, leak) = detector.collected[-1]
    assert detector.collected_since(leak.since) == [leak]
    assert detector.collected_since(leak.since + 1e-9) == []  # checked out before: not blamed
