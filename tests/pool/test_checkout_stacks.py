"""The checkout stacks a pool keeps while a listener asks (the leak detector's record).

Every checkout of such a pool walks the caller's stack; the C walk
(``psycopg2_pool._capture``) does it at about an eighth of the cost. Where it cannot be built the
Python walk runs, so both must give the same stacks: compared here on the same frames, and end
to end in a leak report made with each (tests/telemetry/test_pure_python.py).
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import tracemalloc
from types import FrameType
from typing import Any

import pytest

from psycopg2_pool import (
    Checkout,
    ConnectionPool,
    DiscardEvent,
    DiscardReason,
    PoolListener,
    stacks,
)
from tests.support.pools import MakePool, wait_until
from tests.support.system import REQUIRE_BINARIES_ENV

try:
    from psycopg2_pool import _capture
except ImportError:  # pragma: no cover - depends on the build
    _capture = None  # type: ignore[assignment]

needs_c = pytest.mark.skipif(_capture is None, reason="psycopg2_pool._capture is not built "
                                                      "here (no C compiler when installing)")


def test_the_c_part_is_built_where_ci_requires_it() -> None:
    # .ci/run installs with a compiler at hand: a build that silently fell back to Python
    # would make every checkout of an instrumented pool pay ~1 µs more.
    if os.environ.get(REQUIRE_BINARIES_ENV) != "1" and _capture is None:
        pytest.skip("psycopg2_pool._capture is not built here")
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


@needs_c
def test_c_stack_leaks_no_references_nor_memory() -> None:
    frame = sys._getframe()
    code = frame.f_code
    refs = sys.getrefcount(code), sys.getrefcount(frame)
    tracemalloc.start()
    try:
        for _ in range(1000):  # warm up: free lists
            _capture.stack(frame, 20)
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(50_000):
            _capture.stack(frame, 20)
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (sys.getrefcount(code), sys.getrefcount(frame)) == refs
    assert end - start < 4096


class Asks(PoolListener):
    """A listener that asks for checkout stacks, and keeps the discards it sees."""

    def __init__(self, depth: Any = 20) -> None:
        self.checkout_stack_depth = depth
        self.discards: list[DiscardEvent] = []

    def on_discard(self, event: DiscardEvent) -> None:
        self.discards.append(event)


def take(pool: ConnectionPool, **kwargs: Any) -> Any:
    return pool.getconn(**kwargs)  # the checkout line


def functions(checkout: Checkout) -> list[str]:
    assert checkout.stack is not None
    return [code.co_name for code in checkout.stack[::2]]


def test_no_stack_is_kept_unless_a_listener_asks(make_pool: MakePool) -> None:
    pool = make_pool(1, 2)
    conn = take(pool)
    [checkout] = pool.checkouts()
    assert checkout.connection is conn and checkout.connection_id == id(conn)
    assert checkout.stack is None and checkout.thread is None
    assert checkout.backend_pid == conn.info.backend_pid and checkout.since > 0
    pool.putconn(conn)
    assert pool.checkouts() == []


def test_a_listener_that_asks_gets_the_stack_from_the_getconn_caller(
        make_pool: MakePool) -> None:
    pool = make_pool(1, 2)
    pool.add_listener(Asks(2))
    conn = take(pool)  # fast path: an idle connection
    [checkout] = pool.checkouts()
    assert functions(checkout) == [
        "take", "test_a_listener_that_asks_gets_the_stack_from_the_getconn_caller"]
    assert checkout.thread is threading.current_thread()
    pool.remove_listener(pool.listeners[0])
    pool.add_listener(Asks(20))
    other = take(pool, timeout=5)  # slow path: opened for it; the pool's frames come first
    [second] = [c for c in pool.checkouts() if c.connection is other]
    names = functions(second)
    assert names.index("take") > 0 and names[names.index("take") - 1] == "getconn"
    pool.putconn(conn)
    pool.putconn(other)


def test_stacks_are_forgotten_when_nobody_asks_any_more(make_pool: MakePool) -> None:
    pool = make_pool(1, 2)
    asks = Asks()
    pool.add_listener(asks)
    conn = take(pool)
    assert pool.checkouts()[0].stack is not None
    pool.remove_listener(asks)
    assert pool.checkouts()[0].stack is None  # not a stale answer for a later listener
    pool.putconn(conn)


@pytest.mark.parametrize("depth", [-1, 2.5, True, "20"])
def test_a_bad_checkout_stack_depth_is_refused(make_pool: MakePool, depth: Any) -> None:
    pool = make_pool(0, 1)
    with pytest.raises(TypeError, match="checkout_stack_depth is a number of frames"):
        pool.add_listener(Asks(depth))
    assert pool.listeners == ()


def test_a_collected_connections_discard_names_its_checkout(make_pool: MakePool) -> None:
    pool = make_pool(1, 2)
    asks = Asks()
    pool.add_listener(asks)
    take(pool)  # dropped at once
    gc.collect()
    assert wait_until(lambda: any(e.reason == DiscardReason.GARBAGE_COLLECTED
                                  for e in asks.discards))
    [event] = [e for e in asks.discards if e.reason == DiscardReason.GARBAGE_COLLECTED]
    assert event.checkout is not None and event.checkout.connection is None
    assert event.checkout.connection_id == event.connection_id
    assert functions(event.checkout)[0] == "take"
    assert event.checkout.thread is threading.current_thread()
    assert all(e.checkout is None for e in asks.discards if e is not event)


def test_a_getconn_with_no_python_caller_keeps_an_empty_stack(make_pool: MakePool) -> None:
    import _thread

    pool = make_pool(1, 2)
    asks = Asks()
    pool.add_listener(asks)
    raised: list[object] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda hook: raised.append(hook.exc_value)
    try:
        _thread.start_new_thread(pool.getconn, ())  # its result is dropped: a leak
        assert wait_until(lambda: any(e.reason == DiscardReason.GARBAGE_COLLECTED
                                      for e in asks.discards) or bool(raised))
    finally:
        sys.unraisablehook = previous
    assert raised == []  # the checkout did not fail for want of a caller
    [event] = [e for e in asks.discards if e.reason == DiscardReason.GARBAGE_COLLECTED]
    assert event.checkout is not None and event.checkout.stack == ()


def test_a_checkout_under_way_never_shows_the_previous_holders_stack(
        make_pool: MakePool) -> None:
    seen: list[tuple[Any, Any]] = []

    def check(conn: Any) -> None:  # the health check runs while the checkout is under way
        seen.extend((c.stack, c.thread) for c in pool.checkouts() if c.connection is conn)

    pool = make_pool(1, 1, check=check, check_idle_after=0)
    pool.add_listener(Asks())

    def first_holder() -> None:
        pool.putconn(take(pool))

    thread = threading.Thread(target=first_holder, name="first-holder")
    thread.start()
    thread.join()
    seen.clear()
    conn = take(pool)
    assert seen and all(stack is None and holder is None for stack, holder in seen)
    [checkout] = pool.checkouts()
    assert checkout.thread is threading.current_thread() and functions(checkout)[0] == "take"
    pool.putconn(conn)


def test_a_connection_dropped_while_the_pool_is_busy_is_announced_before_checkouts_are_read(
        make_pool: MakePool) -> None:
    pool = make_pool(1, 2)
    asks = Asks()
    pool.add_listener(asks)
    conn = take(pool)
    with pool._lock:  # busy: the dropped connection's discard waits in the pool's queue
        del conn
        gc.collect()
        assert asks.discards == []  # the collector thread waits for the lock
    # A leak checker reading the checkouts now must find the connection in one place or the
    # other: checked out still, or announced as collected.
    assert pool.checkouts() == []
    assert [e.reason for e in asks.discards] == [DiscardReason.GARBAGE_COLLECTED]
