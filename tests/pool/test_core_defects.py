"""Issue 23: the core's defects under preemption, interruption, garbage collection and fork.

One test (or a few) per defect of the issue's table (P1..P8, Q1..Q4), per item it suspected
(a connection made idle after a concurrent ``close()``, a caller that queues on a closed pool,
the ``IndexError`` out of ``_take_one_idle``, the lock re-acquired by a bare ``acquire()``),
and for the ``maxconn + 1`` server sessions it observed. Each failed on the code the issue
was filed against, for the reason the issue gives, and is written to pass once the defect is
fixed whatever the fix looks like inside: the tests look at what a user sees (getconn,
putconn, close, ``get_stats()``, ``checkouts()``, the server's ``pg_stat_activity``, psycopg2's
errors, the log) and touch a private attribute only where nothing public can set the scene
or show the defect (each such place says so).

Races are driven, not hoped for:

- :func:`interleave` runs a call on a thread that is *traced*: it stops before its k-th line
  of the pool's code, another call runs to completion (or until it blocks), then the first
  goes on. Trying every k walks every point of the call: a deterministic search of the
  interleavings of two calls, bounded by the length of the path.
- interruptions are real signals (SIGUSR1, whose handler raises) sent to the main thread
  while it is blocked at the exact point (a ``reset`` that sleeps, a rollback whose backend
  is stopped with SIGSTOP, a lock held by another thread), or a ``BaseException`` raised by
  the pool's own callbacks (listeners, ``reset``).
- a garbage collection runs at the exact point (an explicit ``gc.collect()`` while the
  thread holds the scheduler's lock), on a thread joined with a timeout.
- the pool's background threads, traced from their first line in a fresh interpreter, let
  the callers check a connection out and in before each of their lines (P5).
- forks are checked in a child that reports through its exit status; the parent kills a
  child that has not exited after a few seconds, so a hang fails the test.

None depends on luck, and each is bounded in time (seconds).

After every test that interrupts something, :func:`assert_pool_whole` checks the invariant of
the issue: the pool can hand out ``maxconn`` connections at once and ``get_stats()``
balances (``pool_size == pool_available + pool_in_use + pool_opening``, and ``pool_in_use``
is what ``checkouts()`` lists).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic
from typing import Any, ClassVar

import psycopg2
import psycopg2.extensions
import pytest

import psycopg2_pool
from psycopg2_pool import (
    ConnectionPool,
    PoolClosed,
    PoolExhausted,
    ServerUnavailable,
    check_connection,
)
from psycopg2_pool.scheduler import SCHEDULER
from tests.support.faults import Proxy
from tests.support.pools import MakePool, settled_backend_count, wait_until

#: Where the pool's code lives: the tracer of :func:`interleave` stops in these files only.
PACKAGE_DIR = str(Path(psycopg2_pool.__file__).resolve().parent) + os.sep
ROOT = Path(__file__).resolve().parents[2]

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


# -- the invariant ---------------------------------------------------------------------------


def assert_pool_whole(pool: ConnectionPool, *, timeout: float = 1.0) -> None:
    """No slot lost: ``get_stats()`` balances, every connection counted in use is one that
    ``checkouts()`` lists, and the pool hands out ``maxconn`` connections at once.

    Connections the test dropped are given back by the garbage collector: collect first.
    """
    gc.collect()
    stats = pool.get_stats()
    listed = len(pool.checkouts())
    size, available = stats["pool_size"], stats["pool_available"]
    in_use, opening = stats["pool_in_use"], stats["pool_opening"]
    assert size == available + in_use + opening, f"get_stats() does not balance: {stats}"
    assert in_use == listed, (
        f"a slot was lost: pool_in_use={in_use} but checkouts() lists {listed} "
        f"(pool_size={size}, pool_available={available}, pool_opening={opening})")
    conns: list[Any] = []
    try:
        for _ in range(int(pool.maxconn)):
            try:
                conns.append(pool.getconn(timeout=timeout))
            except psycopg2.OperationalError as exc:
                pytest.fail(f"a slot was lost: the pool handed out {len(conns)} connection(s) "
                            f"at once, not maxconn={pool.maxconn:g}: {type(exc).__name__}: "
                            f"{exc} ({pool.get_stats()})", pytrace=False)
        for conn in conns:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.rollback()
    finally:
        for conn in conns:
            pool.putconn(conn)
    stats = pool.get_stats()
    assert stats["pool_size"] == (stats["pool_available"] + stats["pool_in_use"]
                                  + stats["pool_opening"]), stats


# -- driving races: a traced call stopped before its k-th line -------------------------------


@dataclass
class Outcome:
    """What a call returned, or raised."""

    value: Any = None
    error: BaseException | None = None


@dataclass
class Interleaving:
    reached: bool  #: the victim got to its k-th line and stopped there for the intruder
    where: str  #: that line, as function:line of the pool's code
    victim: Outcome = field(default_factory=Outcome)
    intruder: Outcome = field(default_factory=Outcome)


def interleave(victim: Callable[[], Any], intruder: Callable[[], Any], k: int, *,
               grace: float = 0.05, stall: float = 0.05, limit: float = 10.0) -> Interleaving:
    """Run ``victim`` on a thread that stops before its ``k``-th line of the pool's code; run
    ``intruder`` on another thread, give it ``grace`` seconds (it may block on a lock the
    victim holds), then let the victim go on, and wait for both.

    If the victim blocks (in C: waiting for a connection, a lock) for ``stall`` seconds before
    its ``k``-th line, or finishes first, the intruder runs then: ``reached`` says which.
    """
    paused = threading.Event()
    go_on = threading.Event()
    intruded = threading.Event()
    lines = [0]
    where = [""]
    result = Interleaving(False, "")

    def local(frame: types.FrameType, event: str, arg: Any) -> Any:
        if event == "line" and not intruded.is_set():
            lines[0] += 1
            if lines[0] == k:
                where[0] = f"{frame.f_code.co_name}:{frame.f_lineno}"
                paused.set()
                go_on.wait(limit)
        return local

    def tracer(frame: types.FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename.startswith(PACKAGE_DIR) else None

    def run(call: Callable[[], Any], outcome: Outcome, traced: bool) -> None:
        if traced:
            sys.settrace(tracer)
        try:
            outcome.value = call()
        except BaseException as exc:  # noqa: BLE001 - judged by the test
            outcome.error = exc
        finally:
            if traced:
                sys.settrace(None)

    victim_thread = threading.Thread(target=run, args=(victim, result.victim, True),
                                     daemon=True)
    victim_thread.start()
    last, since = -1, monotonic()
    while not paused.is_set() and victim_thread.is_alive():
        now = monotonic()
        if lines[0] != last:
            last, since = lines[0], now
        elif now - since >= stall:
            break  # blocked before its k-th line: the intruder runs now
        time.sleep(0.002)
    intruded.set()
    result.reached = paused.is_set()
    result.where = where[0]
    intruder_thread = threading.Thread(target=run, args=(intruder, result.intruder, False),
                                       daemon=True)
    intruder_thread.start()
    intruder_thread.join(grace)
    go_on.set()
    intruder_thread.join(limit)
    victim_thread.join(limit)
    assert not intruder_thread.is_alive() and not victim_thread.is_alive(), (
        f"a call did not return within {limit} s (k={k}, at {result.where or 'no pause'})")
    return result


def steps(max_steps: int = 400, seconds: float = 12.0) -> Iterator[int]:
    """k = 1, 2, ...: bounded by a number of steps and by time (the test then stops)."""
    deadline = monotonic() + seconds
    for k in range(1, max_steps + 1):
        if monotonic() > deadline:
            return
        yield k


# -- signals, forks, the server ---------------------------------------------------------------


@contextlib.contextmanager
def raising_on(sig: int, handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Install ``handler`` for ``sig`` (main thread only), restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread: the test must run there")
    old = signal.signal(sig, handler)
    try:
        yield
    finally:
        signal.signal(sig, old)


def interrupt_main() -> None:
    """Deliver SIGUSR1 to the main thread (from a helper thread)."""
    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)  # type: ignore[arg-type]


def keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum} (test)")


def fork_child(body: Callable[[], tuple[int, str]], *, timeout: float = 5.0,
               in_parent: Callable[[], None] | None = None) -> tuple[int | None, str]:
    """Fork; the child runs ``body()`` -> (exit code, message) and leaves with ``os._exit``.
    The parent runs ``in_parent()`` then waits ``timeout`` seconds at most: (the child's exit
    code, its message), or (None, ...) when it had to kill a child that hung."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code, message = 70, "the child did not finish its check"
        try:
            os.close(read_fd)
            code, message = body()
        except BaseException as exc:  # noqa: BLE001 - reported through the pipe
            message = f"the child raised {type(exc).__name__}: {exc}"
        finally:
            try:
                os.write(write_fd, message.encode()[:3000])
            finally:
                os._exit(code)
    os.close(write_fd)
    try:
        if in_parent is not None:
            in_parent()
        deadline = monotonic() + timeout
        while monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status), os.read(read_fd, 4000).decode()
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None, f"the child was still running after {timeout:g} s: killed"
    finally:
        os.close(read_fd)


def local_backend(conn: Any) -> int:
    """The pid of the connection's server process, when that process is on this machine."""
    pid = int(conn.info.backend_pid)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        pytest.skip("the server's processes are not on this machine")
    if b"postgres" not in cmdline:
        pytest.skip("the server's processes are not on this machine")
    return pid


def query_running(admin: Any, backend_pid: int) -> bool:
    with admin.cursor() as cur:
        cur.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (backend_pid,))
        row = cur.fetchone()
    return row is not None and row[0] == "active"


def terminate(admin: Any, conn: Any) -> None:
    """End a connection's server session, and wait until the server has let it go."""
    pid = conn.info.backend_pid
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))

    def gone() -> bool:
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            return bool(cur.fetchone()[0] == 0)

    assert wait_until(gone), f"backend {pid} did not exit"


@pytest.fixture
def hung_proxy(dsn: str) -> Iterator[Proxy]:
    """A loopback TCP proxy to the session's server that can stop answering (``hang()``)."""
    info = psycopg2.extensions.parse_dsn(dsn)
    host = info.get("host", "")
    if not host.startswith("/"):
        pytest.skip("the proxy forwards to the server's unix socket")
    target = types.SimpleNamespace(
        socket_path=str(Path(host) / f".s.PGSQL.{info.get('port', 5432)}"),
        user=info.get("user", "postgres"), dbname=info.get("dbname", "postgres"))
    proxy = Proxy(target)  # type: ignore[arg-type]  # it reads these three fields only
    yield proxy
    proxy.close()


class Once:
    """Raises ``error`` the first time it is called (then does nothing)."""

    def __init__(self, error: BaseException) -> None:
        self.error: BaseException | None = error

    def __call__(self, *args: Any) -> None:
        error, self.error = self.error, None
        if error is not None:
            raise error


# -- P1: an interrupted putconn loses its slot -----------------------------------------------


class CheckinRaises:
    def __init__(self, error: BaseException) -> None:
        self.on_checkin = Once(error)


class CheckinFieldsRaises:
    def __init__(self, error: BaseException) -> None:
        self.on_checkin_fields = Once(error)


P1_POINTS = ["checkin-listener", "checkin-fields-listener", "checkin-listener-after-rollback",
             "reset-raises", "signal-during-reset", "signal-during-rollback"]


@pytest.mark.parametrize("where", P1_POINTS)
def test_p1_interrupted_putconn_loses_no_slot(make_pool: MakePool, where: str) -> None:
    """P1: a BaseException (KeyboardInterrupt, SystemExit) raised while putconn runs, from a
    checkin listener, from ``reset``, or by a signal handler while ``reset`` or the rollback
    of a connection returned inside a transaction runs. Today putconn has already popped the
    connection's record: the slot is neither idle nor checked out, for good."""
    kwargs: dict[str, Any] = {}
    entered = threading.Event()
    if where == "reset-raises":
        kwargs["reset"] = Once(KeyboardInterrupt("in reset (test)"))
    elif where == "signal-during-reset":
        def reset(conn: Any) -> None:
            if not entered.is_set():
                entered.set()
                time.sleep(1.0)  # interrupted by the signal
        kwargs["reset"] = reset
    pool = make_pool(2, 2, **kwargs)
    if where == "checkin-listener":
        pool.add_listener(CheckinRaises(KeyboardInterrupt("in on_checkin (test)")))
    elif where == "checkin-fields-listener":
        pool.add_listener(CheckinFieldsRaises(SystemExit("in on_checkin_fields (test)")))
    elif where == "checkin-listener-after-rollback":
        pool.add_listener(CheckinRaises(KeyboardInterrupt("in on_checkin (test)")))

    conn = pool.getconn()
    if where in ("checkin-listener-after-rollback", "signal-during-rollback"):
        with conn.cursor() as cur:
            cur.execute("SELECT 1")  # returned inside a transaction: putconn rolls it back
    helper: threading.Thread | None = None
    if where == "signal-during-reset":
        def signal_in_reset() -> None:
            if entered.wait(5):
                interrupt_main()
        helper = threading.Thread(target=signal_in_reset, daemon=True)
    elif where == "signal-during-rollback":
        backend = local_backend(conn)
        os.kill(backend, signal.SIGSTOP)  # the ROLLBACK blocks until SIGCONT

        def signal_in_rollback() -> None:
            try:
                time.sleep(0.2)  # putconn is blocked in the rollback by now
                interrupt_main()  # handled as soon as the rollback returns
                time.sleep(0.05)
            finally:
                os.kill(backend, signal.SIGCONT)
        helper = threading.Thread(target=signal_in_rollback, daemon=True)

    interrupted: list[str] = []
    with raising_on(signal.SIGUSR1, keyboard_interrupt):
        try:
            if helper is not None:
                helper.start()
            pool.putconn(conn)
            if helper is not None:
                helper.join(5)  # a signal that came late lands here, still in this try
                time.sleep(0.05)
        except (KeyboardInterrupt, SystemExit) as exc:
            interrupted.append(type(exc).__name__)
        finally:
            if helper is not None:
                helper.join(5)
    del conn  # whatever putconn did with it: the test no longer holds it
    assert interrupted, "the injected interruption did not reach the caller"
    assert_pool_whole(pool)


# -- P2: a garbage-collected connection's callback takes the scheduler's lock ----------------


def test_p2_collecting_a_leaked_connection_under_the_scheduler_lock_does_not_deadlock(
        make_pool: MakePool) -> None:
    """P2: the GC runs ``_connection_collected`` on whatever thread allocates, here one that
    holds the scheduler's lock inside ``call_at``; freeing the slot schedules a refill, which
    takes that lock again: the thread deadlocks, and with it every pool in the process.

    The collection is made to happen at that point: an explicit ``gc.collect()`` on a thread
    that holds the scheduler's lock (private: no public call holds it while the GC runs).
    A thread that deadlocks is rescued (the lock released for it) so that the rest of the
    session can go on, and the test fails."""
    lock = getattr(SCHEDULER, "_lock", None)
    if lock is None:
        pytest.fail("the scheduler has no _lock any more: hold the lock its call_at takes")
    pool = make_pool(1, 2)  # minconn=1: giving the slot back schedules a refill
    was_enabled = gc.isenabled()
    gc.disable()  # the leak is collected by the explicit collection, not by chance earlier
    guard = threading.Lock()
    state = {"done": False, "rescued": False}

    def collect_holding_the_scheduler_lock() -> None:
        lock.acquire()
        try:
            gc.collect()
        finally:
            with guard:
                state["done"] = True
                if not state["rescued"]:
                    lock.release()

    try:
        conn = pool.getconn()
        cycle: list[Any] = [conn]
        cycle.append(cycle)  # leaked in a reference cycle: only the collector frees it
        del conn, cycle
        collector = threading.Thread(target=collect_holding_the_scheduler_lock, daemon=True)
        collector.start()
        collector.join(2)
        deadlocked = collector.is_alive()
        if deadlocked:
            with guard:
                if not state["done"]:
                    state["rescued"] = True
                    lock.release()  # let the stuck thread take it, finish, and go
            collector.join(5)
    finally:
        if was_enabled:
            gc.enable()
    assert not deadlocked, ("a connection collected while the thread held the scheduler's "
                            "lock deadlocked that thread (the GC callback took the lock again)")
    assert_pool_whole(pool)


# -- P3: the lost wake-up ---------------------------------------------------------------------


def test_p3_a_return_during_a_checkout_is_never_lost(make_pool: MakePool) -> None:
    """P3: getconn finds no idle connection and queues; a lock-free putconn between the two
    makes the connection idle after the check and sees no waiter before the queueing: the
    caller waits with ``pool_available=1`` and times out with PoolExhausted.

    Every point of the waiting getconn is tried: stopped before its k-th line, the
    connection is returned, then getconn goes on; it must get the connection."""
    pool = make_pool(1, 1)

    held: list[Any] = []

    def checkout() -> Any:
        return pool.getconn(timeout=0.5)

    def give_back() -> None:
        pool.putconn(held.pop())

    for k in steps():
        held.append(pool.getconn())
        run = interleave(checkout, give_back, k)
        assert run.intruder.error is None, run.intruder.error
        if run.victim.error is not None:
            stats = pool.get_stats()
            pytest.fail(f"getconn raised {type(run.victim.error).__name__} although the "
                        f"connection was returned while it ran (returned before line "
                        f"{run.where} of the pool's code; now pool_available="
                        f"{stats['pool_available']}): {run.victim.error}", pytrace=False)
        pool.putconn(run.victim.value)
        if not run.reached:
            break
    assert_pool_whole(pool)


# -- P4: a fork with a query in flight ---------------------------------------------------------


@needs_fork
def test_p4_fork_while_another_thread_queries_does_not_hang_the_child(
        make_pool: MakePool, admin: Any) -> None:
    """P4: the child's fork handler closes the inherited connections; one that a thread of
    the parent is querying on has psycopg2's connection mutex held at the fork, never
    released in the child: the child hangs inside ``os.fork()``."""
    pool = make_pool(1, 3)
    conn = pool.getconn()
    errors: list[BaseException] = []

    def query() -> None:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_sleep(30)")
        except psycopg2.Error as exc:
            errors.append(exc)

    querying = threading.Thread(target=query, daemon=True)
    querying.start()
    try:
        assert wait_until(lambda: query_running(admin, conn.info.backend_pid)), \
            "the query did not start"

        def child() -> tuple[int, str]:
            other = pool.getconn(timeout=3)  # the child's own connection
            with other.cursor() as cur:
                cur.execute("SELECT 1")
            pool.putconn(other)
            return 0, ""

        code, message = fork_child(child, timeout=5)
    finally:
        conn.cancel()
        querying.join(10)
    assert errors and isinstance(errors[0], psycopg2.extensions.QueryCanceledError), errors
    conn.rollback()
    pool.putconn(conn)
    assert code == 0, f"os.fork() with a query in flight in another thread: {message}"
    assert_pool_whole(pool)


# -- P5: a periodic task dies of a concurrent change of the idle connections -------------------


#: Run in a fresh interpreter, so that every thread the pool starts (its background workers)
#: is traced from its first line. Before each line of the pool's code a background thread
#: lets the callers check a connection out and in (it waits, 2 ms at most, until one did):
#: as if preempted at every line, which a thread may be at any backward jump. The callers
#: run untraced, at full speed. Exit status 0: retirement still ran after the load.
P5_SCRIPT = r"""
import logging, os, sys, threading, time
logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
import psycopg2_pool
from psycopg2_pool import ConnectionPool

PACKAGE = os.path.dirname(os.path.abspath(psycopg2_pool.__file__)) + os.sep
stop = threading.Event()
cycles = [0]  # checkouts and returns done by the callers


def line(frame, event, arg):
    if event == "line" and not stop.is_set():
        seen, deadline = cycles[0], time.monotonic() + 0.002
        while cycles[0] == seen and time.monotonic() < deadline:
            time.sleep(0)  # the callers check a connection out and in before the next line
    return line


def call(frame, event, arg):
    return line if frame.f_code.co_filename.startswith(PACKAGE) else None


threading.settrace(call)
sys.setswitchinterval(1e-4)
# The first retirement runs 0.45 s after the pool starts (0.9 x max_lifetime), before any
# connection expires: they are opened 0.2 s after the start, so that the callers, which
# check them out and in while it runs, never wait for one then.
pool = ConnectionPool(0, 8, dsn=sys.argv[1], idle_timeout=None, max_lifetime=0.5, timeout=5)
time.sleep(0.2)
opened = [pool.getconn(timeout=0) for _ in range(8)]
for conn in opened:
    pool.putconn(conn)
del opened, conn
errors = []
failed = []


class Failures(logging.Handler):
    def emit(self, record):
        if "retire_expired" in record.getMessage():
            failed.append(record)


logging.getLogger("psycopg2_pool").addHandler(Failures())


def churn():
    sys.settrace(None)  # the callers run untraced
    try:
        while not stop.is_set():
            pool.putconn(pool.getconn())
            cycles[0] += 1
    except BaseException as exc:
        errors.append(repr(exc))


threads = [threading.Thread(target=churn) for _ in range(3)]
for thread in threads:
    thread.start()
deadline = time.monotonic() + 1.0
while time.monotonic() < deadline and not failed:  # (today: dead at its first run)
    time.sleep(0.01)
stop.set()
for thread in threads:
    thread.join(10)
print("package:", psycopg2_pool.__file__)
if errors:
    print("callers failed:", errors)
    sys.exit(2)
# Every connection reaches its lifetime within 0.5 s of its creation: retirement must go on.
before = pool.get_stats()["discarded_max_lifetime"]
deadline = time.monotonic() + 1.5
while pool.get_stats()["discarded_max_lifetime"] == before and time.monotonic() < deadline:
    time.sleep(0.01)
retired = pool.get_stats()["discarded_max_lifetime"] - before
print("retired after the load:", retired)
pool.close()
sys.exit(0 if retired else 1)
"""


def test_p5_periodic_upkeep_survives_concurrent_checkouts(dsn: str) -> None:
    """P5: RetireExpired reads ``idle_connections`` while lock-free getconn and putconn
    change it (``deque mutated during iteration``); a task that raises is not scheduled
    again, the pool never retires a connection any more, and the log says "upkeep goes on".

    The background threads are preempted at every line of the pool's code (see
    :data:`P5_SCRIPT`) while callers check connections out and in; afterwards retirement
    must still run."""
    result = subprocess.run([sys.executable, "-c", P5_SCRIPT, dsn], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr)[-3000:]
    assert f"package: {ROOT}" in result.stdout, output
    assert result.returncode == 0, f"lifetime retirement stopped for good:\n{output}"


# -- P6: a fork during a background connect ----------------------------------------------------


@needs_fork
def test_p6_a_fork_during_a_connect_does_not_inherit_the_attempt(
        make_pool: MakePool, hung_proxy: Proxy) -> None:
    """P6: the child inherits the parent's record of a connection attempt in progress (that
    will never end in the child): an exhausted child then blames the server, ``ServerUnavailable
    ... has not answered a connection attempt for ... s``, where the right answer (the one
    a parent in the same state gives) is PoolExhausted."""
    hung_proxy.hang()
    pool = make_pool(0, 1, dsn=hung_proxy.dsn(connect_timeout=10))
    with pytest.raises(PoolExhausted):  # starts an attempt, which hangs, in the background
        pool.getconn(timeout=0.05)
    assert wait_until(lambda: len(hung_proxy._held) == 1), "no connection attempt in flight"
    time.sleep(0.1)
    go_read, go_write = os.pipe()

    def child() -> tuple[int, str]:
        os.read(go_read, 1)  # the parent's proxy answers again
        mine = pool.getconn(timeout=3)  # the child's only connection (maxconn=1)
        try:
            pool.getconn(timeout=0.3)
        except PoolExhausted:
            return 0, ""
        except ServerUnavailable as exc:
            return 1, f"ServerUnavailable: {exc}"
        finally:
            pool.putconn(mine)
        return 2, "a second connection with maxconn=1"

    def resume() -> None:
        hung_proxy.resume()
        os.write(go_write, b"x")

    try:
        code, message = fork_child(child, timeout=5, in_parent=resume)
    finally:
        os.close(go_read)
        os.close(go_write)
    assert code == 0, f"the forked child, whose only connection was checked out: {message}"


# -- P7: a connection the watchdog shut down is kept -------------------------------------------


def test_p7_a_check_that_outlives_io_timeout_discards_the_connection(
        make_pool: MakePool) -> None:
    """P7: the health check's round trip completed but the call outlived ``io_timeout``: the
    watchdog shut the socket down, logged that the connection "will be discarded", and the
    checkout handed it out anyway (its status still reads IDLE); the next query fails."""
    slow = [True]

    def check(conn: Any) -> None:
        check_connection(conn)
        if slow[0]:
            slow[0] = False
            time.sleep(0.4)  # past io_timeout: the watchdog shuts the socket down

    pool = make_pool(1, 2, check=check, io_timeout=0.1, timeout=2)
    assert_next_checkout_answers(pool)


def assert_next_checkout_answers(pool: ConnectionPool) -> None:
    """The next connection handed out runs a query (not one the watchdog shut down), and
    the pool is whole afterwards."""
    conn = pool.getconn()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        conn.rollback()
    finally:
        pool.putconn(conn)
    assert_pool_whole(pool)


def test_p7_a_reset_that_outlives_io_timeout_discards_the_connection(
        make_pool: MakePool) -> None:
    """P7: the same with ``reset`` on return: the connection, shut down by the watchdog, is
    kept idle and handed to the next caller, whose query fails."""
    slow = [True]

    def reset(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.commit()
        if slow[0]:
            slow[0] = False
            time.sleep(0.4)

    pool = make_pool(1, 1, reset=reset, io_timeout=0.1, timeout=2)
    pool.putconn(pool.getconn())  # reset outlives io_timeout
    assert_next_checkout_answers(pool)


# -- P8: a task raising a BaseException kills a scheduler worker uncounted ---------------------


class _Task:
    """A background task of the test's own (the scheduler's Task protocol)."""

    name = "test_task"

    def __init__(self, pool: ConnectionPool, error: BaseException | None,
                 armed: threading.Event) -> None:
        self.pool_ref = weakref.ref(pool)
        self.error = error
        self.armed = armed
        self.ran = threading.Event()

    def run(self) -> None:
        self.ran.set()
        if self.error is not None and self.armed.is_set():
            raise self.error


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_p8_a_task_raising_keyboardinterrupt_does_not_stop_the_scheduler(
        make_pool: MakePool) -> None:
    """P8: a task raising a BaseException ends its worker thread without uncounting it; once
    the count reaches the scheduler's maximum with no thread alive, no task of any pool runs
    any more (background opens, pruning, retiring).

    Tasks raising KeyboardInterrupt are scheduled one after the other, more than the
    scheduler has workers; each must run, and so must a plain task afterwards."""
    pool = make_pool(0, 1)
    armed = threading.Event()
    armed.set()
    stuck: _Task | None = None
    try:
        for _ in range(SCHEDULER.max_workers + 2):
            task = _Task(pool, KeyboardInterrupt("in a task (test)"), armed)
            SCHEDULER.call_soon(task)
            if not task.ran.wait(1.5):
                stuck = task
                break
        if stuck is None:
            probe = _Task(pool, None, armed)
            SCHEDULER.call_soon(probe)
            if not probe.ran.wait(1.5):
                stuck = probe
    finally:
        armed.clear()  # a task still queued runs harmlessly once a worker takes it
        if stuck is not None:
            _repair_scheduler(pool)
    assert stuck is None, ("a task was never run: the scheduler counts workers that "
                           "tasks raising KeyboardInterrupt killed")
    with pool.connection(timeout=2) as conn, conn.cursor() as cur:  # a background open
        cur.execute("SELECT 1")


def _repair_scheduler(pool: ConnectionPool) -> None:
    """Undo P8's damage for the rest of the session: count only the workers alive (private:
    today's worker count and thread name), then run a task, which starts one if none is."""
    alive = sum(1 for t in threading.enumerate()
                if t.name == "psycopg2_pool-upkeep" and t.is_alive())
    with SCHEDULER._lock:
        SCHEDULER._workers = alive
    task = _Task(pool, None, threading.Event())
    SCHEDULER.call_soon(task)
    assert task.ran.wait(5), "the scheduler could not be repaired"


# -- Q1: a caller that waited gets no health check ---------------------------------------------


def test_q1_a_check_that_always_fails_never_hands_out_a_connection(
        make_pool: MakePool) -> None:
    """Q1 (psycopg_pool's test_check_timeout): with a ``check`` that rejects every connection,
    a connection opened in the background for a waiting caller is handed to it unchecked.
    Every checkout must be checked: getconn fails after its timeout."""
    checked: list[int] = []

    def check(conn: Any) -> None:
        checked.append(id(conn))
        raise psycopg2.OperationalError("rejected by the test's check")

    pool = make_pool(1, 1, check=check)
    started = monotonic()
    with pytest.raises(psycopg2.OperationalError):
        conn = pool.getconn(timeout=0.5)
        pytest.fail(f"getconn returned a connection the check rejects, after "
                    f"{monotonic() - started:.3f} s (checked: {len(checked)} time(s), "
                    f"this one {'was' if id(conn) in checked else 'was not'})",
                    pytrace=False)


def test_q1_a_connection_handed_to_a_waiter_is_checked(make_pool: MakePool,
                                                        admin: Any) -> None:
    """Q1 (psycopg_pool's test_check_returns_an_ok_connection): a connection returned while
    someone waits goes straight to the waiter, without the check that ``check`` promises on
    every checkout: a connection whose session is gone reaches the caller."""
    pool = make_pool(1, 1, check=check_connection)
    held = pool.getconn()
    got: list[Any] = []
    errors: list[BaseException] = []

    def wait_for_one() -> None:
        try:
            conn = pool.getconn(timeout=5)
            got.append(conn)
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.rollback()
        except psycopg2.Error as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait_for_one, daemon=True)
    waiter.start()
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    terminate(admin, held)  # the session ends while it is checked out; psycopg2 cannot know
    pool.putconn(held)
    waiter.join(10)
    assert not waiter.is_alive()
    for conn in got:
        pool.putconn(conn)
    assert not errors, (f"the waiter was handed a connection the check would have rejected: "
                        f"{errors[0]!r}")
    assert_pool_whole(pool)


# -- Q2: check_connection hides the real error -------------------------------------------------


def test_q2_check_connection_raises_the_real_error(dsn: str, admin: Any) -> None:
    """Q2 (psycopg_pool's test_check_connection): on a connection whose session is gone,
    ``check_connection`` restores ``autocommit`` on a connection psycopg2 has just closed and
    raises ``InterfaceError('connection already closed')`` instead of the OperationalError."""
    conn = psycopg2.connect(dsn)
    try:
        check_connection(conn)  # a live one passes
        terminate(admin, conn)
        with pytest.raises(psycopg2.OperationalError):
            check_connection(conn)
    finally:
        conn.close()


# -- Q3: a returned connection keeps its pool alive --------------------------------------------


def test_q3_a_returned_connection_does_not_keep_its_pool_alive(
        dsn: str, admin: Any, app_name: str) -> None:
    """Q3 (psycopg_pool's test_del_no_warning): a returned connection keeps ``conn._pool``:
    whoever holds it keeps a pool that was never closed, and its idle sessions, alive."""

    def returned_connection() -> tuple[Any, weakref.ref[ConnectionPool]]:
        pool = ConnectionPool(2, 2, dsn=dsn, application_name=app_name)
        conn = pool.getconn()
        pool.putconn(conn)
        return conn, weakref.ref(pool)

    conn, pool_ref = returned_connection()
    try:
        gc.collect()
        assert pool_ref() is None, "the pool is still alive: the returned connection holds it"
        # The pool's other idle session went with it; only the connection held here is left.
        assert settled_backend_count(admin, app_name, 1) == 1
    finally:
        pool = pool_ref()
        if pool is not None:
            pool.close()
        del pool
        conn.close()


# -- Q4: a failing reset is reported without its message ---------------------------------------


def test_q4_a_failing_reset_is_reported_with_its_message_and_traceback(
        make_pool: MakePool, caplog: pytest.LogCaptureFixture) -> None:
    """Q4 (psycopg_pool's test_reset_broken): the warning says only "raised SyntaxError"."""

    def reset(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SELEC 1")

    pool = make_pool(1, 1, reset=reset)
    caplog.set_level(logging.WARNING, logger="psycopg2_pool")
    pool.putconn(pool.getconn())
    records = [r for r in caplog.records if r.name.startswith("psycopg2_pool")
               and r.levelno >= logging.WARNING and "reset" in r.getMessage()]
    assert records, caplog.text
    assert any('syntax error at or near "SELEC"' in r.getMessage() for r in records), \
        f"the reset failure is reported without the error's message: {caplog.text}"
    assert any(r.exc_info is not None for r in records), \
        f"the reset failure is reported without its traceback: {caplog.text}"
    assert pool.get_stats()["discarded_failed_reset"] == 1
    assert_pool_whole(pool)


# -- suspected: a connection made idle after a concurrent close() -----------------------------


def test_suspected_a_waiter_interrupted_after_hand_over_leaves_nothing_open_after_close(
        make_pool: MakePool, admin: Any, app_name: str) -> None:
    """Suspected, confirmed: a waiter is handed a connection, the pool is closed, then the
    waiter is interrupted before it returns. Its ``except BaseException`` passes the
    connection on to the idle connections without looking at ``_closed``: it stays idle in a
    closed pool, its server session open for good.

    The handler of the signal that interrupts the waiting getconn (main thread) does the
    three steps in order: return the connection (another thread), close the pool (another
    thread), raise KeyboardInterrupt."""
    pool = make_pool(1, 1, application_name=app_name)
    held = pool.getconn()
    steps_done: list[str] = []

    def handler(signum: int, frame: Any) -> None:
        for name, call in (("putconn", lambda: pool.putconn(held)), ("close", pool.close)):
            thread = threading.Thread(target=call, daemon=True)
            thread.start()
            thread.join(5)
            if not thread.is_alive():
                steps_done.append(name)
        raise KeyboardInterrupt("after the hand-over and close() (test)")

    def interrupt_when_waiting() -> None:
        if wait_until(lambda: pool.get_stats()["requests_waiting"] == 1):
            interrupt_main()

    helper = threading.Thread(target=interrupt_when_waiting, daemon=True)
    with raising_on(signal.SIGUSR1, handler):
        helper.start()
        try:
            got = pool.getconn(timeout=5)
        except (KeyboardInterrupt, PoolClosed):
            pass
        else:
            pool.putconn(got)
        finally:
            helper.join(5)
    assert steps_done == ["putconn", "close"], steps_done
    assert settled_backend_count(admin, app_name, 0, timeout=2) == 0, (
        "a server session of the closed pool is still open: the connection handed to the "
        "interrupted waiter was made idle after close()")


# -- suspected: a caller queues on a pool closed meanwhile ------------------------------------


class CloseOnCollected:
    """Closes the pool when it announces a garbage-collected connection."""

    def __init__(self) -> None:
        self.closed_it = False

    def on_discard(self, event: Any) -> None:
        if event.reason == "garbage_collected" and not self.closed_it:
            self.closed_it = True
            event.pool.close()


def test_suspected_a_caller_that_queues_on_a_pool_closed_meanwhile_gets_poolclosed(
        make_pool: MakePool) -> None:
    """Suspected, confirmed: getconn checks ``_closed``, then gives back the slots of
    collected connections, which releases the lock around the discard listeners; ``close()``
    runs there (here: from the listener), and the caller then queues on a closed pool and
    times out with PoolExhausted instead of PoolClosed.

    Setting the scene needs a connection collected while the pool's lock is held, so that
    its slot waits for the next caller: the test holds ``pool._lock`` (private) while it
    drops the connection."""
    pool = make_pool(0, 2)
    listener = CloseOnCollected()
    pool.add_listener(listener)
    kept = pool.getconn()
    dropped = pool.getconn()
    with pool._lock:  # private: the only way to have a collected connection's slot queued
        del dropped
    started = monotonic()
    try:
        with pytest.raises(PoolClosed):
            pool.getconn(timeout=0.5)
    finally:
        pool.putconn(kept)
    assert listener.closed_it
    assert monotonic() - started < 0.4, "the caller waited on a closed pool"


# -- suspected: IndexError out of _take_one_idle ------------------------------------------------


@pytest.mark.slow  # walks every point, ~3 s
def test_suspected_a_concurrent_checkout_never_makes_getconn_pop_an_empty_deque(
        make_pool: MakePool) -> None:
    """Suspected (seen once under stress), confirmed: getconn's slow path sees an idle
    connection under the lock, then pops it; a lock-free getconn takes it in between and
    the slow path raises ``IndexError: pop from an empty deque``.

    The slow path is reached as in production: the newest idle connection fails its check
    and is discarded, leaving one idle. Every point of that getconn is tried: stopped before
    its k-th line, another getconn runs, then the first goes on; both must get a
    connection."""
    bad: list[Any] = []

    def check(conn: Any) -> None:
        if bad and conn is bad[0]:
            raise psycopg2.OperationalError("rejected by the test's check")

    pool = make_pool(0, 2, check=check, timeout=2)
    for k in steps():
        older, newer = pool.getconn(), pool.getconn()
        pool.putconn(older)
        pool.putconn(newer)  # idle: [older, newer]; newer is taken first and fails its check
        bad[:] = [newer]
        del older, newer
        run = interleave(pool.getconn, pool.getconn, k)
        bad.clear()
        for outcome in (run.victim, run.intruder):
            if outcome.value is not None:
                pool.putconn(outcome.value)
        if run.victim.error is not None or run.intruder.error is not None:
            error = run.victim.error or run.intruder.error
            pytest.fail(f"a getconn raised {type(error).__name__}: {error} (the other "
                        f"getconn ran before line {run.where} of the pool's code)",
                        pytrace=False)
        if not run.reached:
            break
    assert_pool_whole(pool)


# -- suspected: the pool lock re-acquired by a bare acquire() ----------------------------------


def test_suspected_an_interrupted_lock_reacquire_does_not_release_another_threads_lock(
        make_pool: MakePool) -> None:
    """Suspected, confirmed: a waiting getconn releases the pool lock while it waits and takes
    it back with a bare ``lock.acquire()`` inside ``with self._lock:``. A signal handler that
    raises while that acquire blocks leaves the thread without the lock, and the ``with``
    then releases the lock *another thread holds*: that thread's critical section is open
    to everyone, and its own release fails.

    Another thread must hold the pool lock at that moment: nothing public holds it across a
    call the test controls, so the helper thread takes ``pool._lock`` itself (private)."""
    pool = make_pool(1, 1)
    held = pool.getconn()
    report: dict[str, Any] = {}

    def hold_the_lock_then_interrupt() -> None:
        if not wait_until(lambda: pool.get_stats()["requests_waiting"] == 1):
            return
        pool._lock.acquire()  # private: see the docstring
        try:
            time.sleep(0.5)  # the waiter's 0.2 s passed: it is blocked taking the lock back
            interrupt_main()
            time.sleep(0.1)
            report["still_held"] = pool._lock.locked()
        finally:
            try:
                pool._lock.release()
            except RuntimeError as exc:
                report["release_error"] = exc

    helper = threading.Thread(target=hold_the_lock_then_interrupt, daemon=True)
    with raising_on(signal.SIGUSR1, keyboard_interrupt):
        helper.start()
        try:
            with contextlib.suppress(KeyboardInterrupt, PoolExhausted):
                pool.getconn(timeout=0.2)
            helper.join(5)  # a signal that came late lands here
        except KeyboardInterrupt:
            pass
        finally:
            helper.join(5)
    assert "still_held" in report, report
    assert report["still_held"], ("the interrupted getconn released the pool lock that "
                                  "another thread held")
    assert "release_error" not in report, report
    pool.putconn(held)
    assert_pool_whole(pool)


# -- maxconn + 1 server sessions ------------------------------------------------------------


class SlowClose(psycopg2.extensions.connection):
    """A connection whose close() takes a while (a slow network); records when the first
    close() of each connection ended, by ``id()``."""

    closed_at: ClassVar[dict[int, float]] = {}

    def close(self) -> None:
        if not self.closed:
            time.sleep(0.2)
        super().close()
        SlowClose.closed_at.setdefault(id(self), monotonic())


class AttemptTimes:
    """Records when each connection attempt began, and how it ended."""

    def __init__(self) -> None:
        self.attempts: list[tuple[float, BaseException | None]] = []

    def on_connect(self, event: Any) -> None:
        self.attempts.append((monotonic() - event.duration, event.error))


def test_maxconn_plus_one_a_discarded_connection_is_closed_before_its_replacement_opens(
        make_pool: MakePool, dsn: str, limited_role: str) -> None:
    """The server briefly had ``maxconn + 1`` sessions: a discarded connection's slot is
    given back (and its replacement started) before it is closed. With a role whose
    CONNECTION LIMIT equals maxconn, the replacement is refused.

    The discarded connection's close() is made slow (0.2 s, a slow network), so that the
    order shows: no connection attempt may begin before it ended, and a checkout after the
    discard gets a connection."""
    SlowClose.closed_at.clear()
    pool = make_pool(2, 2, dsn=dsn, user=limited_role, connection_factory=SlowClose,
                     timeout=2)
    times = AttemptTimes()
    pool.add_listener(times)
    first, second = pool.getconn(), pool.getconn()
    pool.putconn(first, close=True)
    conn = pool.getconn(timeout=2)
    pool.putconn(conn)
    pool.putconn(second)
    assert wait_until(lambda: id(first) in SlowClose.closed_at, 2), "never closed"
    closed_at = SlowClose.closed_at[id(first)]
    assert times.attempts, "no connection was opened to replace the discarded one"
    early = [(round(closed_at - began, 3), error) for began, error in times.attempts
             if began < closed_at]
    assert not early, (
        f"connection attempts began before the discarded connection was closed "
        f"(seconds before, error): {early}; the server saw maxconn + 1 sessions")


# -- found in review, after the rewrite -------------------------------------------------------


def test_review_discard_listeners_reading_each_others_pool_do_not_deadlock(
        make_pool: MakePool) -> None:
    """Two pools whose on_discard reads the *other* pool's stats, both with connections
    collected at once: no lock is held while discard listeners run, so neither waits on the
    other, and the collector thread keeps giving slots back."""
    a, b = make_pool(0, 2), make_pool(0, 2)

    class ReadsOther:
        def __init__(self, other: ConnectionPool) -> None:
            self.other = other

        def on_discard(self, event: Any) -> None:
            time.sleep(0.2)  # both announcing at once
            self.other.get_stats()
            self.other.checkouts()

    a.add_listener(ReadsOther(b))
    b.add_listener(ReadsOther(a))
    for pool in (a, b):
        pool.getconn()  # dropped at once
    gc.collect()
    done: list[str] = []

    def stats(pool: ConnectionPool, name: str) -> None:
        pool.get_stats()
        done.append(name)

    threads = [threading.Thread(target=stats, args=(p, n), daemon=True)
               for p, n in ((a, "a"), (b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert sorted(done) == ["a", "b"], "get_stats() deadlocked across two pools' listeners"
    assert wait_until(lambda: a.get_stats()["pool_size"] == 0 == b.get_stats()["pool_size"])


def test_review_a_surplus_open_never_strands_a_deferred_one(
        make_pool: MakePool, monkeypatch: pytest.MonkeyPatch) -> None:
    """num_workers=1: a waiter's open is deferred behind another's; when a return serves the
    first waiter, the slot given back must not be the one the second waiter still needs.
    (The open task starts 0.3 s late, as on a busy worker: private, the only way to hold it.)"""
    from psycopg2_pool import upkeep

    run = upkeep.OpenConnection.run

    def late(self: Any) -> None:
        time.sleep(0.3)
        run(self)

    monkeypatch.setattr(upkeep.OpenConnection, "run", late)
    pool = make_pool(1, 10, num_workers=1)
    held = pool.getconn()
    results: dict[str, str] = {}
    got: list[Any] = []

    def waiter(name: str) -> None:
        try:
            got.append(pool.getconn(timeout=3))  # kept: w2 needs a connection of its own
        except Exception as exc:  # noqa: BLE001 - reported below
            results[name] = type(exc).__name__
        else:
            results[name] = "ok"

    threads = [threading.Thread(target=waiter, args=(n,), daemon=True) for n in ("w1", "w2")]
    for thread in threads:
        thread.start()
        assert wait_until(lambda: pool.get_stats()["requests_waiting"] == len(
            [t for t in threads if t.is_alive()]))
    pool.putconn(held)  # handed to w1: one reserved slot is now surplus
    for thread in threads:
        thread.join(8)
    for conn in got:
        pool.putconn(conn)
    assert results == {"w1": "ok", "w2": "ok"}, results


def test_review_an_infinite_timeout_waits_and_is_served(make_pool: MakePool) -> None:
    """timeout=float('inf') means wait for ever (docs/api.md), not OverflowError."""
    pool = make_pool(1, 1)
    held = pool.getconn()
    timer = threading.Timer(0.2, pool.putconn, args=(held,))
    timer.start()
    try:
        conn = pool.getconn(timeout=math.inf)
    finally:
        timer.join()
    assert conn is held
    pool.putconn(conn)
    ready = make_pool(0, 1)
    ready.resize(minconn=1)  # opened in the background: wait() has something to wait for
    ready.wait(timeout=math.inf)
    assert ready.get_stats()["pool_available"] == 1


def test_review_clear_serves_a_waiter_once_the_closes_are_done(make_pool: MakePool) -> None:
    """clear() does not refill to minconn, but a caller that queued while its connections
    were being closed still gets one when their slots come free."""
    class SlowClose(psycopg2.extensions.connection):
        def close(self) -> None:
            time.sleep(0.3)
            super().close()

    pool = make_pool(0, 2, connection_factory=SlowClose)
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    clearing = threading.Thread(target=pool.clear, daemon=True)
    clearing.start()
    time.sleep(0.05)  # a is closing; the pool is at maxconn (b out, a closing)
    conn = pool.getconn(timeout=3)
    clearing.join(5)
    pool.putconn(conn)
    pool.putconn(b)
