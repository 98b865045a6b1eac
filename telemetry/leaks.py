"""The leak detector: name the line that took a connection and never gave it back.

Modelled on HikariCP's ``leakDetectionThreshold``, with what its users keep asking for:

- the checkout stack costs ~0.25 µs: the pool keeps it raw on its own record of each checkout
  while the detector asks (``checkout_stack_depth``), walked in C where built, and the detector
  reads it off the hot path (``pool.checkouts()``), formatted only for a report;
- a connection held past the threshold is reported once (``connection_leak_suspected``), and
  again when it comes back (``connection_leak_returned``), so long-but-legitimate holds are
  visible as such;
- a connection garbage-collected while checked out is a definite leak
  (``connection_leaked``); the pool gives its slot back;
- one checkout can be declared an expected long hold (:meth:`LeakDetector.expect_long_hold`);
- a leak counter (the ``psycopg2_pool.connection.leaks`` metric) and a snapshot API
  (:meth:`LeakDetector.leaks`);
- on exhaustion, "who took them all": the top checkout sites, with counts, ages and the trace
  ids of the requests holding them;
- reports that read like a traceback in a console (structlog's ``stack`` key) and stay
  structured in JSON (``checkout_frames``).

Scans run on the shared background worker, never under the pool's lock.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any, NamedTuple

from psycopg2_pool import ConnectionPool, DiscardReason
from psycopg2_pool.events import (
    CloseEvent,
    DiscardEvent,
    PoolListener,
    TimeoutEvent,
)

from . import names, stacks

if TYPE_CHECKING:  # pragma: no cover
    from psycopg2_pool.leakcheck import LeakChecker


class TracedCheckout(NamedTuple):
    """One checkout as a report reads it: what the pool recorded of it
    (:meth:`psycopg2_pool.ConnectionPool.checkouts`), and the span current then."""

    connection: Any  # None once it was garbage-collected, or in a kept copy
    raw_stack: Sequence[Any]  # code, offset, code, offset... innermost first
    since: float
    thread: threading.Thread | None  # its name is read when a report is made
    span: Any  # the span current at checkout, inside a trace (else None)

    @property
    def frames(self) -> stacks.Frames:
        """The checkout stack as (code, offset) pairs, innermost first."""
        return stacks.pairs(self.raw_stack)


#: The error of a timeout (held weakly) and the holders made for it.
_Holders = tuple[weakref.ref[BaseException], list[dict[str, object]]]


class Leak(NamedTuple):
    """A snapshot of one checked-out connection, for programs and tests.

    It satisfies :class:`psycopg2_pool.leakcheck.LeakRecord` (``site``, ``traceback``): the
    pytest plugin, which lives in ``psycopg2_pool`` and never imports this package, prints it.
    """

    connection_id: int
    backend_pid: int
    thread: str
    held_s: float
    site: str  #: the checkout line, ``file:line in function``
    stack: list[str]  #: the checkout stack, innermost first, library frames trimmed
    trace_id: str | None
    reported: bool  #: held past the threshold and reported
    expected: str | None  #: the reason given to ``expect_long_hold``, if any
    #: The same stack, outermost first (the checkout line last), with the source lines.
    frames: tuple[stacks.Frame, ...] = ()
    omitted: int = 0  #: outer frames left out of ``frames``
    since: float = 0.0  #: when it was checked out (``time.monotonic()``)

    @property
    def traceback(self) -> str:
        """The checkout stack as a traceback-style block (what the ``stack`` log key holds)."""
        return stacks.format_block(self.frames, self.omitted)


class LeakDetector(PoolListener):
    """Tracks checkouts of one pool and reports leaks through ``log``."""

    #: Frames of each checkout's stack the pool keeps for it (see
    #: :class:`psycopg2_pool.events.PoolListener`): the pool walks them at checkout, in C
    #: where built (:mod:`psycopg2_pool.stacks`), on the record it keeps anyway.
    checkout_stack_depth = stacks.MAX_FRAMES

    def __init__(self, threshold: float | None, log: Callable[..., None],
                 pool: ConnectionPool) -> None:
        self.threshold = threshold
        self._log = log
        # The checkouts are the pool's records (pool.checkouts()): nothing is stored here per
        # checkout, but the span of one made inside a trace, by id(connection) (written by
        # telemetry.checkouts).
        self._pool = weakref.ref(pool)
        self._spans: dict[int, Any] = {}
        # Checkouts reported past the threshold, kept without their connection (the
        # garbage collector must still be able to take a leaked one).
        self._reported: dict[int, TracedCheckout] = {}
        self._expected: dict[int, str] = {}  # checkouts declared long: the reason
        self._lock = threading.Lock()
        self.leak_count = 0
        #: The latest connections collected while checked out: (when, snapshot).
        self.collected: deque[tuple[float, Leak]] = deque(maxlen=100)
        # Per thread (listeners run on the thread that gave up): the error of the latest
        # timeout, held weakly, and the holders made for it (exhaustion_holders).
        self._timeout = threading.local()

    def count(self) -> int:
        """Leaks found so far: held past the threshold, or collected while checked out."""
        return self.leak_count

    # -- the checkout path is telemetry.checkouts': it writes these tables ----------------------

    def tables(self) -> tuple[dict[int, Any], dict[int, TracedCheckout], dict[int, str]]:
        """By ``id(connection)``: the spans of checkouts made inside a trace, the checkouts
        reported past the threshold, and the expected long holds with their reasons (for
        the checkout recorder)."""
        return self._spans, self._reported, self._expected

    def returned(self, conn: Any, use_time: float) -> None:
        """A checkout came back while some checkout is declared long or was reported: forget
        its declaration, and if it was reported as a suspected leak, say it came back (and
        how long it was out)."""
        conn_id = id(conn)
        self._expected.pop(conn_id, None)
        checkout = self._reported.pop(conn_id, None)
        if checkout is not None:
            self._report("info", names.LOG_CONNECTION_LEAK_RETURNED, conn_id, checkout, conn,
                         held_s=round(use_time, 3))

    def _checkouts(self) -> list[tuple[int, TracedCheckout]]:
        """The live checkouts the pool kept a stack for, by connection id."""
        pool = self._pool()
        if pool is None:
            return []
        spans = self._spans
        return [(c.connection_id, TracedCheckout(c.connection, c.stack, c.since, c.thread,
                                           spans.get(c.connection_id)))
                for c in pool.checkouts() if c.stack is not None]

    # -- listener methods (off the checkout path) ---------------------------------------------

    def on_discard(self, event: DiscardEvent) -> None:
        conn_id = event.connection_id
        span = self._spans.pop(conn_id, None)
        self._expected.pop(conn_id, None)
        reported = self._reported.pop(conn_id, None) is not None
        kept = event.checkout
        if event.reason != DiscardReason.GARBAGE_COLLECTED or kept is None \
                or kept.stack is None:
            return
        checkout = TracedCheckout(None, kept.stack, kept.since, kept.thread, span)
        if not reported:  # counted once, whether reported first or only now
            with self._lock:
                self.leak_count += 1
        leak = self._snapshot(conn_id, checkout, None, backend_pid=event.backend_pid)
        self.collected.append((monotonic(), leak))
        self._report("error", names.LOG_CONNECTION_LEAKED, conn_id, checkout, None,
                     backend_pid=event.backend_pid, held_s=leak.held_s,
                     hint="checked out, then dropped without putconn(): the garbage collector "
                          "closed it; return it with putconn() or `with pool.connection()`")

    def on_timeout(self, event: TimeoutEvent) -> None:
        holders = self.exhaustion_holders(event)
        if holders and hasattr(event.error, "add_note"):
            event.error.add_note(holders_note(holders))

    def on_close(self, event: CloseEvent) -> None:
        for conn_id, checkout in self._checkouts():
            self._report("warning", names.LOG_CONNECTION_LEAK_SUSPECTED, conn_id, checkout,
                         checkout.connection, held_s=round(monotonic() - checkout.since, 3),
                         when="pool_closed")

    # -- off the hot path --------------------------------------------------------------------

    def scan(self) -> None:
        """Report connections held past the threshold (background worker)."""
        threshold = self.threshold
        if threshold is None:
            return
        now = monotonic()
        for conn_id, checkout in self._checkouts():
            if now - checkout.since < threshold or conn_id in self._reported \
                    or conn_id in self._expected:
                continue
            self._reported[conn_id] = checkout._replace(connection=None)
            with self._lock:
                self.leak_count += 1
            self._report("warning", names.LOG_CONNECTION_LEAK_SUSPECTED, conn_id, checkout,
                         checkout.connection, held_s=round(now - checkout.since, 3),
                         threshold_s=threshold)

    def expect_long_hold(self, conn: Any, reason: str = "expected long hold") -> None:
        """Do not report this checkout of ``conn`` as a leak, however long it is held."""
        pool = self._pool()
        if pool is None or not any(c.connection is conn for c in pool.checkouts()):
            raise ValueError("this connection is not checked out from the instrumented pool")
        self._expected[id(conn)] = reason

    def leaks(self, *, all_checkouts: bool = False) -> list[Leak]:
        """Connections held past the threshold (or every checked-out one), oldest first."""
        now = monotonic()
        threshold = self.threshold if self.threshold is not None else float("inf")
        out = [self._snapshot(conn_id, checkout, checkout.connection, now=now)
               for conn_id, checkout in self._checkouts()
               if all_checkouts or now - checkout.since >= threshold]
        return sorted(out, key=lambda leak: -leak.held_s)

    def holders(self) -> list[dict[str, object]]:
        """The top checkout sites holding connections: ``site``, ``count``, ``oldest_s`` and
        ``trace_ids``, the traces of the requests holding them (from the span each checkout
        already keeps: nothing more is paid at checkout)."""
        now = monotonic()
        return stacks.sites_summary([(stacks.site(c.frames), now - c.since, _trace_id(c))
                                     for c in (c for _, c in self._checkouts())])

    def exhaustion_holders(self, event: TimeoutEvent) -> list[dict[str, object]]:
        """:meth:`holders` when ``event``'s ``getconn`` gave up, made once per timeout: the
        note this detector adds to the error and the ``pool_exhausted`` log event
        (:class:`telemetry.logs.PoolLogs`) carry the same list, whichever asks first."""
        error = event.error
        last: _Holders | None = getattr(self._timeout, "last", None)
        if last is not None and last[0]() is error:
            return last[1]
        holders = self.holders()
        self._timeout.last = (weakref.ref(error), holders)
        return holders

    def checkouts_since(self, started: float) -> list[Leak]:
        """Connections checked out at or after ``started`` and still out (pytest plugin)."""
        now = monotonic()
        return [self._snapshot(conn_id, checkout, checkout.connection, now=now)
                for conn_id, checkout in self._checkouts()
                if checkout.since >= started and conn_id not in self._expected]

    def collected_since(self, started: float) -> list[Leak]:
        """Connections checked out and garbage-collected unreturned since ``started``."""
        # ``since``, not ``when - held_s``: held_s is rounded to the millisecond, enough to
        # move a checkout made just after ``started`` to just before it.
        return [leak for when, leak in list(self.collected)
                if when >= started and leak.since >= started]

    def _snapshot(self, conn_id: int, checkout: TracedCheckout, conn: Any, *,
                  now: float | None = None, backend_pid: int = 0) -> Leak:
        held = (monotonic() if now is None else now) - checkout.since
        frames, omitted = stacks.extract(checkout.frames)
        return Leak(conn_id, backend_pid or _backend_pid(conn), _thread_name(checkout),
                    round(held, 3), stacks.site(checkout.frames),
                    stacks.format_stack(checkout.frames), _trace_id(checkout),
                    conn_id in self._reported, self._expected.get(conn_id), frames, omitted,
                    checkout.since)

    def _report(self, level: str, event: str, conn_id: int, checkout: TracedCheckout, conn: Any,
                *, backend_pid: int = 0, **fields: Any) -> None:
        # Formatted here, only when a report is made. The stack goes out twice, each in
        # structlog's own convention: ``stack``, a string that ConsoleRenderer prints as a
        # block after the event line (as it does StackInfoRenderer's), and
        # ``checkout_frames``, a list of dicts that JSONRenderer keeps structured (its repr,
        # on the console line, is short).
        frames, omitted = stacks.extract(checkout.frames)
        self._log(level, event, thread=_thread_name(checkout),
                  backend_pid=backend_pid or _backend_pid(conn),
                  site=stacks.site(checkout.frames),
                  checkout_trace_id=_trace_id(checkout),
                  checkout_frames=stacks.FrameList(f.as_dict() for f in frames),
                  stack=stacks.format_block(frames, omitted), **fields)


def holders_note(holders: list[dict[str, object]]) -> str:
    """The note added to ``PoolExhausted``: per holding site, its count, age and traces."""
    parts = []
    for h in holders:
        trace_ids = h.get("trace_ids")
        traces = f"; traces {', '.join(map(str, trace_ids))}" if isinstance(
            trace_ids, list) and trace_ids else ""
        parts.append(f"{h['count']} held by {h['site']} (oldest {h['oldest_s']} s{traces})")
    return f"connections checked out by: {'; '.join(parts)}"


def _thread_name(checkout: TracedCheckout) -> str:
    thread = checkout.thread
    if thread is None:
        return "<unknown>"
    return thread.name if thread.is_alive() else f"{thread.name} (ended)"


def _trace_id(checkout: TracedCheckout) -> str | None:
    if checkout.span is None:
        return None
    context = checkout.span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def _backend_pid(conn: Any) -> int:
    if conn is None:
        return 0
    try:
        return int(conn.info.backend_pid)
    except Exception:  # noqa: BLE001 - a closed connection has no backend any more
        return 0


if TYPE_CHECKING:  # pragma: no cover - mypy checks that the detector fits the plugin's seam
    _seam: LeakChecker = LeakDetector(None, print, ConnectionPool())
