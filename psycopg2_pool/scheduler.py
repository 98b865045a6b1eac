"""One background scheduler for the upkeep of every pool in the process.

Pools hand it *tasks* (the named classes of :mod:`psycopg2_pool.upkeep`) to run now or at a
given time. Worker threads named ``psycopg2_pool-upkeep`` run them. A task that blocks (a
connect to a server that does not answer) holds one worker only: when a task falls due and
no worker is free, another is started, up to :data:`MAX_WORKERS`. Workers beyond the first
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

#: Most worker threads at once, for all pools of the process.
MAX_WORKERS = 8
#: Seconds a spare worker waits for work before it leaves.
IDLE_EXIT = 10.0


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
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Task]] = []
        self._seq = itertools.count()
        self._workers = 0
        self._idle = 0
        self._pools: weakref.WeakSet[Any] = weakref.WeakSet()
        self._failed: set[str] = set()

    def register(self, pool: object) -> None:
        """A pool is alive: keep a worker for its tasks."""
        with self._cond:
            self._pools.add(pool)

    def unregister(self, pool: object) -> None:
        """A pool closed: drop its tasks; with the last pool gone, the workers leave."""
        with self._cond:
            self._pools.discard(pool)
            self._heap[:] = [entry for entry in self._heap
                             if entry[2].pool_ref() not in (pool, None)]
            heapq.heapify(self._heap)
            self._cond.notify_all()

    def call_soon(self, task: Task) -> None:
        self.call_at(monotonic(), task)

    def call_later(self, delay: float, task: Task) -> None:
        self.call_at(monotonic() + delay, task)

    def call_at(self, when: float, task: Task) -> None:
        """Run ``task`` on a worker at monotonic time ``when`` (at once if it has passed)."""
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), task))
            if self._idle:
                self._cond.notify()
            elif self._workers < MAX_WORKERS:
                self._workers += 1
                threading.Thread(target=self._work, name="psycopg2_pool-upkeep",
                                 daemon=True).start()

    @property
    def workers(self) -> int:
        """Worker threads running now."""
        return self._workers

    def pending(self) -> list[str]:
        """The names of the scheduled tasks, soonest first (for tests and debugging)."""
        with self._cond:
            return [task.name for _, _, task in sorted(self._heap)]

    def _work(self) -> None:
        cond, heap = self._cond, self._heap
        idle_since = monotonic()
        with cond:
            while True:
                now = monotonic()
                if heap and heap[0][0] <= now:
                    task = heapq.heappop(heap)[2]
                    cond.release()
                    try:
                        self._run(task)
                    finally:
                        cond.acquire()
                    idle_since = monotonic()
                    continue
                if not heap and not self._pools:
                    break  # nothing scheduled, no pool alive: stop
                if now - idle_since >= IDLE_EXIT and (self._idle or not heap):
                    break  # a spare: another idle worker keeps the heap
                wait = IDLE_EXIT if not heap else min(heap[0][0] - now, IDLE_EXIT)
                self._idle += 1
                try:
                    cond.wait(wait)
                finally:
                    self._idle -= 1
            self._workers -= 1

    def _run(self, task: Task) -> None:
        try:
            task.run()
        except Exception:  # a failing task must not kill the worker
            if task.name not in self._failed:  # once per kind of task: no flood
                self._failed.add(task.name)
                logger.exception("psycopg2_pool: background task %s failed; upkeep goes on",
                                 task.name)


#: The process's scheduler.
SCHEDULER = Scheduler()

__all__ = ["IDLE_EXIT", "MAX_WORKERS", "SCHEDULER", "Scheduler", "Task"]
