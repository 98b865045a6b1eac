"""Give back the slots of dropped connections, with no Python code on the garbage collector's
callback.

A checked-out connection the application drops is collected on whatever thread happens to
allocate, at any point of its code: inside the pool's critical section, inside the
scheduler's, inside a listener's. Taking any lock there can deadlock (the thread may hold it
already), and Python code run there can be cut by a signal whose exception CPython then
swallows ("Exception ignored in"). So each record's weak reference has, as its callback,
:data:`QUEUE`'s ``put`` itself: a C method, documented as reentrant (safe from weakref
callbacks), which queues the dead reference and runs no Python code at all. One daemon
thread per process, ``psycopg2_pool-collector``, takes the references off the queue, finds
each one's record in :data:`REGISTRY`, and has its pool give the slot back under the pool's
lock. ``get_stats()``, ``checkouts()`` and a slow checkout do not depend on it: they look
for their pool's dead references themselves first (``Upkeep._reclaim``), so that they never
answer before a connection collected earlier is counted.
A forked child starts with an empty queue and registry, and its own thread when its first
pool asks (:func:`start`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Record

logger = logging.getLogger("psycopg2_pool")

#: Dead weak references of pooled connections, put there by the garbage collector.
QUEUE: queue.SimpleQueue[weakref.ref[Any]] = queue.SimpleQueue()
#: The record of each live pooled connection, by its weak reference; a record leaves when it
#: is gone (closed by its pool) or when the collector took it.
REGISTRY: dict[weakref.ref[Any], Record] = {}
_pid = 0  # the process whose thread runs
_start_lock = threading.Lock()
_failed = False


def start() -> None:
    """Make sure this process's collector thread runs (called when a pool is made)."""
    global _pid
    if _pid == os.getpid():
        return
    with _start_lock:
        if _pid != os.getpid():
            threading.Thread(target=_run, args=(QUEUE,), name="psycopg2_pool-collector",
                             daemon=True).start()
            _pid = os.getpid()


def _dispatch(ref: weakref.ref[Any]) -> None:
    rec = REGISTRY.pop(ref, None)
    if rec is None:  # gone already (closed by its pool), or another thread's dispatch
        return
    pool = rec.pool()
    if pool is not None:
        pool._reclaim()  # finds every dead record of the pool, this one among them


def _run(inbox: queue.SimpleQueue[weakref.ref[Any]]) -> None:
    global _failed
    while True:
        ref = inbox.get()
        try:
            _dispatch(ref)
        except BaseException:
            if not _failed:  # once per process: no flood
                _failed = True
                logger.exception("psycopg2_pool: giving back a collected connection's slot "
                                 "failed; the collector goes on")
        del ref


def _after_fork_in_child() -> None:
    global QUEUE, REGISTRY, _start_lock
    QUEUE = queue.SimpleQueue()  # the parent's may be mid-operation; its thread is not here
    REGISTRY = {}  # the parent's records: the child keeps their connections for ever
    _start_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["QUEUE", "REGISTRY", "start"]
