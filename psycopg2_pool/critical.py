"""The fast paths' critical sections: the part of a checkout and of a return made under the lock.

A checkout that finds an idle connection, and a return with nothing to do but keep the
connection, each change the books in one short critical section (pool.py's rules). Written in
Python, such a section pays for ``with lock:`` (two bound methods made and called, ~60 ns more
than a bare acquire and release) and for a dozen bytecodes, and a signal handler may raise
after any call in it. Where the package was built with its C part
(``psycopg2_pool._critical``), each section is one C call instead: the lock (a
:class:`Lock` of that module, with ``threading.Lock``'s interface) is taken and released in
C, no signal's exception is delivered inside, and nothing allocated under the lock can wake
the garbage collector. That is what brings the bare checkout-and-return cycle under
``psycopg2.pool``'s (docs/performance.md).

A pool keeps its sections in a :class:`FastPaths` (``pool._fast``), made over its lock, idle
deque, records and waiters, which also holds the counters of checkouts and returns and the
``slow_return`` flag (each written under the lock):

- ``take(now)``: pops the most recently returned idle connection, marks its record OUT
  (lent to the records, ``since=now``), counts the request; None when none is idle.
- ``keep(conn, rec, now)``: when nothing but keeping is to be done (not ``slow_return``,
  ``rec.lent`` is the records, nobody waiting, the record not doomed by ``drain()`` or a
  role change), marks the record IDLE (``returned_at=now``),
  appends the connection to the idle deque and counts the return: True; else changes
  nothing: False (the caller takes its locked slow path).

:class:`PyFastPaths` is the reference: the C sections do the same, step for step, and are
used unless ``PSYCOPG2_POOL_PURE_PYTHON=1`` (tests/pool/test_critical.py runs both side by
side, and tests/pool/test_interruptions.py walks every step of the Python ones).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any

from .connection import IDLE, OUT, Record
from .stacks import PURE_PYTHON_ENV


class PyFastPaths:
    """A pool's fast paths' critical sections, in Python: the reference for the C ones."""

    __slots__ = ("idle", "lock", "records", "requests", "returns", "slow_return", "waiters")

    def __init__(self, lock: Any, idle: deque[Any], records: dict[int, Record],
                 waiters: deque[Any]) -> None:
        self.lock, self.idle, self.records, self.waiters = lock, idle, records, waiters
        self.requests = self.returns = 0  # checkouts and returns counted, under the lock
        self.slow_return = True  # whether every return must take the Python path

    def take(self, now: float) -> Any:
        """The checkout's section (see the module docstring)."""
        with self.lock:
            idle = self.idle
            if not idle:
                return None
            conn = idle.pop()  # out of the deque, then marked (pool.py's rules)
            rec = conn._pool_rec
            rec.state, rec.lent, rec.since = OUT, self.records, now
            self.requests += 1
        return conn

    def keep(self, conn: Any, rec: Record, now: float) -> bool:
        """The return's section (see the module docstring)."""
        with self.lock:
            if (self.slow_return or rec.lent is not self.records or self.waiters
                    or rec.doomed is not None):
                return False
            rec.returned_at, rec.state, rec.lent = now, IDLE, None  # marked, then in the deque
            self.idle.append(conn)
            self.returns += 1
        return True


Lock: Any
FastPaths: Any
try:  # the C sections, built with the package where a compiler was at hand (setup.py)
    if os.environ.get(PURE_PYTHON_ENV) == "1":
        raise ImportError(f"{PURE_PYTHON_ENV}=1")
    from ._critical import FastPaths, Lock, setup
    setup(OUT, IDLE, Record)
except ImportError:  # pragma: no cover - depends on the build
    Lock, FastPaths = threading.Lock, PyFastPaths

#: Whether the critical sections run in C (``psycopg2_pool._critical``).
ACCELERATED = FastPaths is not PyFastPaths

__all__ = ["ACCELERATED", "FastPaths", "Lock", "PyFastPaths"]
