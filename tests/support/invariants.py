"""What must hold of a pool whatever raised where, and the means to stop a call at any step.

- :class:`StepTracer` counts the steps (lines started) of the pool's own code on the thread
  that arms it and, from the k-th on, raises :class:`Injected` (a ``KeyboardInterrupt``) where
  a signal handler's would land, or runs an action on another thread while this one is held
  there (a deterministic preemption). Running a call with k = 1, 2, 3, ... until it completes
  untouched interrupts it at each of its steps in turn.
- :func:`invariant_problems` checks what every pool must satisfy once nobody holds a
  connection: the books balance, nothing is left checked out, and ``maxconn`` distinct,
  usable connections can be had at once.
- :func:`on_thread` runs a call on a thread of its own, bounded in time, and reports what it
  raised without keeping the exception (whose traceback would keep connections alive).

Public API and ``get_stats()`` only, except where a comment says why not.
"""

from __future__ import annotations

import gc
import linecache
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import psycopg2_pool
from psycopg2_pool import ConnectionPool

#: Frames whose code lives here are the pool's steps (the worktree's package, as imported).
PACKAGE_DIR = os.path.dirname(os.path.abspath(psycopg2_pool.__file__)) + os.sep


class Injected(KeyboardInterrupt):
    """The interrupt a test raises into the pool: a KeyboardInterrupt, as from a signal."""


def where(frame: FrameType) -> str:
    """``file:line function: source`` of a frame of the pool."""
    code = frame.f_code
    source = linecache.getline(code.co_filename, frame.f_lineno).strip()
    return f"{os.path.basename(code.co_filename)}:{frame.f_lineno} {code.co_name}: {source}"


#: C functions during which another thread may run (they release the GIL, or block): a
#: preemption can happen as they start, not only once they return.
RELEASES_GIL = frozenset({"acquire", "sleep", "wait", "join", "connect", "rollback", "commit",
                          "execute", "close", "fetchone", "poll", "select"})


class StepTracer:
    """Stops the pool's code at its ``k``-th step on the thread that arms it.

    A step is a line that the pool's code starts (a ``'line'`` trace event in a frame whose
    code is in the psycopg2_pool package). ``sys.settrace``/``sys.setprofile`` set the current
    thread's functions only: other threads, the scheduler's workers among them, run untraced.

    What happens at step ``k`` happens where CPython would let it happen, from there on, so
    that every failure found can happen for real (a tracer that raised out of any line would
    also raise where no signal can land, e.g. between the end of a ``with`` block and its
    ``__exit__``, and report failures nobody can fix):

    - an interrupt (by default :class:`Injected`, or ``exc``) is raised where a signal
      handler's exception is: at the next entry to a Python function, after the next call
      to a C function returns (the interpreter's eval-breaker checks, CPython 3.11), or out
      of the next lock ``acquire()``, as though it had to wait (a blocked acquire is
      interrupted by a signal);
    - an ``action`` (a preemption: another thread's call, see :class:`Preemption`) runs at the
      next point where the interpreter may switch threads: the same points, and the start of
      a C call that releases the GIL (a lock, I/O, ``sleep``).

    It acts at most once. ``fired`` says at which step (``file:line function: source``),
    ``delivered`` where the interrupt or the switch landed; both stay None when the call had
    fewer than ``k`` steps.
    """

    def __init__(self, k: int, *, action: Callable[[], None] | None = None,
                 exc: Callable[[str], BaseException] = Injected) -> None:
        self.k = k
        self.action = action
        self.exc = exc
        self.steps = 0
        self.fired: str | None = None
        self.delivered: str | None = None
        self._pending = False

    def _call(self, frame: FrameType, event: str, arg: Any) -> Any:
        if self._pending:  # entry to a Python function: an eval-breaker check
            self._deliver(f"on entry to {frame.f_code.co_name}()")
        if frame.f_code.co_filename.startswith(PACKAGE_DIR):
            return self._line
        return None

    def _line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and self.fired is None:
            self.steps += 1
            if self.steps == self.k:
                self.fired = where(frame)
                self._pending = True
        return self._line

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if not self._pending:
            return
        name = getattr(arg, "__name__", "?")
        if event == "c_return":  # after a call: an eval-breaker check
            self._deliver(f"after {name}() returned, in {where(frame)}")
        elif event == "c_call" and name in RELEASES_GIL and (
                self.action is not None or name == "acquire"):
            self._deliver(f"as {name}() started, in {where(frame)}")

    def _deliver(self, point: str) -> None:
        self._pending = False
        self.delivered = point
        sys.settrace(None)  # once is all: the rest of the call runs untraced
        sys.setprofile(None)
        if self.action is None:
            raise self.exc(f"injected at step {self.k} ({self.fired}), {point}")
        self.action()

    def armed(self) -> _Armed:
        """Trace the pool's code called on this thread inside a ``with`` block."""
        return _Armed(self)


class _Armed:
    """``with tracer.armed():`` (a class, not a generator: a pending interrupt lands on entry
    to ``__exit__`` and must leave nothing half-done)."""

    def __init__(self, tracer: StepTracer) -> None:
        self.tracer = tracer

    def __enter__(self) -> StepTracer:
        sys.setprofile(self.tracer._profile)
        sys.settrace(self.tracer._call)
        return self.tracer

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)
        sys.setprofile(None)


class Preemption:
    """An action run on a helper thread while the traced thread is held at one step.

    The traced thread waits for it at most ``wait`` seconds (less when the pool's lock is
    held: the action would only block on it until the traced thread goes on).
    """

    def __init__(self, pool: ConnectionPool, action: Callable[[], Any], wait: float) -> None:
        self.pool = pool
        self.action = action
        self.wait = wait
        self.thread: threading.Thread | None = None
        self.error: str | None = None
        self.result: Any = None
        self.fired_at = 0.0  #: monotonic time the traced thread reached the step

    def __call__(self) -> None:
        self.fired_at = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="preemption", daemon=True)
        self.thread.start()
        # Private: whether the pool's lock is taken (by the traced thread, as nothing else
        # runs but the scheduler). The action would then block until this thread goes on, so
        # waiting for it would only cost time. No public API can tell without the lock; a
        # core without a ``_lock`` just waits the full time.
        lock = getattr(self.pool, "_lock", None)
        held = lock is not None and lock.locked()
        self.thread.join(0.005 if held else self.wait)

    def _run(self) -> None:
        try:
            self.result = self.action()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = f"{type(exc).__name__}: {exc}"

    def join(self, timeout: float) -> bool:
        """Wait for the action; True when it ended (or never started)."""
        if self.thread is None:
            return True
        self.thread.join(timeout)
        return not self.thread.is_alive()


@dataclass
class Outcome:
    """How a call run by :func:`on_thread` ended."""

    finished: bool  #: False: still running at the deadline (a hang)
    error_type: type[BaseException] | None = None
    error: str | None = None  #: ``Type: message`` of what it raised
    stack: str = ""  #: where it was stuck, when it did not finish
    result: Any = None


def on_thread(call: Callable[[], Any], timeout: float, name: str = "scenario") -> Outcome:
    """``call()`` on a daemon thread, waiting ``timeout`` seconds at most.

    Only the type and text of what it raised are kept: the exception's traceback holds the
    frames, and so the connections, of the call.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            box["type"] = type(exc)
            box["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        frame = sys._current_frames().get(thread.ident or 0)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        return Outcome(False, stack=stack)
    return Outcome(True, box.get("type"), box.get("error"), result=box.get("result"))


def settled(pool: ConnectionPool, timeout: float) -> dict[str, Any]:
    """``get_stats()`` once no connection is opening, nobody waits and none is being closed
    (opened - discarded == size: a background task, such as the close of a lost server's idle
    connections, may still be closing one), or at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        stats = pool.get_stats()
        closing = stats["connections_num"] - stats["connections_discarded"] != stats["pool_size"]
        if (stats["pool_opening"] == 0 and stats["requests_waiting"] == 0 and not closing) \
                or time.monotonic() >= deadline:
            return stats
        time.sleep(0.002)


def scheduler_problems() -> list[str]:
    """What a call left behind on the process's scheduler: its count of workers above the
    worker threads alive (a count that errs high stops new workers for good, and with them
    every pool's background opens). Repaired so that it cannot break a later test.

    Private: ``SCHEDULER._workers`` and the threads' names (``psycopg2_pool-upkeep...``)."""
    from psycopg2_pool.scheduler import SCHEDULER

    with SCHEDULER._lock:
        alive = sum(1 for t in threading.enumerate()
                    if t.name.startswith("psycopg2_pool-upkeep") and t.is_alive())
        counted = SCHEDULER._workers
        if counted <= alive:
            return []
        SCHEDULER._workers = alive
    return [f"the scheduler counts {counted} workers with {alive} alive: a raise left the "
            f"count high, and new workers would never start"]


def watchdog_problems() -> list[str]:
    """What a call left behind on the pool's io_timeout watchdog (the process's), repaired
    so that it cannot break a later test: empty when nothing.

    Private: no public API shows the watchdog. After a call has returned or raised:

    - its lock must be free, or every later health check, rollback and reset of every pool
      blocks for good;
    - nothing of the call may still be armed, or io_timeout later the watchdog shuts down
      whatever socket has that descriptor number by then: another connection's;
    """
    from psycopg2_pool._watchdog import WATCHDOG

    problems = []
    lock = getattr(WATCHDOG, "_lock", None)
    armed = getattr(WATCHDOG, "_armed", None)
    if lock is None or not isinstance(armed, dict):
        return problems
    if not lock.acquire(timeout=1.0):
        problems.append("the io_timeout watchdog's lock was left held (every later health "
                        "check, rollback and reset of every pool would block for good)")
        lock.release()  # a plain Lock: any thread may release it
        lock.acquire()
    try:
        tokens = list(armed)
        if tokens:
            problems.append(f"{len(tokens)} round trip(s) left armed on the io_timeout "
                            f"watchdog (io_timeout later it shuts down another connection's "
                            f"socket)")
            for token in tokens:
                armed.pop(token, None)
    finally:
        lock.release()
    return problems


def invariant_problems(pool: ConnectionPool, maxconn: int, *, settle: float = 1.0,
                       handout_timeout: float = 2.0) -> list[str]:
    """What is wrong with an open pool that nobody holds a connection of (empty: nothing).

    - the books balance: ``pool_size == pool_available + pool_in_use + pool_opening``, the
      idle connections are those ``return_times`` knows, each once, ``pool_size <= maxconn``,
      and every connection the pool opened is still in it or was discarded;
    - nothing is checked out: ``pool_in_use == 0 == len(checkouts())``;
    - the io_timeout watchdog is left sound: nothing armed, its lock free, its thread not
      asleep past a deadline (:func:`watchdog_problems`, which also repairs it);
    - ``maxconn`` connections can be had at once (``getconn(timeout=handout_timeout)``), all
      distinct, none of them idle meanwhile, each idle (no transaction) and answering, and
      once they are returned nothing is checked out.

    The hand-out is skipped when the books are already wrong (it would only wait out its
    timeout).
    """
    gc.collect()  # connections dropped in reference cycles give their slots back now
    problems: list[str] = []
    stats = settled_stats(pool, settle)
    if stats is None:
        return [f"get_stats() did not return within {settle + 2} s: the pool's lock is held "
                f"for good", *watchdog_problems()]
    size, available = stats["pool_size"], stats["pool_available"]
    in_use, opening = stats["pool_in_use"], stats["pool_opening"]
    checkouts = pool.checkouts()
    idle = list(pool.idle_connections)
    times = list(pool.return_times)
    brief = (f"size={size} available={available} in_use={in_use} opening={opening} "
             f"waiting={stats['requests_waiting']} checkouts()={len(checkouts)} "
             f"opened={stats['connections_num']} discarded={stats['connections_discarded']}")
    if opening or stats["requests_waiting"]:
        problems.append(f"still opening or waiting after {settle} s: {brief}")
    if size != available + in_use + opening:
        problems.append(f"the books do not balance: {brief}")
    if in_use != 0 or checkouts:
        problems.append(f"checked out with nobody holding a connection (lost slot): {brief}")
    if len(idle) != available or len({id(c) for c in idle}) != len(idle):
        problems.append(f"idle_connections ({len(idle)}, {len({id(c) for c in idle})} "
                        f"distinct) disagrees with pool_available: {brief}")
    if {id(c) for c in times} != {id(c) for c in idle}:
        problems.append(f"return_times ({len(times)}) is not the idle connections "
                        f"({len(idle)}): a connection half-returned")
    if size > maxconn:
        problems.append(f"pool_size over maxconn={maxconn}: {brief}")
    if not opening and stats["connections_num"] - stats["connections_discarded"] != size:
        problems.append(f"a connection vanished from the books (opened - discarded != "
                        f"size): {brief}")
    problems += watchdog_problems() + scheduler_problems()
    del checkouts, idle, times
    if problems:
        return problems
    problems += handout_problems(pool, maxconn, handout_timeout)
    return problems


def handout_problems(pool: ConnectionPool, maxconn: int, timeout: float) -> list[str]:
    """``maxconn`` connections at once, distinct and usable, then all returned."""
    problems: list[str] = []
    got: list[Any] = []
    conn: Any = None
    try:
        for _ in range(maxconn):
            got.append(pool.getconn(timeout=timeout))
    except BaseException as exc:  # noqa: BLE001 - the problem reported
        problems.append(f"could not hand out maxconn={maxconn} at once: got {len(got)}, then "
                        f"{type(exc).__name__}: {exc}")
    if len({id(c) for c in got}) != len(got):
        problems.append("the same connection handed out twice at once")
    idle_ids = {id(c) for c in list(pool.idle_connections)}
    if any(id(c) in idle_ids for c in got):
        problems.append("a connection handed out is also idle in the pool")
    for conn in got:
        status = conn.get_transaction_status()
        if status != 0:  # TRANSACTION_STATUS_IDLE
            problems.append(f"handed out a connection in transaction status {status}")
            continue
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
            conn.rollback()
        except Exception as exc:  # noqa: BLE001 - the problem reported
            problems.append(f"handed out a connection that does not answer: "
                            f"{type(exc).__name__}: {exc}".strip())
    for conn in got:
        try:
            pool.putconn(conn)
        except BaseException as exc:  # noqa: BLE001 - the problem reported
            problems.append(f"putconn of a handed-out connection raised {type(exc).__name__}: "
                            f"{exc}")
    del got, conn
    gc.collect()
    stats = settled(pool, 1.0)
    if stats["pool_in_use"] != 0 or pool.checkouts():
        problems.append(f"checked out after every connection was returned: "
                        f"in_use={stats['pool_in_use']} checkouts()={len(pool.checkouts())}")
    return problems


def settled_stats(pool: ConnectionPool, settle: float) -> dict[str, Any] | None:
    """:func:`settled` on a thread: None when get_stats() itself hangs (a lock left held)."""
    outcome = on_thread(lambda: settled(pool, settle), settle + 2, name="get_stats")
    return outcome.result if outcome.finished and outcome.error is None else None


def close_bounded(pool: ConnectionPool, timeout: float = 10.0) -> str | None:
    """``pool.close()`` on a thread; a description of what went wrong, or None."""
    outcome = on_thread(pool.close, timeout, name="close")
    if not outcome.finished:
        return f"close() did not return within {timeout} s:\n{outcome.stack}"
    return outcome.error


__all__ = ["PACKAGE_DIR", "Injected", "Outcome", "Preemption", "StepTracer", "close_bounded",
           "handout_problems", "invariant_problems", "on_thread", "settled", "settled_stats",
           "watchdog_problems", "where"]
