"""Replacing connections that are fine but must go: ``drain()``, ``check()``, and a server
that lost the role the pool asked libpq for (failover).

- :meth:`Replacement.drain` (psycopg_pool's): every connection is replaced, idle ones now and
  checked-out ones when they are returned; new ones open in the background with the
  connection arguments of now. A connection whose open began before the drain is never
  handed out either. For credential rotation, a server restart you know of, a failover your
  own tooling detected.
- :meth:`Replacement.check` (psycopg_pool's): every idle connection is checked now, on the
  caller's thread; broken and expired ones are replaced.
- A role change (roles.py): a connection returned with its server reporting that it no
  longer plays the pool's ``target_session_attrs`` role makes the pool replace every
  connection to that server (idle ones are closed by a background task, checked-out ones
  when they are returned), once per server and incident (:class:`~.events.RoleChangeEvent`,
  one warning in the log).

A connection that must go is *doomed* under the lock: its record's ``doomed`` holds the
discard reason and its ``expires`` is set in the past, so that the return and checkout fast
paths, which already compare ``expires``, send it to their slow paths without a new test.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable
from time import monotonic
from typing import Any

from . import roles as _roles
from .connection import CLOSING, IDLE, OUT, Record, closed_reason
from .events import DiscardReason, RoleChangeEvent, RoleRestoredEvent
from .scheduler import SCHEDULER
from .stats import ROLE_CHANGES
from .waiting import Waiting

logger = logging.getLogger("psycopg2_pool")

_IDLE_STATUS = 0  # psycopg2.extensions.TRANSACTION_STATUS_IDLE
Connection = Any


#: Seconds between two looks at the server's role on the plain returns of one connection.
#: A return that rolls back (a statement failed in a transaction: where a write refused by a
#: read-only server lands) always looks; one that does not (autocommit, reads) looks at most
#: this often, so that a pool with a role pays the ~165 ns read once per 50 ms per connection,
#: not on every return, and an autocommit write refused by a fenced primary repeats for at
#: most that long per connection.
ROLE_SAMPLE = 0.05


class CloseReplaced:
    """Close idle connections taken out of use by a role change, in the background (the
    thread that noticed the change is the application's, returning a connection)."""

    __slots__ = ("conns", "pool_ref", "reason")
    name = "close_replaced"

    def __init__(self, pool: Replacement, conns: list[Connection], reason: str) -> None:
        self.pool_ref: weakref.ref[Any] = weakref.ref(pool)
        self.conns = conns
        self.reason = reason

    def run(self) -> None:
        pool = self.pool_ref()
        if pool is None:
            return
        with pool._lock:  # close() may take them first
            conns, self.conns = self.conns, []
            if self in pool._replacing:
                pool._replacing.remove(self)
        pool._close_all(conns, self.reason)  # and opens their replacements


class Replacement(Waiting):
    """``drain()``, ``check()`` and the replacement of a server's connections (a base of
    the pool, like :class:`~.upkeep.Upkeep`; "(lock held)" as there)."""

    _drains: int
    _role_lost: Callable[[Connection], bool] | None
    _role_param: str | None
    _role_sign: str | None
    role: str | None
    idle_connections: Any
    _replacing: list[CloseReplaced]  #: CloseReplaced tasks not run yet (lock)

    def drain(self) -> None:
        """Replace every connection: idle ones are closed now, checked-out ones when they
        are returned, and new ones open in the background (through a callable ``dsn`` or
        ``kwargs``, called again). A connection being opened right now is not kept (closed
        when placed, or when returned by the ``timeout=0`` caller that opened it). On a
        closed pool, nothing to do."""
        taken: list[Connection] = []
        try:
            with self._lock:
                self._drains += 1
                self._doom(lambda rec: True, DiscardReason.DRAINED, taken)
        finally:  # a raise inside still closes what was taken out of use
            self._close_all(taken, DiscardReason.DRAINED)  # and opens their replacements

    def check(self) -> None:
        """Check every idle connection now, on this thread: each one is taken out of use
        and health-checked (the ``check`` callable, bounded by ``io_timeout``); a broken or
        expired one is discarded and replaced in the background, the others go back (to a
        waiting caller first). psycopg_pool's ``check()``."""
        pool = self._as_pool()
        pending: list[tuple[Connection, float]] = []  # (connection, when it was returned)
        discarded: list[str] = []
        try:
            with self._lock:  # a closed pool has none idle
                while self.idle_connections:
                    returned = self.idle_connections[-1]._pool_rec.returned_at
                    pending.append((pool._take_one_idle(), returned))  # newest first
            checked = len(pending)
            while pending:  # newest first: each goes back to the left end, oldest leftmost
                conn, returned = pending.pop(0)
                rec = conn._pool_rec
                since = rec.since
                try:
                    reason = self._checked_now(conn, rec)
                    with self._lock:
                        if reason is None and self._closed:
                            reason = DiscardReason.POOL_CLOSED
                        if reason is None and rec.doomed is not None:  # drained meanwhile
                            reason = rec.doomed
                        if reason is None:
                            self._put_back(conn, rec, returned)
                        else:  # still OUT: a sweep dooms a checked-out record, never takes it
                            self._begin_close(rec)
                except BaseException:  # interrupted: this one is discarded, the rest kept
                    pool._abandon(rec, since)
                    raise
                if reason is not None:
                    discarded.append(reason)
                    self._close_connection(conn, rec, reason, monotonic())
        finally:
            if pending:  # not checked (interrupted): back as they were
                with self._lock:
                    for conn, returned in pending:
                        if self._closed:
                            self._begin_close(conn._pool_rec)
                        else:
                            self._put_back(conn, conn._pool_rec, returned)
                if self._closed:
                    self._close_all([c for c, _ in pending if c._pool_rec.state is CLOSING],
                                    DiscardReason.POOL_CLOSED)
        if discarded:  # one line per call, as psycopg_pool's check() warns
            logger.warning("pool %r: check() discarded %d of %d idle connections (%s); "
                           "replacements open in the background", self.name, len(discarded),
                           checked, ", ".join(sorted(set(discarded))))

    def _put_back(self, conn: Connection, rec: Record, returned: float) -> None:
        """A connection :meth:`check` kept: to the first waiter, else idle again as it was,
        at the left end of the deque with the time it had been returned, so that a
        periodic ``check()`` never keeps a connection from ``idle_timeout`` (lock held)."""
        waiter = self._first_waiter() if self._waiters else None
        if waiter is not None:
            self._hand_over(conn, rec, monotonic(), waiter)
            return
        rec.returned_at, rec.state, rec.returning, rec.lent = returned, IDLE, False, None
        self.idle_connections.appendleft(conn)  # marked, then in the deque

    def _checked_now(self, conn: Connection, rec: Record) -> str | None:
        """Why a connection taken out by :meth:`check` must go, or None (outside the lock)."""
        pool = self._as_pool()
        if conn.get_transaction_status() != _IDLE_STATUS:
            return closed_reason(conn)
        if monotonic() >= rec.expires:
            return rec.doomed or DiscardReason.MAX_LIFETIME
        reason = pool._health_check(conn)
        if reason is not None:
            return reason
        if self._role_lost is not None and self._role_lost(conn):
            return self._role_changed(conn, rec)
        return None

    def _doom(self, match: Callable[[Record], bool], reason: str,
              taken: list[Connection]) -> int:
        """Take the matching idle connections out of use (CLOSING, appended to ``taken`` as
        each is: the caller closes them, even after a raise) and doom the matching
        checked-out ones (lock held); how many were doomed."""
        idle = self.idle_connections
        for conn in [c for c in idle if match(c._pool_rec)]:
            idle.remove(conn)  # out of the deque, then marked (the core's rules)
            conn._pool_rec.state, self._closing = CLOSING, self._closing + 1  # one line
            taken.append(conn)
        doomed = 0
        for rec in self._records.values():
            if rec.state is OUT and rec.doomed is None and match(rec):
                rec.doomed, rec.expires = reason, -math.inf  # its return sees it expired
                doomed += 1
        return doomed

    def _close_later(self, conns: list[Connection], reason: str) -> None:
        """Close ``conns`` (taken out of use, CLOSING) in the background; :meth:`close`
        closes them itself if it comes first (the scheduler drops a closed pool's tasks)."""
        task = CloseReplaced(self, conns, reason)
        SCHEDULER.call_soon(task)  # first: a raise after this leaves the task to close them
        with self._lock:
            if task.conns:  # not run yet
                self._replacing.append(task)

    def _role_changed(self, conn: Connection, rec: Record) -> str:
        """``conn`` (checked out, its slot still the caller's) is on a server that lost the
        pool's role: replace every connection to that server; the discard reason for it."""
        reason = DiscardReason.ROLE_CHANGED
        server = rec.server
        noticed = monotonic()
        conns: list[Connection] = []
        try:
            with self._lock:
                if rec.doomed is not None:  # another connection noticed first: same incident
                    return rec.doomed
                rec.doomed = reason
                in_use = self._doom(lambda r: r.server == server, reason, conns)
                self._stats[ROLE_CHANGES] += 1
                self._moving = (server, noticed)
        finally:  # a raise inside still has what was taken out of use closed
            if conns:
                self._close_later(conns, reason)
        reported = _roles.describe(conn)
        logger.warning("pool %r: server %s no longer has the role target_session_attrs=%s "
                       "asks for (it reports %s): replacing its connections (%d idle now, "
                       "%d in use when returned); new ones open through the DSN",
                       self.name, server, self.role, reported, len(conns), in_use + 1)
        if self._on_role_change:
            self._emit(self._on_role_change,
                       RoleChangeEvent(self._as_pool(), server, self.role or "", reported,
                                       len(conns), in_use + 1))
        return reason

    def _role_sampled(self, conn: Connection, rec: Record, now: float) -> bool:
        """A plain return's look at the server's role, due every :data:`ROLE_SAMPLE` seconds
        per connection (the returning thread's record): whether it must take the slow path."""
        rec.role_due = now + ROLE_SAMPLE
        return bool(conn.get_parameter_status(self._role_param) == self._role_sign)

    def _role_restored(self, conn: Connection, rec: Record) -> None:
        """A new connection after a role change: if its server has the role, the pool has
        moved (one event, one line in the log); else (libpq found none better) wait on."""
        if self._role_lost is not None and self._role_lost(conn):
            return
        with self._lock:
            moving = self._moving
            if moving is None or self._stale_role(rec) is not None:
                return  # another open got there first; or opened before the notice
            self._moving = None
        lost, noticed = moving
        after = monotonic() - noticed
        logger.warning("pool %r: moved from %s to %s %.3g s after its role change "
                       "(target_session_attrs=%s)", self.name, lost, rec.server, after,
                       self.role)
        if self._on_role_restored:
            self._emit(self._on_role_restored,
                       RoleRestoredEvent(self._as_pool(), lost, rec.server, self.role or "",
                                         after))

    def _stale_role(self, rec: Record) -> str | None:
        """``role_changed`` for a new connection to the server whose role change is being
        moved away from, opened before the change was noticed (its startup report predates
        the change: the sweep missed it, being under way); else None (lock held)."""
        moving = self._moving
        if moving is not None and rec.server == moving[0] and rec.created <= moving[1]:
            return DiscardReason.ROLE_CHANGED
        return None

    def servers(self) -> dict[str, int]:
        """Connections open per server, ``{"host:port": n}`` (idle and in use): which of a
        multi-host DSN's servers the pool is on."""
        counts: dict[str, int] = {}
        with self._lock:
            for rec in self._records.values():
                if rec.state is OUT or rec.state is IDLE:
                    counts[rec.server] = counts.get(rec.server, 0) + 1
        return counts

    def _mark_if_drained(self, rec: Record) -> None:
        """A connection a ``timeout=0`` caller opened for itself across a :meth:`drain` is
        doomed (lock held): closed when it is returned instead of being kept. (A background
        open across one is closed when placed: ``Upkeep._open_reserved``.)"""
        if rec.generation != self._drains and rec.doomed is None:
            rec.doomed, rec.expires = DiscardReason.DRAINED, -math.inf


#: The tasks of this module, for a reader and for ``SCHEDULER.pending()``.
TASKS = (CloseReplaced,)

__all__ = ["ROLE_SAMPLE", "CloseReplaced", "Replacement", "TASKS"]
