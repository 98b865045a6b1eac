"""The core under preemption, garbage collection, signals and fork (issue 23: P2, P3, P4, P5,
P8), each run bounded in time and seeded.

Slow (``PSYCOPG2_POOL_SLOW_TESTS=1``, as ``.ci/run`` sets): each test runs 10 to 30 s.
What every test ends with is the invariant of
:func:`~tests.support.invariants.invariant_problems`: once nobody holds a connection, the
books balance, nothing is checked out, and ``maxconn`` connections can be had at once.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from psycopg2_pool import ConnectionPool, PoolExhausted, PoolListener
from tests.support.invariants import invariant_problems
from tests.support.pools import wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
Figure = Callable[[str], None]


def all_stacks() -> str:
    """Every thread's stack, for the message of a test that found one stuck."""
    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    for ident, frame in sys._current_frames().items():
        out.append(f"--- {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(out)


_PR_SET_TIMERSLACK = 29


def tight_timer_slack() -> None:
    """Let this thread's timed waits end on time (Linux; elsewhere nothing).

    A thread that wants the GIL waits ``sys.getswitchinterval()`` before it asks the holder
    to drop it, and Linux rounds that wait up by the thread's timer slack, 50 µs by default:
    with ``setswitchinterval(1e-6)`` alone threads switch every ~50 µs, and the pool's
    windows of a few µs are almost never hit. With a 1 ns slack they switch as often as asked.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # no prctl: switches are rarer
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)


class switch_interval:
    """``with switch_interval(1e-6):`` the interpreter switches threads as often as it can."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.saved = sys.getswitchinterval()

    def __enter__(self) -> None:
        sys.setswitchinterval(self.seconds)

    def __exit__(self, *exc: object) -> None:
        sys.setswitchinterval(self.saved)


class Holders:
    """Who holds which connection: two threads holding one at once is the worst bug a pool
    can have. Lock-free (``dict.setdefault``/``pop`` are atomic under the GIL), so that the
    bookkeeping does not serialize the threads it watches."""

    def __init__(self) -> None:
        self.by_conn: dict[int, int] = {}
        self.errors: list[str] = []

    def take(self, conn: Any) -> None:
        me = threading.get_ident()
        other = self.by_conn.setdefault(id(conn), me)
        if other != me:
            self.errors.append(f"thread {me} got connection {id(conn):#x} held by {other}")

    def give(self, conn: Any) -> None:
        if self.by_conn.pop(id(conn), None) != threading.get_ident():
            self.errors.append(f"connection {id(conn):#x} was not held by its returner")


class TimeoutsSeen(PoolListener):
    """Each exhaustion a caller got, with the idle connections the pool had at that moment
    (on_timeout runs on the caller's thread, just before getconn raises)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[float, int, float]] = []  # (timeout, idle then, waited)

    def on_timeout(self, event: Any) -> None:
        idle = len(event.pool.idle_connections)
        with self.lock:
            self.seen.append((event.timeout, idle, event.wait_time))


def join_all(threads: list[threading.Thread], deadline: float) -> list[str]:
    """Join each thread by ``deadline`` (monotonic); the names of those still running."""
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t.is_alive()]


# -- (a) preemption at every opportunity: lost wake-ups, double hand-outs ------------------

THREADS_A = 12
ITERATIONS_A = 30000
#: A bound on the run, should a slower machine not get through the iterations in time.
DEADLINE_A = 25.0
MAXCONN_A = 4
WAIT_A = 1.0


def test_preempted_threads_never_miss_a_returned_connection(dsn: str, figure: Figure) -> None:
    """P3: with the interpreter switching threads at every opportunity, 12 threads check out
    and in (some inside a transaction, some closing the connection, some with timeout=0).
    No waiter may time out while the pool has an idle connection, no connection may stay
    idle while callers wait, no connection may be held by two threads at once, and the books
    balance at the end. Statistical, and rarely hit on a 2-CPU machine:
    test_interruptions' preemption tests hit P3's window deterministically. The threads stop
    at a deadline should the machine be too slow for the iterations."""
    pool = ConnectionPool(1, MAXCONN_A, dsn=dsn, timeout=WAIT_A)
    timeouts = TimeoutsSeen()
    pool.add_listener(timeouts)
    holders = Holders()
    errors: list[str] = []
    done = [0] * THREADS_A
    exhausted_at_once = [0]
    start = threading.Barrier(THREADS_A + 1)

    def worker(index: int) -> None:
        rng = random.Random(1000 + index)
        try:
            start.wait(10)
            deadline = time.monotonic() + DEADLINE_A
            for _ in range(ITERATIONS_A):
                if time.monotonic() > deadline:
                    break
                roll = rng.random()
                timeout = 0.0 if roll < 0.10 else WAIT_A
                try:
                    conn = pool.getconn(timeout=timeout)
                except PoolExhausted:
                    if timeout == 0:
                        exhausted_at_once[0] += 1
                        continue
                    raise
                holders.take(conn)
                if roll > 0.95:  # returned inside a transaction: the rollback path
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                holders.give(conn)
                pool.putconn(conn, close=0.93 < roll <= 0.95)
                done[index] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(f"worker {index}: {type(exc).__name__}: {exc}")

    stranded: list[str] = []
    sampling = threading.Event()

    def sampler() -> None:
        """A connection stranded idle while callers wait (a lost wake-up that later returns
        hide from the waiters' timeouts): seen idle, with callers waiting, in two snapshots
        5 ms apart. A return makes its connection idle and serves the waiters at once."""
        before: tuple[int, set[int]] = (0, set())
        while not sampling.is_set():
            waiting = pool.get_stats()["requests_waiting"]
            idle = {id(c) for c in list(pool.idle_connections)}
            if waiting and before[0] and idle & before[1]:
                stranded.append(f"{waiting} waiting, {len(idle)} idle")
            before = (waiting, idle)
            sampling.wait(0.005)

    threads = [threading.Thread(target=worker, args=(i,), name=f"worker-{i}", daemon=True)
               for i in range(THREADS_A)]
    watcher = threading.Thread(target=sampler, name="sampler", daemon=True)
    started = time.monotonic()
    with switch_interval(1e-6):
        for thread in threads:
            thread.start()
        watcher.start()
        start.wait(10)
        stuck = join_all(threads, started + DEADLINE_A + 15)
        sampling.set()
        watcher.join(5)
    elapsed = time.monotonic() - started
    stacks = all_stacks() if stuck else ""
    lost = [t for t in timeouts.seen if t[0] > 0 and t[1] > 0]
    stalls = [t for t in timeouts.seen if t[0] > 0]
    figure(f"core stress (a): {sum(done)} of {THREADS_A * ITERATIONS_A} cycles in "
           f"{elapsed:.1f} s, {len(stalls)} waiter "
           f"timeouts ({len(lost)} with an idle connection), {len(stranded)} snapshots with "
           f"a connection stranded idle, {exhausted_at_once[0]} timeout=0 refusals")
    assert not stuck, f"workers still running after {DEADLINE_A + 15} s: {stuck}\n{stacks}"
    assert not holders.errors, holders.errors[:5]
    assert not lost, (f"lost wake-up: {len(lost)} waiter(s) timed out (PoolExhausted) while "
                      f"the pool had an idle connection: (timeout, idle, waited) {lost[:5]}")
    assert not stranded, (f"lost wake-up: a connection stayed idle while callers waited, in "
                          f"{len(stranded)} snapshots: {stranded[:5]}")
    assert not errors, errors[:5]
    problems = invariant_problems(pool, MAXCONN_A)
    pool.close()
    assert not problems, problems


# -- (b) the garbage collector runs the pool's callback on any thread ------------------------

GC_CHILD = textwrap.dedent("""
    import faulthandler, gc, json, random, sys, threading, time
    from psycopg2_pool import ConnectionPool, PoolError
    from tests.support.invariants import invariant_problems

    dsn, seconds, bound = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    # A hang prints every thread's stack and ends the process: the test fails with them.
    faulthandler.dump_traceback_later(bound, exit=True)
    pools = [ConnectionPool(1, 3, dsn=dsn, timeout=0.5, max_lifetime=0.4, idle_timeout=0.3,
                            name=f"gc-{i}") for i in range(2)]
    stop = time.monotonic() + seconds
    counts = {"leaked": 0, "cycles": 0, "exhausted": 0}
    errors = []

    def leaker(index):
        rng = random.Random(index)
        while time.monotonic() < stop:
            pool = pools[rng.randrange(2)]
            try:
                conn = pool.getconn()
            except PoolError:
                counts["exhausted"] += 1
                continue
            if rng.random() < 0.5:
                pool.putconn(conn)
                counts["cycles"] += 1
                continue
            cycle = [conn]
            cycle.append(cycle)  # only the garbage collector can free it
            del conn, cycle
            counts["leaked"] += 1
            time.sleep(rng.uniform(0, 0.002))

    def churner():
        # Allocations now and then, so that collections keep coming while every other
        # thread waits for a connection only a collection can give back.
        while time.monotonic() < stop:
            junk = [[i] for i in range(60)]
            time.sleep(0.001)

    def cycler(index):
        rng = random.Random(100 + index)
        while time.monotonic() < stop:
            pool = pools[rng.randrange(2)]
            try:
                conn = pool.getconn()
            except PoolError:
                counts["exhausted"] += 1
                continue
            junk = [[i] for i in range(rng.randrange(50))]  # allocations: collections
            pool.putconn(conn, close=rng.random() < 0.1)
            counts["cycles"] += 1

    gc.set_threshold(100)
    sys.setswitchinterval(1e-5)
    threads = [threading.Thread(target=leaker, args=(i,), daemon=True) for i in range(3)]
    threads += [threading.Thread(target=cycler, args=(i,), daemon=True) for i in range(5)]
    threads.append(threading.Thread(target=churner, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sys.setswitchinterval(0.005)
    gc.set_threshold(700, 10, 10)
    problems = {pool.name: invariant_problems(pool, 3) for pool in pools}
    for pool in pools:
        pool.close()
    faulthandler.cancel_dump_traceback_later()
    print(json.dumps({"counts": counts, "problems": problems}))
""")


def test_cyclic_leaks_under_a_busy_collector_never_deadlock(dsn: str, figure: Figure) -> None:
    """P2: ``gc.set_threshold(100)``, threads leaking connections in reference cycles on two
    pools with short lifetimes (the scheduler busy), others checking out and in. The
    collector runs the pool's callback on whichever thread allocates, maybe one inside the
    scheduler's or a pool's lock: nothing may deadlock, and afterwards each pool hands out
    maxconn. In a process of its own: a deadlock there cannot freeze this test session
    (faulthandler prints every thread's stack and ends it)."""
    seconds, bound = 12.0, 20.0
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-c", GC_CHILD, dsn, str(seconds), str(bound)],
            capture_output=True, text=True, timeout=bound + 15, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the process did not end within {bound + 15} s:\n{exc.stderr}")
    elapsed = time.monotonic() - started
    if result.returncode != 0 or not result.stdout.strip():
        pytest.fail(f"the process failed or hung (exit {result.returncode} after {elapsed:.1f} "
                    f"s; a deadlock ends it with every thread's stack):\n"
                    f"{result.stderr[-6000:]}", pytrace=False)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    figure(f"core stress (b): {report['counts']} in {elapsed:.1f} s")
    assert report["counts"]["leaked"] > 50, report
    assert not any(report["problems"].values()), report["problems"]


# -- (c) periodic upkeep under preemption ---------------------------------------------------


#: Seconds of load: each periodic run during it may be preempted in its unlocked iteration
#: (statistical: a run or two in three hit it on a 2-CPU machine in 6 s).
LOAD_C = 10.0


def test_periodic_upkeep_survives_preemption(dsn: str, figure: Figure) -> None:
    """P5: idle pruning and lifetime retirement iterate the idle connections while
    lock-free checkouts and returns change them. Under 10 s of load with the interpreter
    switching threads at every opportunity, then quiet: the tasks must still run
    (retirements go on, the pool shrinks back to minconn)."""
    # max_lifetime below idle_timeout: in the quiet period every idle connection reaches its
    # lifetime before its idle limit, so retirements must go on (with the idle limit first,
    # pruning would take them all and the retirement count would prove nothing either way).
    pool = ConnectionPool(2, 8, dsn=dsn, timeout=2, max_lifetime=0.2, idle_timeout=0.5)
    stop = threading.Event()
    errors: list[str] = []
    samples: list[tuple[float, int]] = []

    def worker(index: int) -> None:
        tight_timer_slack()
        try:
            while not stop.is_set():
                pool.putconn(pool.getconn())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(f"worker {index}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
    with switch_interval(1e-6):
        for thread in threads:
            thread.start()
        load_end = time.monotonic() + LOAD_C
        while time.monotonic() < load_end:
            samples.append((time.monotonic(), pool.get_stats()["discarded_max_lifetime"]))
            time.sleep(0.25)
        stop.set()
        stuck = join_all(threads, time.monotonic() + 20)
    assert not stuck, f"workers still running: {stuck}\n{all_stacks()}"
    assert not errors, errors[:5]
    # Quiet now: only the background tasks can retire or prune an idle connection.
    quiet = pool.get_stats()
    time.sleep(1.5)
    after = pool.get_stats()
    retired = after["discarded_max_lifetime"] - quiet["discarded_max_lifetime"]
    pruned = after["discarded_idle_timeout"] - quiet["discarded_idle_timeout"]
    figure(f"core stress (c): retirements during the load {[n for _, n in samples]}; in the "
           f"1.5 s after it: {retired} retired, {pruned} pruned, pool_size "
           f"{quiet['pool_size']} -> {after['pool_size']}")
    assert retired >= 2, (f"no lifetime retirement in the 1.5 s after the load "
                          f"(max_lifetime=0.2): the RetireExpired task died. {after}")
    assert wait_until(lambda: pool.get_stats()["pool_size"] <= 2, 2), (
        f"idle connections beyond minconn never closed (retired at 0.2 s, else pruned at "
        f"0.5 s): the background tasks died. {pool.get_stats()}")
    problems = invariant_problems(pool, 8)
    pool.close()
    assert not problems, problems


# -- (d) a signal handler that raises at random moments ----------------------------------------


class Interrupt(KeyboardInterrupt):
    """Raised by the test's SIGUSR1 handler, as a real Ctrl-C would be."""


SIGNALS = 2000
MAXCONN_D = 2


def test_random_interrupts_from_a_signal_handler(dsn: str, figure: Figure) -> None:
    """P1 under real signals: another thread sends the main thread SIGUSR1 at random moments
    (seeded); the handler raises a KeyboardInterrupt subclass while the main thread checks out,
    queries (sometimes leaving a transaction open) and returns. The main thread catches it,
    drops what it held and goes on. Afterwards the pool hands out maxconn."""
    if not hasattr(signal, "pthread_kill"):
        pytest.skip("needs signal.pthread_kill")
    pool = ConnectionPool(1, MAXCONN_D, dsn=dsn, timeout=2)
    main = threading.main_thread().ident
    assert threading.get_ident() == main, "signal handlers run on the main thread only"
    rng = random.Random(4242)
    stop = threading.Event()
    counts = {"signals": 0, "raised": 0, "elsewhere": 0, "cycles": 0, "exhausted": 0}
    exhausted: list[str] = []

    def cycle(in_transaction: bool) -> None:
        conn = pool.getconn()
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        if not in_transaction:
            conn.rollback()
        pool.putconn(conn)

    def handler(signum: int, frame: FrameType | None) -> None:
        # Raise only inside cycle(): never in the test's own bookkeeping, so that nothing
        # escapes to pytest (a KeyboardInterrupt there would end the session).
        while frame is not None:
            if frame.f_code is cycle.__code__:
                counts["raised"] += 1
                raise Interrupt
            frame = frame.f_back
        counts["elsewhere"] += 1

    def signaler() -> None:
        for _ in range(SIGNALS):
            if stop.wait(rng.uniform(0, 0.008)):
                return
            signal.pthread_kill(main, signal.SIGUSR1)  # type: ignore[arg-type]
            counts["signals"] += 1

    previous = signal.signal(signal.SIGUSR1, handler)
    sender = threading.Thread(target=signaler, name="signaler", daemon=True)
    started = time.monotonic()
    try:
        sender.start()
        while sender.is_alive() and time.monotonic() - started < 25:
            try:
                cycle(in_transaction=counts["cycles"] % 3 == 0)
                counts["cycles"] += 1
            except Interrupt:
                gc.collect(0)  # what the interrupted cycle held is gone
            except PoolExhausted as exc:
                counts["exhausted"] += 1
                exhausted.append(str(exc))
                if counts["exhausted"] >= 3:
                    break
    finally:
        stop.set()
        sender.join(5)
        time.sleep(0.05)  # signals already sent run their handler (outside cycle: ignored)
        signal.signal(signal.SIGUSR1, previous)
    elapsed = time.monotonic() - started
    stats = pool.get_stats()
    figure(f"core stress (d): {counts} in {elapsed:.1f} s; afterwards in_use="
           f"{stats['pool_in_use']} checkouts()={len(pool.checkouts())}")
    problems = invariant_problems(pool, MAXCONN_D)
    pool.close()
    assert counts["raised"] > 100, counts
    assert not exhausted, (f"the pool ran dry with nothing checked out after "
                           f"{counts['raised']} interrupts: {exhausted[0]}")
    assert not problems, problems


# -- (e) os.fork() with queries and connects in flight ----------------------------------------

FORKS = 12
CHILD_BOUND = 5.0


@pytest.fixture
def forking_pool(dsn: str) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(4, 8, dsn=dsn, timeout=5, max_lifetime=0.4)
    yield pool
    pool.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_at_random_moments_with_queries_in_flight(forking_pool: ConnectionPool,
                                                       figure: Figure) -> None:
    """P4/P5 of the fork: 4 threads run ``SELECT pg_sleep(0.01)`` and connections are retired
    and reopened in the background (max_lifetime=0.4, some returns with close=True) while the
    main thread forks at random moments (seeded). Each child must get past ``os.fork()`` at
    once, check out, query and return in its own session, and exit; the parent's threads
    must see every query of theirs succeed (the child never touched their sessions)."""
    pool = forking_pool
    stop = threading.Event()
    errors: list[str] = []
    queries = [0] * 4

    def worker(index: int) -> None:
        rng = random.Random(3000 + index)
        while not stop.is_set():
            try:
                conn = pool.getconn()
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT pg_sleep(0.01)")
                    conn.rollback()
                finally:
                    pool.putconn(conn, close=rng.random() < 0.1)
                queries[index] += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(f"worker {index}: {type(exc).__name__}: {exc}")
                return

    threads = [threading.Thread(target=worker, args=(i,), name=f"querier-{i}", daemon=True)
               for i in range(4)]
    for thread in threads:
        thread.start()
    rng = random.Random(77)
    outcomes: list[str] = []
    hung = 0
    try:
        for _ in range(FORKS):
            time.sleep(rng.uniform(0.02, 0.2))
            outcomes.append(fork_child(pool))
            if outcomes[-1].startswith("HUNG"):
                hung += 1
                if hung >= 2:
                    break
    finally:
        stop.set()
        stuck = join_all(threads, time.monotonic() + 10)
    ok = sum(o == "ok" for o in outcomes)
    figure(f"core stress (e): {ok} of {len(outcomes)} children ok; parent queries "
           f"{sum(queries)}; {[o for o in outcomes if o != 'ok'][:3]}")
    assert not stuck, f"parent threads stuck: {stuck}\n{all_stacks()}"
    assert not errors, f"the parent's sessions were disturbed: {errors[:5]}"
    bad = [o for o in outcomes if o != "ok"]
    assert not bad, f"{len(bad)} of {len(outcomes)} children failed: {bad[:4]}"
    problems = invariant_problems(pool, 8)
    assert not problems, problems


def fork_child(pool: ConnectionPool) -> str:
    """Fork; the child checks out, queries, returns, exits. "ok", or what went wrong."""
    read_end, write_end = os.pipe()
    forked = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            took = time.monotonic() - forked
            conn = pool.getconn(timeout=3)
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.rollback()
            pool.putconn(conn)
            message = "ok" if took < 1.0 else f"os.fork() took {took:.2f} s in the child"
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported through the pipe
            message = f"child: {type(exc).__name__}: {exc}"
        finally:
            try:
                os.write(write_end, message.encode()[:4000])
            finally:
                os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + CHILD_BOUND
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        return f"HUNG: the child did not exit within {CHILD_BOUND} s (killed)"
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode() or f"no report (exit status {status})"
    return message
