"""An interrupt at every step of getconn and putconn, and from every user callback, never costs
the pool a slot (issue 23: P1, P3, Q1 and the suspicions it lists).

Injection: :class:`~tests.support.invariants.StepTracer` counts the pool's own steps
(``'line'`` trace events in psycopg2_pool's code) on the thread under test and, at the k-th,
raises a KeyboardInterrupt subclass where CPython would deliver a signal that arrived there
(the next entry to a Python function or return from a C call; see StepTracer), for
k = 1, 2, 3, ... until a call completes untouched. Each run has a fresh pool on the real
server; afterwards the test drops every connection it held (``del``, ``gc.collect()``) and
checks the invariant of :func:`~tests.support.invariants.invariant_problems`: the books
balance, nothing is checked out, no watchdog deadline is left armed, and ``maxconn``
distinct usable connections can be had at once. Each run is bounded in time (on a thread of
its own): a hang fails the test with the stack where it hung.

Preemption: the same tracer, at the k-th step, runs an action on another thread (``close()``,
a lock-free ``getconn``, a ``putconn``) while the thread under test is held there: every
interleaving of that action with the call, one per step, deterministically.

Callbacks: listeners, ``reset``, ``configure`` and ``check`` raise KeyboardInterrupt,
SystemExit or a plain Exception once, on each path that calls them.

Sections: each test runs twice, with the fast paths' critical sections as the package runs
them (C, ``psycopg2_pool._critical``, one step each: nothing can land inside) and with their
Python reference (:class:`psycopg2_pool.critical.PyFastPaths`, what runs where the C part was
not built), whose every step is walked like the rest of the pool's code.

The number of steps of each call today is in the comment of its scenario and in the session's
summary of figures ("interruptions: ..."). A failure lists the steps that broke the invariant,
up to a time budget: where the interrupt arrived (``file:line function: source`` of the
pool's line), where it landed, and what was wrong afterwards.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import psycopg2_pool.pool
from psycopg2_pool import (
    ConnectionPool,
    PoolClosed,
    PoolExhausted,
    PoolListener,
    check_connection,
    critical,
)
from tests.conftest import SLOW_TESTS_ENV
from tests.support.invariants import (
    Injected,
    Preemption,
    StepTracer,
    close_bounded,
    invariant_problems,
    on_thread,
    settled,
)
from tests.support.pools import settled_backend_count, wait_until
from tests.support.system import REQUIRE_BINARIES_ENV

#: A run (pool, call, checks) that takes longer hangs: it fails the test.
RUN_TIMEOUT = 20.0
#: Seconds a scenario may spend on steps that fail before it reports what it found.
BUDGET = 2.5
#: Seconds a helper thread that waits for a connection waits (a stranded one times out).
WAITER_TIMEOUT = 1.0
#: No call of the pool has that many steps: a tracer that never stops is a harness bug.
MAX_STEPS = 2000

Figure = Callable[[str], None]


@dataclass
class Ctx:
    """What every run of a scenario needs: the server, and a connection outside any pool."""

    dsn: str
    admin: Any


@dataclass
class Run:
    """One run of a scenario: its pool, the test's state, and what went wrong."""

    pool: ConnectionPool
    app: str
    state: dict[str, Any] = field(default_factory=dict)
    raised: type[BaseException] | None = None
    error: str | None = None
    problems: list[str] = field(default_factory=list)
    started: float = 0.0
    #: What the checks need after ``state`` is cleared (kept until the run is dropped).
    marks: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scenario:
    """A call under test and how to set it up and check it.

    ``prepare(run)`` (untraced) sets the pool up; ``act(run, arm)`` makes the call inside
    ``with arm():``; ``finish(run)`` (untraced) joins the test's helper threads and returns
    what they held; ``check(ctx, run)`` lists what is wrong afterwards (by default the
    invariant of an open pool).
    """

    name: str
    options: dict[str, Any]
    prepare: Callable[[Run], None]
    act: Callable[[Run, Callable[[], Any]], None]
    finish: Callable[[Run], None] = lambda run: None
    check: Callable[[Ctx, Run], list[str]] | None = None
    #: Errors the call may raise without an injection (e.g. PoolExhausted of a timeout).
    expected: tuple[type[BaseException], ...] = ()

    @property
    def maxconn(self) -> int:
        return int(self.options["maxconn"])


def reset_session(conn: Any) -> None:
    """A ``reset`` with a round trip, leaving no transaction open."""
    with conn.cursor() as cur:
        cur.execute("RESET ALL")
    conn.rollback()


def give_back(run: Run, what: Any) -> None:
    """Return connections the test still holds (a closed pool closes them)."""
    conns = what if isinstance(what, list) else [what]
    for conn in conns:
        if conn is not None:
            run.pool.putconn(conn)


def helper(run: Run, name: str, target: Callable[[], Any]) -> None:
    """Start ``target`` on a helper thread (untraced); its result or error lands in
    ``run.state[name]`` / ``run.state[name + '_error']``."""
    def body() -> None:
        try:
            run.state[name] = target()
        except BaseException as exc:  # noqa: BLE001 - reported by the scenario's finish
            run.state[name + "_error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=body, name=f"helper-{name}", daemon=True)
    run.state[name + "_thread"] = thread
    thread.start()


def join_helper(run: Run, name: str, timeout: float) -> None:
    """Join a helper; a hang or an error is a problem of the run; its connection goes back."""
    thread = run.state.pop(name + "_thread", None)
    if thread is None:
        return
    gc.collect()  # a connection the interrupted call dropped frees its slot for the helper
    thread.join(timeout)
    if thread.is_alive():
        run.problems.append(f"helper {name!r} still running after {timeout} s (stranded)")
        return
    error = run.state.pop(name + "_error", None)
    if error is not None:
        run.problems.append(f"helper {name!r} failed: {error}")
    give_back(run, run.state.pop(name, None))


def wait_for_waiter(pool: ConnectionPool, count: int = 1) -> None:
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] >= count, 5)


# -- the calls under test ------------------------------------------------------------------


def prepare_nothing(run: Run) -> None:
    run.pool.wait(5)


def act_getconn(run: Run, arm: Callable[[], Any], timeout: float | None = None) -> None:
    with arm():
        conn = run.pool.getconn(timeout=timeout)
    run.pool.putconn(conn)


def prepare_one_out(run: Run) -> None:
    run.pool.wait(5)
    run.state["conn"] = run.pool.getconn()


def prepare_one_in_transaction(run: Run) -> None:
    prepare_one_out(run)
    with run.state["conn"].cursor() as cur:
        cur.execute("SELECT 1")  # the transaction the return rolls back


def act_putconn(run: Run, arm: Callable[[], Any], close: bool = False) -> None:
    conn = run.state.pop("conn")
    with arm():
        run.pool.putconn(conn, close=close)


def prepare_one_out_read_only(run: Run) -> None:
    """One out, whose session reports ``default_transaction_read_only=on``: to the pool, its
    server lost the ``read-write`` role (the server itself stays writable for the others)."""
    prepare_one_out(run)
    conn = run.state["conn"]
    with conn.cursor() as cur:
        cur.execute("SET default_transaction_read_only = on")
    conn.commit()
    assert conn.get_parameter_status("default_transaction_read_only") == "on"


def act_drain(run: Run, arm: Callable[[], Any]) -> None:
    with arm():
        run.pool.drain()


def act_check(run: Run, arm: Callable[[], Any]) -> None:
    with arm():
        run.pool.check()


def prepare_aged_idle(run: Run) -> None:
    run.pool.wait(5)
    time.sleep(0.03)  # past check_idle_after=0.02: the checkout runs the health check


def prepare_all_out(run: Run) -> None:
    """Every connection checked out by the test (``held``)."""
    run.pool.wait(5)
    run.state["held"] = [run.pool.getconn(timeout=2) for _ in range(run.pool.maxconn)]


def prepare_waited_handover(run: Run) -> None:
    """All out; a helper returns one as soon as the call under test waits (or has ended)."""
    prepare_all_out(run)
    acted = run.state["acted"] = threading.Event()
    conn = run.state["held"].pop()

    def giver() -> None:
        deadline = time.monotonic() + 5
        while (not acted.is_set() and run.pool.get_stats()["requests_waiting"] < 1
               and time.monotonic() < deadline):
            time.sleep(0.0005)
        run.pool.putconn(conn)

    helper(run, "giver", giver)


def act_waiting_getconn(run: Run, arm: Callable[[], Any]) -> None:
    try:
        with arm():
            conn = run.pool.getconn(timeout=2)
    finally:
        run.state["acted"].set()
    run.pool.putconn(conn)


def finish_held(run: Run) -> None:
    for name in [k[:-7] for k in run.state if k.endswith("_thread")]:
        join_helper(run, name, WAITER_TIMEOUT + 3)
    give_back(run, run.state.pop("held", []))
    give_back(run, run.state.pop("conn", None))


def prepare_one_left_out(run: Run) -> None:
    """The idle connection checked out: a checkout with ``timeout=0`` opens its own."""
    run.pool.wait(5)
    run.state["held"] = [run.pool.getconn()]


def prepare_waiter(run: Run) -> None:
    """All out, and a helper waiting for one: the return under test hands it over."""
    prepare_all_out(run)
    run.state["conn"] = run.state["held"].pop()
    helper(run, "waiter", lambda: run.pool.getconn(timeout=WAITER_TIMEOUT))
    wait_for_waiter(run.pool)


INJECTED: list[Scenario] = [
    # (a) 14 steps today
    Scenario("a-fast-getconn", {"minconn": 1, "maxconn": 2}, prepare_nothing, act_getconn),
    # (b) 13 steps
    Scenario("b-fast-putconn", {"minconn": 1, "maxconn": 2}, prepare_one_out, act_putconn,
             finish_held),
    # (c) 61 steps: the rollback under the io_timeout watchdog
    Scenario("c-putconn-in-transaction", {"minconn": 1, "maxconn": 2},
             prepare_one_in_transaction, act_putconn, finish_held),
    # (d) 56 steps
    Scenario("d-putconn-with-reset", {"minconn": 1, "maxconn": 2, "reset": reset_session},
             prepare_one_out, act_putconn, finish_held),
    # (e) 56 steps each: the health check of every checkout, and of an idle one
    Scenario("e1-getconn-with-check", {"minconn": 1, "maxconn": 2, "check": check_connection},
             prepare_nothing, act_getconn),
    Scenario("e2-getconn-check-idle-after", {"minconn": 1, "maxconn": 2,
                                             "check_idle_after": 0.02},
             prepare_aged_idle, act_getconn),
    # (f) 66 steps: queued, then handed a connection by another thread's putconn
    Scenario("f-getconn-waits-handed-over", {"minconn": 1, "maxconn": 2, "timeout": 0.5},
             prepare_waited_handover, act_waiting_getconn, finish_held),
    # (g) 105 steps: no idle connection, timeout=0: it connects on the caller's thread
    Scenario("g-getconn-timeout0-opens", {"minconn": 1, "maxconn": 3},
             prepare_one_left_out,
             lambda run, arm: act_getconn(run, arm, timeout=0), finish_held),
    # (h) 29 steps: the return hands its connection to a waiting thread
    Scenario("h-putconn-hands-over", {"minconn": 1, "maxconn": 2, "timeout": 0.5},
             prepare_waiter, act_putconn, finish_held),
    # (j) a return that notices its server lost the pool's role: every connection to it is
    # swept (the idle one closed by a background task), this one discarded
    Scenario("j-putconn-role-changed", {"minconn": 2, "maxconn": 3,
                                        "target_session_attrs": "read-write"},
             prepare_one_out_read_only, act_putconn, finish_held),
    # (k) drain(): the idle one closed now, the held one doomed (closed on its return)
    Scenario("k-drain", {"minconn": 2, "maxconn": 3}, prepare_one_out, act_drain,
             finish_held),
    # (l) check(): each idle connection taken out, checked (a round trip), put back
    Scenario("l-check", {"minconn": 2, "maxconn": 3}, prepare_nothing, act_check),
    # (i) close(): see test_interrupt_at_every_step_of_close and the preemptions below
]


# -- the runs ------------------------------------------------------------------------------


def run_once(ctx: Ctx, scenario: Scenario,
             arm: Callable[[Run], contextlib.AbstractContextManager[Any]],
             fired: Callable[[], str | None], injected: type[BaseException] | None) -> Run:
    """Set up, call under ``arm(run)``, clean up, check; on the calling thread."""
    app = f"t-int-{uuid.uuid4().hex[:10]}"
    run = Run(ConnectionPool(dsn=ctx.dsn, application_name=app, **scenario.options), app)
    try:
        scenario.prepare(run)
        run.started = time.monotonic()
        try:
            scenario.act(run, lambda: arm(run))
        except BaseException as exc:  # noqa: BLE001 - judged below
            run.raised, run.error = type(exc), f"{type(exc).__name__}: {exc}"
        where = fired()
        if injected is not None and where is not None:
            if run.raised is None:
                run.problems.append(f"the injected {injected.__name__} was swallowed")
            elif not issubclass(run.raised, injected):
                run.problems.append(f"raised {run.error} instead of the injected "
                                    f"{injected.__name__}")
        elif run.raised is not None and not issubclass(run.raised, scenario.expected):
            run.problems.append(f"raised {run.error}")
        scenario.finish(run)
        run.state.clear()
        if scenario.check is not None:
            run.problems += scenario.check(ctx, run)
        else:
            run.problems += invariant_problems(run.pool, scenario.maxconn)
    finally:
        problem = close_bounded(run.pool)
        if problem:
            run.problems.append(problem)
    return run


@dataclass
class Failure:
    """A step whose run broke the invariant: where the interrupt (or the switch to another
    thread) arrived, where it landed, and what was wrong afterwards."""

    step: int
    arrived: str | None
    landed: str | None
    problems: list[str]


@dataclass
class Exploration:
    """What stepping through a call found."""

    steps: int = 0
    failures: list[Failure] = field(default_factory=list)
    truncated: str = ""

    def report(self, name: str) -> str:
        """The failing steps, those that landed at the same point as one."""
        lines = [f"{name}: {len(self.failures)} of {self.steps} steps break the invariant"
                 f"{self.truncated}"]
        groups: list[list[Failure]] = []
        for failure in self.failures:
            last = groups[-1][-1] if groups else None
            if last is not None and last.landed == failure.landed \
                    and last.step == failure.step - 1:
                groups[-1].append(failure)
            else:
                groups.append([failure])
        for group in groups:
            first, last = group[0], group[-1]
            steps = (f"step {first.step}" if first is last
                     else f"steps {first.step}-{last.step}")
            lines.append(f"- {steps}, from {first.arrived}\n    landed {first.landed}:\n    "
                         + "\n    ".join(shorten(p) for p in first.problems))
        return "\n".join(lines)


def shorten(problem: str, width: int = 300) -> str:
    """A problem on a line or two (the pool's messages run long; hangs keep their stack)."""
    if "HUNG" in problem or len(problem) <= width:
        return problem
    return problem[:width] + " [...]"


def explore(ctx: Ctx, scenario: Scenario, *,
            action: Callable[[Run], Callable[[], None]] | None = None,
            stop: Callable[[Run], bool] = lambda run: False) -> Exploration:
    """Run ``scenario`` with its call stopped at step 1, 2, 3, ... (an interrupt, or
    ``action(run)`` when given: a preemption) until it completes untouched, or ``stop(run)``
    says the later steps do not matter."""
    found = Exploration()
    baseline = StepTracer(0)
    outcome = on_thread(lambda: run_once(ctx, scenario, lambda run: baseline.armed(),
                                         lambda: None, None), RUN_TIMEOUT)
    if not outcome.finished or outcome.error or outcome.result.problems:
        pytest.fail(f"{scenario.name} fails without any injection: "
                    f"{outcome.error or (outcome.result and outcome.result.problems)}"
                    f"\n{outcome.stack}")
    found.steps = baseline.steps
    started = time.monotonic()
    for k in range(1, MAX_STEPS):
        tracer = StepTracer(k)

        def arm(run: Run, tracer: StepTracer = tracer
                ) -> contextlib.AbstractContextManager[Any]:
            if action is not None:
                tracer.action = action(run)
            return tracer.armed()

        outcome = on_thread(
            lambda tracer=tracer, arm=arm: run_once(  # type: ignore[misc]
                ctx, scenario, arm, lambda: tracer.fired,
                None if action is not None else Injected),
            RUN_TIMEOUT)
        if not outcome.finished:
            found.failures.append(Failure(k, tracer.fired, tracer.delivered,
                                          [f"HUNG for {RUN_TIMEOUT} s at\n{outcome.stack}"]))
            break
        run: Run | None = outcome.result
        if outcome.error:
            found.failures.append(Failure(k, tracer.fired, tracer.delivered,
                                          [f"the run failed: {outcome.error}"]))
        if tracer.fired is None:
            found.steps = k - 1
            break
        if run is not None and run.problems:
            found.failures.append(Failure(k, tracer.fired, tracer.delivered, run.problems))
        if run is not None and stop(run):
            found.steps = k
            found.truncated = f" (stopped at step {k}: the later ones come after the race)"
            break
        if time.monotonic() - started > BUDGET and found.failures:
            found.truncated = (f" (stopped at step {k} of {found.steps} after {BUDGET} s)")
            break
    else:
        pytest.fail(f"{scenario.name}: more than {MAX_STEPS} steps")
    return found


def conclude(found: Exploration, scenario: Scenario, figure: Figure, family: str) -> None:
    """Report the scenario's steps in the session's figures; fail with every broken step."""
    figure(f"{family}: {scenario.name}: {found.steps} steps, "
           f"{len(found.failures)} broke the invariant")
    if found.failures:
        pytest.fail(found.report(scenario.name), pytrace=False)


@pytest.fixture(params=["C", "Python"], ids=lambda p: f"sections-{p}")
def ctx(request: pytest.FixtureRequest, dsn: str, admin: Any,
        monkeypatch: pytest.MonkeyPatch) -> Ctx:
    """The server, with the pools made here running their critical sections in C or in
    Python (see the module docstring)."""
    if request.param == "Python" and os.environ.get(SLOW_TESTS_ENV) != "1":
        scenario = getattr(request.node, "callspec", None) and \
            request.node.callspec.params.get("scenario")
        if getattr(scenario, "name", None) not in DEFAULT_SUITE:
            pytest.skip(f"slow: the Python sections under this walk run in .ci/run's slow set "
                        f"(set {SLOW_TESTS_ENV}=1 to run them here); the default suite walks "
                        f"them in {', '.join(DEFAULT_SUITE)}")
    if request.param == "Python":  # private: the classes pool.py makes its sections with
        monkeypatch.setattr(psycopg2_pool.pool, "_FastPaths", critical.PyFastPaths)
        monkeypatch.setattr(psycopg2_pool.pool, "_Lock", threading.Lock)
    elif not critical.ACCELERATED:
        message = "psycopg2_pool._critical is not built here (or PSYCOPG2_POOL_PURE_PYTHON=1)"
        if os.environ.get(REQUIRE_BINARIES_ENV) == "1":
            pytest.fail(f"{message}, and {REQUIRE_BINARIES_ENV}=1 forbids skipping")
        pytest.skip(message)
    return Ctx(dsn, admin)


#: The scenarios of the default suite (the shortest, one per fast path); the others run in
#: .ci/run's slow set (PSYCOPG2_POOL_SLOW_TESTS=1), with the preemption walks below.
DEFAULT_SUITE = ("a-fast-getconn", "b-fast-putconn")


@pytest.mark.parametrize("scenario", [
    s if s.name in DEFAULT_SUITE else pytest.param(s, marks=pytest.mark.slow)
    for s in INJECTED], ids=lambda s: s.name)
def test_interrupt_at_every_step(ctx: Ctx, scenario: Scenario, figure: Figure) -> None:
    found = explore(ctx, scenario)
    conclude(found, scenario, figure, "interruptions")


# -- (i) close(), interrupted or racing with a return ---------------------------------------


def closed_problems(ctx: Ctx, run: Run) -> list[str]:
    """A closed pool keeps nothing open: no connection in its books, none on the server."""
    gc.collect()
    problems = []
    stats = settled(run.pool, 1.0)
    if stats["pool_size"] or stats["pool_available"] or list(run.pool.idle_connections):
        problems.append(f"closed pool still has connections: size={stats['pool_size']} "
                        f"available={stats['pool_available']} "
                        f"idle={len(run.pool.idle_connections)}")
    returned = run.marks.pop("returned", None)
    if returned is not None and not returned.closed:
        problems.append("a connection returned to the closed pool was left open")
    del returned
    sessions = settled_backend_count(ctx.admin, run.app, 0, timeout=2)
    if sessions:
        problems.append(f"{sessions} server session(s) of the closed pool left open")
    return problems


def act_close(run: Run, arm: Callable[[], Any]) -> None:
    with arm():
        run.pool.close()


def finish_after_close(run: Run) -> None:
    """Return what is out, then close() again: it must finish what the interrupted one left."""
    conn = run.state.pop("conn", None)
    if conn is not None:
        run.marks["returned"] = conn
        run.pool.putconn(conn)
    run.pool.close()


@pytest.mark.slow  # default suite under 3 minutes: .ci/run's slow set runs it
def test_interrupt_at_every_step_of_close(ctx: Ctx, figure: Figure) -> None:
    """(i) close() interrupted at each step, with a connection out and one idle; then the
    connection comes back and close() is called again: nothing may be left open."""
    # 56 steps today
    scenario = Scenario("i-close-interrupted", {"minconn": 2, "maxconn": 3},
                        prepare_one_out, act_close, finish_after_close, check=closed_problems)
    found = explore(ctx, scenario)
    conclude(found, scenario, figure, "interruptions")


# -- preemptions: another thread acts while the call is held at each step -------------------


def preempt(call: Callable[[Run], Any], wait: float = 0.1) -> Callable[[Run], Preemption]:
    """The action of a preemption: ``call(run)`` on a helper thread."""
    def make(run: Run) -> Preemption:
        action = Preemption(run.pool, lambda: call(run), wait)
        run.state["preemption"] = action
        return action

    return make


def fired_at(run: Run) -> float | None:
    """When the preempting call started (None: the call under test ended before the step)."""
    action: Preemption | None = run.state.get("preemption")
    return action.fired_at if action is not None and action.thread is not None else None


def finish_preemption(run: Run) -> None:
    action: Preemption | None = run.state.pop("preemption", None)
    if action is not None:
        run.marks["fired_at"] = action.fired_at if action.thread is not None else None
        if not action.join(WAITER_TIMEOUT + 3):
            run.problems.append("the preempting call is still running (stranded)")
        elif action.error is not None:
            run.problems.append(f"the preempting call failed: {action.error}")
        result, action.result = action.result, None
        if result is not None:
            run.pool.putconn(result)
        del result
    finish_held(run)


def act_putconn_remember(run: Run, arm: Callable[[], Any]) -> None:
    run.marks["returned"] = run.state["conn"]
    act_putconn(run, arm)


def finish_close(run: Run) -> None:
    finish_preemption(run)
    run.pool.close()  # when the preemption never ran (no more steps)


def test_return_preempted_by_close_at_every_step(ctx: Ctx, figure: Figure) -> None:
    """(i) close() racing with a return, at each step of the return. Settles the suspicion
    "a connection made idle after a concurrent close() and never closed"."""
    # 13 steps today
    scenario = Scenario("i-return-preempted-by-close", {"minconn": 1, "maxconn": 2},
                        prepare_one_out, act_putconn_remember, finish_close,
                        check=closed_problems)
    found = explore(ctx, scenario, action=preempt(lambda run: run.pool.close()))
    conclude(found, scenario, figure, "preemptions")


def drained_problems(ctx: Ctx, run: Run) -> list[str]:
    """After a return raced with drain(): the returned connection is not kept (it is closed,
    as drained), no idle connection is doomed, and the books balance."""
    returned = run.marks.pop("returned", None)
    drained = run.marks.get("fired_at") is not None  # the preemption ran: drain() did
    problems = []
    if drained and returned is not None and returned in run.pool.idle_connections:
        problems.append("the connection returned during drain() was kept idle")
    doomed = [c for c in run.pool.idle_connections if c._pool_rec.doomed is not None]
    if doomed:  # private: what drain() marks (replacement.py)
        problems.append(f"{len(doomed)} doomed connection(s) idle after drain()")
    del returned, doomed
    return problems + invariant_problems(run.pool, 2)


def test_return_preempted_by_a_drain_at_every_step(ctx: Ctx, figure: Figure) -> None:
    """drain() racing with a return, at each step of the return: the connection drain()
    dooms is closed at that return, never kept idle (found by review: a plain return tested
    its expiry before drain() doomed it, and the section kept it)."""
    scenario = Scenario("return-preempted-by-drain", {"minconn": 1, "maxconn": 2},
                        prepare_one_out, act_putconn_remember, finish_preemption,
                        check=drained_problems)
    found = explore(ctx, scenario, action=preempt(lambda run: run.pool.drain()))
    conclude(found, scenario, figure, "preemptions")


CLOSING_WAIT = 0.5


def act_getconn_on_closing(run: Run, arm: Callable[[], Any]) -> None:
    deadline = run.marks["deadline"] = time.monotonic() + CLOSING_WAIT
    try:
        with arm():
            conn = run.pool.getconn(timeout=CLOSING_WAIT)
    except PoolClosed:
        return
    except PoolExhausted:
        closed = fired_at(run)
        if closed is not None and closed < deadline - 0.05:
            run.problems.append(f"close() ran {deadline - closed:.2f} s before the wait's end, "
                                f"yet the caller timed out (PoolExhausted) instead of getting "
                                f"PoolClosed")
        return
    run.pool.putconn(conn)
    run.problems.append("a connection was handed out although the only one was checked out")


def waited_past_deadline(run: Run) -> bool:
    """Whether the preemption came after the call's wait had ended: later steps only run
    after the timeout."""
    when = run.marks.get("fired_at")
    return when is not None and when >= run.marks.get("deadline", float("inf")) - 0.05


@pytest.mark.slow
def test_waiting_getconn_preempted_by_close_at_every_step(ctx: Ctx, figure: Figure) -> None:
    """Settles the suspicion "a caller that queues on a pool closed meanwhile times out
    instead of getting PoolClosed": close() at each step of a checkout that must wait."""
    # 55 steps today
    scenario = Scenario("i-waiting-getconn-preempted-by-close",
                        {"minconn": 1, "maxconn": 1}, prepare_one_out, act_getconn_on_closing,
                        finish_close, check=closed_problems)
    found = explore(ctx, scenario, action=preempt(lambda run: run.pool.close()),
                    stop=waited_past_deadline)
    conclude(found, scenario, figure, "preemptions")


def make_check_failing(bad: set[int]) -> Callable[[Any], None]:
    """A health check that fails for the connections whose ``id()`` is in ``bad``."""
    def check(conn: Any) -> None:
        if id(conn) in bad:
            # Once: a connection opened later may be given the same id() (the same address).
            bad.discard(id(conn))
            raise RuntimeError("the test marked this connection bad")
        check_connection(conn)

    return check


def prepare_newest_bad(run: Run, bad: set[int]) -> None:
    """Two idle connections; the newest (taken first: LIFO) fails its health check, so the
    checkout discards it and goes on to take the other on its slow path."""
    run.pool.wait(5)
    assert wait_until(lambda: len(run.pool.idle_connections) == 2, 5)
    bad.clear()
    bad.add(id(run.pool.idle_connections[-1]))


@pytest.mark.slow
def test_slow_checkout_preempted_by_a_lock_free_getconn_at_every_step(
        ctx: Ctx, figure: Figure) -> None:
    """Settles the ``IndexError: pop from an empty deque`` out of ``_take_one_idle`` seen
    once under stress: the slow path sees an idle connection under the lock, a lock-free
    checkout takes it, the slow path pops an empty deque."""
    # 163 steps today
    bad: set[int] = set()
    scenario = Scenario("slow-checkout-vs-lock-free-getconn",
                        {"minconn": 2, "maxconn": 3, "check": make_check_failing(bad),
                         "timeout": 0.5},
                        lambda run: prepare_newest_bad(run, bad), act_getconn,
                        finish_preemption)
    found = explore(ctx, scenario, action=preempt(lambda run: run.pool.getconn(timeout=0)))
    conclude(found, scenario, figure, "preemptions")


LOST_WAKEUP_WAIT = 0.3


def act_getconn_while_returned(run: Run, arm: Callable[[], Any]) -> None:
    """A checkout on a full pool while (at the step) another thread returns a connection."""
    deadline = run.marks["deadline"] = time.monotonic() + LOST_WAKEUP_WAIT
    try:
        with arm():
            conn = run.pool.getconn(timeout=LOST_WAKEUP_WAIT)
    except PoolExhausted as exc:
        returned = fired_at(run)
        if returned is not None and returned < deadline - 0.05:
            run.problems.append(f"lost wake-up: a connection was returned "
                                f"{deadline - returned:.2f} s before the wait's end, yet "
                                f"PoolExhausted ({exc})")
        return
    run.pool.putconn(conn)


def return_held(run: Run) -> None:
    run.pool.putconn(run.state["held"].pop())


@pytest.mark.slow
def test_checkout_preempted_by_a_return_at_every_step(ctx: Ctx, figure: Figure) -> None:
    """P3, deterministically: at each step of a checkout on a full pool, another thread
    returns a connection; the checkout must get it, whatever step it was at."""
    # 104 steps today (those after the wait are skipped)
    scenario = Scenario("lost-wakeup-getconn-vs-putconn", {"minconn": 1, "maxconn": 1},
                        prepare_all_out, act_getconn_while_returned, finish_preemption)
    found = explore(ctx, scenario, action=preempt(return_held, wait=0.05),
                    stop=waited_past_deadline)
    conclude(found, scenario, figure, "preemptions")


def test_return_preempted_by_a_checkout_at_every_step(ctx: Ctx, figure: Figure) -> None:
    """P3 the other way round: at each step of a return, another thread asks the full pool
    for a connection; it must be handed this one (or find it idle), not time out."""
    # 13 steps today
    scenario = Scenario("lost-wakeup-putconn-vs-getconn", {"minconn": 1, "maxconn": 1},
                        prepare_one_out, act_putconn, finish_preemption)
    found = explore(ctx, scenario, action=preempt(
        lambda run: run.pool.getconn(timeout=WAITER_TIMEOUT), wait=0.05))
    conclude(found, scenario, figure, "preemptions")


# -- user callbacks that raise --------------------------------------------------------------


class Raiser:
    """User callbacks that raise ``exc`` once, on the first call while armed."""

    def __init__(self, exc: type[BaseException]) -> None:
        self.exc = exc
        self.active = False
        self.calls = 0
        self._lock = threading.Lock()

    def hit(self, what: str) -> None:
        with self._lock:
            if not self.active:
                return
            self.active = False
            self.calls += 1
        raise self.exc(f"raised by the test's {what}")

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def listener(self, hook: str) -> object:
        raiser = self

        class Listener(PoolListener):
            pass

        def method(self: Any, *args: Any) -> None:
            raiser.hit(hook)

        setattr(Listener, hook, method)
        return Listener()

    def check(self, conn: Any) -> None:
        self.hit("check")
        check_connection(conn)

    def reset(self, conn: Any) -> None:
        self.hit("reset")
        reset_session(conn)

    def configure(self, conn: Any) -> None:
        self.hit("configure")


@dataclass
class Path:
    """A call that reaches a callback: its pool, set-up, call and finish."""

    name: str
    options: dict[str, Any]
    prepare: Callable[[Run], None]
    act: Callable[[Run, Callable[[], Any]], None]
    finish: Callable[[Run], None] = finish_held
    expected: tuple[type[BaseException], ...] = ()


def prepare_exhausted(run: Run) -> None:
    prepare_all_out(run)


def act_getconn_timeout(timeout: float) -> Callable[[Run, Callable[[], Any]], None]:
    return lambda run, arm: act_getconn(run, arm, timeout=timeout)


def act_waits_for_background_open(run: Run, arm: Callable[[], Any]) -> None:
    """The idle connection is held: a checkout that may wait gets one opened in the
    background (where on_connect and configure run, on a scheduler worker)."""
    act_getconn(run, arm, timeout=2)


def prepare_hand_over(run: Run) -> None:
    prepare_waited_handover(run)


PATHS = {
    "getconn-idle": Path("getconn-idle", {"minconn": 1, "maxconn": 2}, prepare_nothing,
                         act_getconn),
    "getconn-opens": Path("getconn-opens", {"minconn": 1, "maxconn": 3},
                          prepare_one_left_out, act_getconn_timeout(0)),
    "getconn-background-open": Path("getconn-background-open",
                                    {"minconn": 1, "maxconn": 2, "timeout": 0.5},
                                    prepare_one_left_out, act_waits_for_background_open),
    "getconn-handed-over": Path("getconn-handed-over",
                                {"minconn": 1, "maxconn": 2, "timeout": 0.5},
                                prepare_hand_over, act_waiting_getconn),
    "getconn-exhausted": Path("getconn-exhausted", {"minconn": 1, "maxconn": 1},
                              prepare_exhausted, act_getconn_timeout(0),
                              expected=(PoolExhausted,)),
    "getconn-times-out": Path("getconn-times-out", {"minconn": 1, "maxconn": 1},
                              prepare_exhausted, act_getconn_timeout(0.05),
                              expected=(PoolExhausted,)),
    "getconn-check-fails": Path("getconn-check-fails", {"minconn": 2, "maxconn": 3},
                                prepare_nothing, act_getconn),
    "putconn-idle": Path("putconn-idle", {"minconn": 1, "maxconn": 2}, prepare_one_out,
                         act_putconn),
    "putconn-in-transaction": Path("putconn-in-transaction", {"minconn": 1, "maxconn": 2},
                                   prepare_one_in_transaction, act_putconn),
    "putconn-hands-over": Path("putconn-hands-over",
                               {"minconn": 1, "maxconn": 2, "timeout": 0.5},
                               prepare_waiter, act_putconn),
    "putconn-close": Path("putconn-close", {"minconn": 1, "maxconn": 2}, prepare_one_out,
                          lambda run, arm: act_putconn(run, arm, close=True)),
}

#: (callback, path): every path on which each callback runs on the thread under test, and
#: the background open for on_connect and configure.
CALLBACK_CASES = [
    ("on_checkout", "getconn-idle"),
    ("on_checkout", "getconn-opens"),
    ("on_checkout", "getconn-handed-over"),
    ("on_checkout_fields", "getconn-idle"),
    ("on_checkin", "putconn-idle"),
    ("on_checkin", "putconn-in-transaction"),
    ("on_checkin", "putconn-hands-over"),
    ("on_checkin_fields", "putconn-idle"),
    ("on_discard", "putconn-close"),
    ("on_discard", "getconn-check-fails"),
    ("on_connect", "getconn-opens"),
    ("on_connect", "getconn-background-open"),
    ("on_timeout", "getconn-exhausted"),
    ("on_timeout", "getconn-times-out"),
    ("reset", "putconn-idle"),
    ("reset", "putconn-in-transaction"),
    ("configure", "getconn-opens"),
    ("configure", "getconn-background-open"),
    ("check", "getconn-idle"),
    ("check", "getconn-handed-over"),  # Q1: a waiter's connection is health-checked too
]

EXCEPTIONS = {"KeyboardInterrupt": Injected, "SystemExit": SystemExit,
              "Exception": RuntimeError}


@pytest.mark.parametrize("exc_name", list(EXCEPTIONS))
@pytest.mark.parametrize(("callback", "path_name"), CALLBACK_CASES,
                         ids=[f"{c}-{p}" for c, p in CALLBACK_CASES])
def test_raising_callback(ctx: Ctx, callback: str, path_name: str, exc_name: str) -> None:
    exc = EXCEPTIONS[exc_name]
    raiser = Raiser(exc)
    path = PATHS[path_name]
    options = dict(path.options)
    if callback in ("reset", "check", "configure"):
        options[callback] = getattr(raiser, callback)
    bad: set[int] = set()
    if path_name == "getconn-check-fails":
        options["check"] = make_check_failing(bad)

    def prepare(run: Run) -> None:
        if callback.startswith("on_"):
            run.pool.add_listener(raiser.listener(callback))
        path.prepare(run)
        if path_name == "getconn-check-fails":
            prepare_newest_bad(run, bad)

    # A plain Exception from a listener, reset or check never reaches the caller; one from
    # configure fails the checkout that opens (a background open retries instead).
    may_raise: tuple[type[BaseException], ...] = path.expected
    if issubclass(exc, KeyboardInterrupt) or exc is SystemExit or (
            callback == "configure" and path_name == "getconn-opens"):
        may_raise += (exc,)
    scenario = Scenario(f"{callback}-{path_name}-{exc_name}", options, prepare, path.act,
                        path.finish, expected=may_raise)
    outcome = on_thread(lambda: run_once(ctx, scenario, lambda run: raiser.armed(),
                                         lambda: None, None), RUN_TIMEOUT)
    assert outcome.finished, f"hung:\n{outcome.stack}"
    assert outcome.error is None, outcome.error
    run: Run = outcome.result
    problems = list(run.problems)
    if raiser.calls != 1:
        problems.append(f"the {callback} callback was not called on this path")
    assert not problems, f"{scenario.name}: " + "; ".join(problems)


# -- a callback that raises in the background ------------------------------------------------


def uncounted_workers() -> int:
    """Scheduler workers counted but not running: ``SCHEDULER.workers`` (public) minus the
    threads alive whose name says they are upkeep workers (``psycopg2_pool-upkeep`` today)."""
    from psycopg2_pool.scheduler import SCHEDULER

    alive = [t for t in threading.enumerate() if "upkeep" in t.name and t.is_alive()]
    return SCHEDULER.workers - len(alive)


@pytest.mark.parametrize("exc_name", list(EXCEPTIONS))
def test_on_discard_raising_during_idle_pruning_does_not_stop_it(
        make_pool: Callable[..., ConnectionPool], exc_name: str) -> None:
    """P5/P8 through a listener: idle pruning runs on a scheduler worker; an on_discard that
    raises there once must neither end the pruning for good nor kill the worker uncounted."""
    uncounted = uncounted_workers()
    raiser = Raiser(EXCEPTIONS[exc_name])
    pool = make_pool(1, 3, idle_timeout=0.2)
    pool.add_listener(raiser.listener("on_discard"))

    def grow_then_idle() -> None:
        conns = [pool.getconn(timeout=2) for _ in range(3)]
        for conn in conns:
            pool.putconn(conn)

    grow_then_idle()
    with raiser.armed():
        assert wait_until(lambda: raiser.calls == 1, 3), "the pruning never ran"
    assert wait_until(lambda: pool.get_stats()["pool_size"] == 1, 3), pool.get_stats()
    pruned = pool.get_stats()["discarded_idle_timeout"]
    grow_then_idle()  # two more past minconn: the pruning must still come for them
    assert wait_until(lambda: pool.get_stats()["discarded_idle_timeout"] >= pruned + 2, 3), (
        f"idle pruning stopped after a listener raised {exc_name}: {pool.get_stats()}")
    assert wait_until(lambda: uncounted_workers() <= uncounted, 2), (
        f"a scheduler worker died uncounted: {uncounted_workers() - uncounted} more counted "
        f"than running")
