"""The checkout record in C (``telemetry._capture``) is the Python one, frame for frame.

Every checkout of an instrumented pool walks the stack; the C walk does it at a tenth of the
cost. Where it cannot be built the Python versions run, so both must give the same records:
compared here on the same frames, and end to end in a leak report made by each.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from types import FrameType
from typing import Any

import pytest

from telemetry import stacks
from tests.support.system import REQUIRE_BINARIES_ENV

try:
    from telemetry import _capture
except ImportError:  # pragma: no cover - depends on the build
    _capture = None  # type: ignore[assignment]

needs_c = pytest.mark.skipif(_capture is None, reason="telemetry._capture is not built here "
                                                      "(no C compiler when installing)")


def test_the_c_part_is_built_where_ci_requires_it() -> None:
    # .ci/run installs with a compiler at hand: a build that silently fell back to Python
    # would make every checkout pay ~1 µs more.
    if os.environ.get(REQUIRE_BINARIES_ENV) != "1" and _capture is None:
        pytest.skip("telemetry._capture is not built here")
    assert _capture is not None
    assert stacks.ACCELERATED is (os.environ.get(stacks.PURE_PYTHON_ENV) != "1")


def nested(depth: int, then: Any) -> Any:
    """``then(frame)`` ``depth`` calls deep, ``frame`` being its caller's: suspended, so the
    offsets of it and of its callers stay put while ``then`` looks at them."""
    return nested(depth - 1, then) if depth else then(sys._getframe(1))


@needs_c
@pytest.mark.parametrize("depth", [0, 3, 30])
@pytest.mark.parametrize("limit", [0, 1, 2, 20, 300])
def test_c_stack_is_the_python_stack(depth: int, limit: int) -> None:
    def both(frame: FrameType) -> tuple[Any, Any, int]:
        return (_capture.stack(frame, limit), stacks.py_stack(frame, limit),
                len(stacks.py_stack(frame, 1000)) // 2)

    c_stack, py_stack, frames = nested(depth, both)
    assert type(c_stack) is tuple
    assert len(c_stack) == 2 * min(limit, frames, 256)  # at most 256 frames
    assert c_stack == py_stack[:len(c_stack)]


@needs_c
def test_c_stack_of_no_frame_is_empty_and_bad_arguments_are_refused() -> None:
    assert _capture.stack(None, 20) == ()
    with pytest.raises(TypeError, match="frame or None"):
        _capture.stack("not a frame", 20)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit must be >= 0"):
        _capture.stack(sys._getframe(), -1)
    with pytest.raises(TypeError):
        _capture.stack(sys._getframe())  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="table must be a dict"):
        _capture.record([], object(), None, 1, None)  # type: ignore[arg-type]


class Conn:
    """Something a weak reference can point at, like a connection."""


@needs_c
@pytest.mark.parametrize("record", [pytest.param("c", id="c"), pytest.param("py", id="py")])
def test_record_holds_what_a_checkout_is(record: str) -> None:
    make = _capture.record if record == "c" else stacks.py_record
    table: dict[int, tuple[Any, ...]] = {}
    held, span = [Conn()], object()

    def take(frame: FrameType) -> tuple[Any, ...]:
        make(table, held[0], frame, 20, span)
        return stacks.py_stack(frame, 20)  # the same, suspended, frames

    before = time.monotonic()
    expected = nested(2, take)
    after = time.monotonic()
    ref, raw, since, thread, kept_span = table[id(held[0])]
    assert ref() is held[0]
    assert tuple(raw) == expected  # a tuple from C, a list from Python: the same items
    assert before <= since <= after
    assert thread is threading.current_thread()
    assert kept_span is span
    held.clear()
    gc.collect()
    assert ref() is None  # the record never keeps the connection alive


@needs_c
def test_record_names_the_thread_even_one_threading_did_not_start() -> None:
    import _thread

    out: dict[str, Any] = {}
    done = threading.Event()

    def raw_thread() -> None:
        table: dict[int, tuple[Any, ...]] = {}
        conn = Conn()
        _capture.record(table, conn, sys._getframe(), 5, None)
        out["thread"] = table[id(conn)][3]
        out["current"] = threading.current_thread()
        done.set()

    _thread.start_new_thread(raw_thread, ())
    assert done.wait(5)
    assert out["thread"] is out["current"]  # a _DummyThread, as current_thread() gives


@needs_c
def test_c_record_leaks_no_references_nor_memory() -> None:
    frame = sys._getframe()
    code = frame.f_code
    table: dict[int, tuple[Any, ...]] = {}
    conn = Conn()
    refs = sys.getrefcount(code), sys.getrefcount(frame), sys.getrefcount(conn)
    tracemalloc.start()
    try:
        for _ in range(1000):  # warm up: free lists, the table's size
            _capture.record(table, conn, frame, 20, None)
            table.pop(id(conn))
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(50_000):
            _capture.record(table, conn, frame, 20, None)
            table.pop(id(conn))
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (sys.getrefcount(code), sys.getrefcount(frame), sys.getrefcount(conn)) == refs
    assert end - start < 4096


LEAK = textwrap.dedent("""
    import json, sys
    from psycopg2_pool import ConnectionPool
    from telemetry import instrument, stacks

    def take(pool):
        return pool.getconn()  # the checkout line

    def handler(pool):
        return take(pool)

    pool = ConnectionPool(1, 2, dsn=sys.argv[1])
    handle = instrument(pool, leak_threshold=60)
    conn = handler(pool)
    [leak] = handle.leaks(all_checkouts=True)
    print(json.dumps({"accelerated": stacks.ACCELERATED, "site": leak.site,
                      "frames": [list(f) for f in leak.frames], "stack": leak.stack}))
    pool.putconn(conn)
    pool.close()
""")


@needs_c
def test_a_leak_report_is_the_same_with_either(dsn: str, tmp_path: Any) -> None:
    script = tmp_path / "app.py"
    script.write_text(LEAK)
    reports = []
    for pure in ("0", "1"):
        env = dict(os.environ, **{stacks.PURE_PYTHON_ENV: pure})
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH"))
                                            if p)
        result = subprocess.run([sys.executable, str(script), dsn], capture_output=True,
                                text=True, env=env, cwd=tmp_path, timeout=60, check=True)
        reports.append(json.loads(result.stdout))
    c_report, py_report = reports
    assert c_report.pop("accelerated") is True
    assert py_report.pop("accelerated") is False
    assert c_report == py_report
    assert c_report["site"] == "app.py:7 in take"
    assert [f[1:] for f in c_report["frames"]] == [
        [14, "<module>", "conn = handler(pool)"], [10, "handler", "return take(pool)"],
        [7, "take", "return pool.getconn()  # the checkout line"]]
