"""Give back the slots of dropped connections, off the garbage collector's callback.

A checked-out connection the application drops is collected on whatever thread happens to
allocate, at any point of its code: inside the pool's critical section, inside the
scheduler's, inside a listener's. Taking any lock there can deadlock (the thread may hold it
already), so the weakref callback only appends the record to its pool's queue and puts the
pool on this module's :class:`queue.SimpleQueue`, whose ``put`` is documented as reentrant
(safe from ``__del__`` and weakref callbacks). One daemon thread per process,
``psycopg2_pool-collector``, takes pools off that queue and gives their slots back under
each pool's lock. It blocks in ``get()`` while there is nothing to do; a forked child starts
its own when its first pool asks (:func:`start`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from typing import Any

logger = logging.getLogger("psycopg2_pool")

_queue: queue.SimpleQueue[weakref.ref[Any]] = queue.SimpleQueue()
_pid = 0  # the process whose thread runs
_start_lock = threading.Lock()


def start() -> None:
    """Make sure this process's collector thread runs (never called from a GC callback)."""
    global _pid, _queue
    if _pid == os.getpid():
        return
    with _start_lock:
        if _pid != os.getpid():
            if _pid:  # a forked child: the parent's queue may hold the parent's pools
                _queue = queue.SimpleQueue()
            threading.Thread(target=_run, args=(_queue,), name="psycopg2_pool-collector",
                             daemon=True).start()
            _pid = os.getpid()


def wake(pool_ref: weakref.ref[Any]) -> None:
    """Ask the collector to give back ``pool_ref()``'s collected slots: no lock, no
    allocation beyond the queue's own (callable from a GC callback)."""
    _queue.put(pool_ref)


def _run(inbox: queue.SimpleQueue[weakref.ref[Any]]) -> None:
    failed = False
    while True:
        pool = inbox.get()()
        if pool is None:
            continue
        try:
            pool._reclaim()
        except BaseException:
            if not failed:  # once per process: no flood
                failed = True
                logger.exception("psycopg2_pool: giving back a collected connection's slot "
                                 "failed; the collector goes on")
        del pool


def _after_fork_in_child() -> None:
    global _start_lock
    _start_lock = threading.Lock()  # the parent's may have been held at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["start", "wake"]
