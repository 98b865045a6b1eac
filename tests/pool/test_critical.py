"""The fast paths' critical sections on their own (psycopg2_pool.critical): the C ones
(``psycopg2_pool._critical``) and their Python reference do the same, step for step.

No server here: the sections only move connections between the idle deque and their callers
and write the records' states, so plain objects stand in for connections, with real
:class:`~psycopg2_pool.connection.Record` objects (whose slots the C sections write directly).
A pool on a real server runs these sections in every other test of tests/pool/, with the C
ones (and with both in test_interruptions.py).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import deque
from typing import Any

import pytest

from psycopg2_pool import critical
from psycopg2_pool.connection import IDLE, OUT, Record
from tests.support.system import REQUIRE_BINARIES_ENV


class Conn:
    """A connection as the sections see one: something with its record in ``_pool_rec``."""

    def __init__(self, name: str) -> None:
        self.name = name
        rec = Record.__new__(Record)  # no pool, no server: only the slots the sections use
        rec.state, rec.lent, rec.since, rec.returned_at = IDLE, None, 0.0, 0.0
        rec.doomed = None
        self._pool_rec = rec


class SubRecord(Record):
    """Not exactly a Record: the C sections write it through setattr, not at its offsets."""

    __slots__ = ()


def kinds() -> list[Any]:
    c = pytest.param("C", marks=pytest.mark.skipif(
        not critical.ACCELERATED and os.environ.get(REQUIRE_BINARIES_ENV) != "1",
        reason="psycopg2_pool._critical is not built here (or PSYCOPG2_POOL_PURE_PYTHON=1)"))
    return [c, "Python"]


@pytest.fixture(params=kinds())
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "C":
        assert critical.ACCELERATED, "the C sections must be built under .ci/run"
    return str(request.param)


def make(kind: str, conns: list[Conn] = ()) -> Any:  # type: ignore[assignment]
    lock, cls = ((critical.Lock, critical.FastPaths) if kind == "C"
                 else (threading.Lock, critical.PyFastPaths))
    fast = cls(lock(), deque(conns), {}, deque())
    for conn in conns:
        conn._pool_rec.state = IDLE
    fast.slow_return = False
    return fast


def test_the_build_under_test() -> None:
    """.ci/run builds the C part: the pool runs its sections in C there."""
    if os.environ.get(REQUIRE_BINARIES_ENV) == "1":
        assert critical.ACCELERATED
        assert critical.FastPaths.__module__ == "psycopg2_pool._critical"
    assert critical.ACCELERATED is (critical.FastPaths is not critical.PyFastPaths)


def test_take_lends_the_most_recently_returned(kind: str) -> None:
    a, b = Conn("a"), Conn("b")
    fast = make(kind, [a, b])
    assert fast.take(5.0) is b
    rec = b._pool_rec
    assert rec.state == OUT and rec.lent is fast.records and rec.since == 5.0
    assert list(fast.idle) == [a] and a._pool_rec.state == IDLE
    assert fast.requests == 1
    assert fast.take(6.0) is a
    assert fast.take(7.0) is None  # none idle: nothing counted
    assert fast.requests == 2 and fast.returns == 0


def test_keep_makes_it_idle_again(kind: str) -> None:
    a = Conn("a")
    fast = make(kind, [a])
    conn = fast.take(1.0)
    rec = conn._pool_rec
    assert fast.keep(conn, rec, 2.5) is True
    assert (rec.state, rec.lent, rec.returned_at) == (IDLE, None, 2.5)
    assert list(fast.idle) == [a] and fast.returns == 1


@pytest.mark.parametrize("why", ["slow_return", "a waiter", "not lent", "lent elsewhere"])
def test_keep_changes_nothing_when_there_is_more_to_do(kind: str, why: str) -> None:
    a = Conn("a")
    fast = make(kind, [a])
    conn = fast.take(1.0)
    rec = conn._pool_rec
    if why == "slow_return":
        fast.slow_return = True
    elif why == "a waiter":
        fast.waiters.append(object())
    elif why == "not lent":
        rec.lent = None  # returned twice, or being returned by another thread
    else:
        rec.lent = {}  # another pool's
    before = (rec.state, rec.lent, rec.returned_at)
    assert fast.keep(conn, rec, 9.0) is False
    assert (rec.state, rec.lent, rec.returned_at) == before
    assert not fast.idle and fast.returns == 0


def test_records_of_a_subclass_are_written_too(kind: str) -> None:
    """The C sections write an exact Record at its slots' offsets, anything else by setattr."""
    a = Conn("a")
    sub = SubRecord.__new__(SubRecord)
    sub.state, sub.lent, sub.since, sub.returned_at = IDLE, None, 0.0, 0.0
    sub.doomed = None
    a._pool_rec = sub
    fast = make(kind, [a])
    assert fast.take(3.0) is a and sub.state == OUT and sub.lent is fast.records
    assert fast.keep(a, sub, 4.0) is True and sub.state == IDLE and sub.returned_at == 4.0


def test_a_broken_connection_object_leaves_the_lock_free(kind: str) -> None:
    """An error inside a section (here: no record) is raised with the lock released."""
    fast = make(kind)
    fast.idle.append(object())
    with pytest.raises(AttributeError):
        fast.take(1.0)
    assert not fast.lock.locked()
    assert fast.requests == 0


def test_both_kinds_agree_on_a_random_walk() -> None:
    if not critical.ACCELERATED:
        pytest.skip("psycopg2_pool._critical is not built here")
    rng = random.Random(23)
    walks = []
    for kind in ("C", "Python"):
        rng.seed(23)
        conns = [Conn(str(i)) for i in range(5)]
        fast = make(kind, conns)
        held: list[Any] = []
        trace = []
        for step in range(2000):
            now = float(step)
            move = rng.random()
            if move < 0.1:
                fast.slow_return = not fast.slow_return
            elif move < 0.15:
                if fast.waiters:
                    fast.waiters.pop()
                else:
                    fast.waiters.append(None)
            elif move < 0.55 or not held:
                conn = fast.take(now)
                trace.append(("take", conn and conn.name))
                if conn is not None:
                    held.append(conn)
            else:
                conn = held.pop(rng.randrange(len(held)))
                kept = fast.keep(conn, conn._pool_rec, now)
                trace.append(("keep", conn.name, kept))
                if not kept:  # the pool's slow path would keep it: do so by hand
                    rec = conn._pool_rec
                    rec.returned_at, rec.state, rec.lent = now, IDLE, None
                    fast.idle.append(conn)
        states = [(c.name, c._pool_rec.state, c._pool_rec.since, c._pool_rec.returned_at)
                  for c in conns]
        walks.append((trace, states, [c.name for c in fast.idle], fast.requests,
                      fast.returns))
    assert walks[0] == walks[1]


def test_threads_never_share_a_connection(kind: str) -> None:
    """8 threads take and keep 3 connections for 0.5 s: each connection has at most one
    holder at a time, and the counts balance."""
    conns = [Conn(str(i)) for i in range(3)]
    fast = make(kind, conns)
    holders: dict[str, int] = {}
    errors: list[str] = []
    stop = time.monotonic() + 0.5
    guard = threading.Lock()  # the test's own bookkeeping

    def worker() -> None:
        me = threading.get_ident()
        while time.monotonic() < stop:
            conn = fast.take(time.monotonic())
            if conn is None:
                continue
            with guard:
                if conn.name in holders:
                    errors.append(f"{conn.name} held twice")
                holders[conn.name] = me
            if conn._pool_rec.state != OUT:
                errors.append(f"{conn.name} lent while {conn._pool_rec.state}")
            with guard:
                del holders[conn.name]
            if not fast.keep(conn, conn._pool_rec, time.monotonic()):
                errors.append("keep refused")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert sorted(c.name for c in fast.idle) == ["0", "1", "2"]
    assert all(c._pool_rec.state == IDLE for c in conns)
    assert fast.requests == fast.returns > 0


# -- the lock --------------------------------------------------------------------------------


def lock_of(kind: str) -> Any:
    return critical.Lock() if kind == "C" else threading.Lock()


def test_lock_behaves_as_threading_lock(kind: str) -> None:
    lock = lock_of(kind)
    assert not lock.locked()
    assert lock.acquire() is True and lock.locked()
    assert lock.acquire(False) is False
    assert lock.acquire(blocking=False) is False
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()
    with lock:
        assert lock.locked()
    assert not lock.locked()
    assert "unlocked" in repr(lock)


def test_lock_blocks_until_released(kind: str) -> None:
    lock = lock_of(kind)
    lock.acquire()
    got = threading.Event()

    def taker() -> None:
        with lock:
            got.set()

    t = threading.Thread(target=taker)
    t.start()
    assert not got.wait(0.2)
    lock.release()
    assert got.wait(5)
    t.join(5)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
def test_a_signal_handler_raising_interrupts_a_blocked_acquire(kind: str) -> None:
    """As with threading.Lock: the handler's exception comes out of the acquire, the lock not
    taken by the interrupted thread (so a ``with`` never releases a lock it does not own)."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are handled on the main thread")
    lock = lock_of(kind)
    holder_may_go = threading.Event()
    held = threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            holder_may_go.wait(10)

    class Alarm(Exception):
        pass

    def raise_alarm(signum: int, frame: Any) -> None:
        raise Alarm

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(5)
    previous = signal.signal(signal.SIGALRM, raise_alarm)
    entered = False
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(Alarm), lock:
            entered = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not entered
    assert lock.locked()  # still the holder's
    holder_may_go.set()
    t.join(5)
    assert not lock.locked()


def test_fast_paths_want_their_own_lock() -> None:
    if not critical.ACCELERATED:
        pytest.skip("psycopg2_pool._critical is not built here")
    with pytest.raises(TypeError, match=r"lock must be a psycopg2_pool\._critical\.Lock"):
        critical.FastPaths(threading.Lock(), deque(), {}, deque())
