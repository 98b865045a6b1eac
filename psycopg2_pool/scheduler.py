"""One background scheduler for the upkeep of every pool in the process.

Pools hand it *tasks* (the named classes of :mod:`psycopg2_pool.upkeep`) to run now or at a
given time. Worker threads named ``psycopg2_pool-upkeep`` run them (while one runs a task,
its name says which task, for which pool). A task that blocks (a
connect to a server that does not answer) holds one worker only: when a task falls due and
no worker is free, another is started, up to one plus the ``num_workers`` of every live
pool (each pool runs at most that many connects at once), so a pool whose server hangs
never starves another pool's upkeep. Workers beyond the first
leave after :data:`IDLE_EXIT` seconds without work; the last leaves once no task is
scheduled and no pool is alive, so a process whose pools are all closed has no thread of
ours. In a forked child the scheduler starts empty (the parent's threads are not there)
and each pool schedules its tasks again.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import weakref
from time import monotonic
from typing import Any, Protocol

logger = logging.getLogger("psycopg2_pool")

#: Seconds a spare worker waits for work before it leaves.
IDLE_EXIT = 10.0
#: Longest a sleeping worker goes without looking at the heap: a wake-up that a raise cut
#: short (a signal's exception at the call that wakes it) delays a task by at most this.
WAKE_CHECK = 0.5
#: A worker's name between tasks; while it runs one, ``psycopg2_pool-upkeep: <task> [<pool>]``.
_IDLE_NAME = "psycopg2_pool-upkeep"


class Task(Protocol):
    """Something to run in the background; ``name`` says what (see :mod:`upkeep`)."""

    name: str
    pool_ref: weakref.ref[Any]  #: the pool it works for (tasks never keep a pool alive)

    def run(self) -> None: ...


class Scheduler:
    """A heap of timed tasks shared by worker threads that start and stop on demand."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start empty: at import, and in a forked child (whose parent's lock may be held)."""
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, Task]] = []
        self._seq = itertools.count()
        self._workers = 0
        # Idle workers, each waiting on its own event: a new task wakes exactly one of them
        # (claims it) or starts a worker; a shared notify() could wake one for two tasks.
        self._sleepers: list[threading.Event] = []
        self._pools: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._failed: set[str] = set()

    def register(self, pool: object, workers: int) -> None:
        """A pool is alive, running up to ``workers`` connects at once: keep workers for it."""
        with self._lock:
            self._pools[pool] = workers

    def unregister(self, pool: object) -> None:
        """A pool closed: drop its tasks; with the last pool gone, the workers leave."""
        with self._lock:
            self._pools.pop(pool, None)
            self._heap[:] = [entry for entry in self._heap
                             if entry[2].pool_ref() not in (pool, None)]
            heapq.heapify(self._heap)
            self._wake_all()

    def call_soon(self, task: Task) -> None:
        self.call_at(monotonic(), task)

    def call_later(self, delay: float, task: Task) -> None:
        self.call_at(monotonic() + delay, task)

    def call_at(self, when: float, task: Task) -> None:
        """Run ``task`` on a worker at monotonic time ``when`` (at once if it has passed)."""
        with self._lock:
            heapq.heappush(self._heap, (when, next(self._seq), task))
            if self._sleepers:
                # Woken, then unlisted: a raise between leaves it listed and woken (it
                # unlists itself), never unlisted and asleep with the task waiting.
                self._sleepers[-1].set()
                self._sleepers.pop()
            elif self._workers < self.max_workers:
                worker = threading.Thread(target=self._work, name=_IDLE_NAME, daemon=True)
                self._workers += 1
                try:
                    worker.start()
                except BaseException:  # not started (or a raise just after): not counted, so
                    self._workers -= 1  # the count can only err low (one worker too many)
                    raise

    @property
    def max_workers(self) -> int:
        """Most worker threads at once: one, plus each live pool's ``num_workers``."""
        return 1 + sum(self._pools.values())

    @property
    def workers(self) -> int:
        """Worker threads running now."""
        return self._workers

    def pending(self) -> list[str]:
        """The names of the scheduled tasks, soonest first (for tests and debugging)."""
        with self._lock:
            return [task.name for _, _, task in sorted(self._heap)]

    def _wake_all(self) -> None:
        while self._sleepers:
            self._sleepers.pop().set()

    def _work(self) -> None:
        try:
            self._serve()
        finally:  # whatever ends the loop, the count stays true
            with self._lock:
                self._workers -= 1

    def _serve(self) -> None:
        lock, heap, sleepers = self._lock, self._heap, self._sleepers
        wake = threading.Event()
        idle_since = monotonic()
        while True:
            with lock:
                now = monotonic()
                task = None
                if heap and heap[0][0] <= now:
                    task = heapq.heappop(heap)[2]
                elif not heap and not self._pools:
                    return  # nothing scheduled, no pool alive: stop
                elif now - idle_since >= IDLE_EXIT and (sleepers or not heap):
                    return  # a spare: another idle worker keeps the heap
                else:
                    wait = min(WAKE_CHECK, heap[0][0] - now) if heap else WAKE_CHECK
                    wake.clear()
                    sleepers.append(wake)
            if task is not None:
                self._run(task)
                idle_since = monotonic()
                continue
            wake.wait(wait)
            with lock:
                if wake in sleepers:  # timed out, not claimed by a new task
                    sleepers.remove(wake)

    def _run(self, task: Task) -> None:
        """Run a task under a thread name that says whose and what it is; a task that raises
        anything at all is logged (once per kind) and the worker goes on."""
        thread = threading.current_thread()
        pool = task.pool_ref()
        thread.name = f"{_IDLE_NAME}: {task.name} [{getattr(pool, 'name', '?')}]"
        del pool
        try:
            task.run()
        except BaseException:
            if task.name not in self._failed:  # once per kind of task: no flood
                self._failed.add(task.name)
                logger.exception("psycopg2_pool: background task %s failed; upkeep goes on",
                                 task.name)
        finally:
            thread.name = _IDLE_NAME


#: The process's scheduler.
SCHEDULER = Scheduler()

__all__ = ["IDLE_EXIT", "SCHEDULER", "WAKE_CHECK", "Scheduler", "Task"]
