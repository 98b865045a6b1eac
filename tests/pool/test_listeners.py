"""psycopg2_pool.events: what listeners receive, and that they cannot break the pool."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest

from psycopg2_pool import PoolExhausted
from psycopg2_pool.events import (
    CheckinEvent,
    CheckoutEvent,
    CloseEvent,
    ConnectEvent,
    DiscardEvent,
    DiscardReason,
    PoolListener,
    TimeoutEvent,
)
from tests.support.pools import NOWHERE, MakePool, getconn_while_returned, wait_until


def within(seconds: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` on a daemon thread; fail (instead of hanging) if it does not return."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not return within {seconds} s "
                    f"(deadlock)", pytrace=False)
    if "error" in box:
        raise box["error"]
    return box.get("result")


class Recorder(PoolListener):
    """Keeps every event, thread-safely."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.lock = threading.Lock()

    def _add(self, event: Any) -> None:
        with self.lock:
            self.events.append(event)

    on_connect = on_checkout = on_checkin = on_timeout = on_discard = on_close = _add

    def of(self, kind: type) -> list[Any]:
        with self.lock:
            return [e for e in self.events if isinstance(e, kind)]

    def kinds(self) -> list[str]:
        with self.lock:
            return [type(e).__name__ for e in self.events]



def terminate(admin: Any, pid: int) -> None:
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            if cur.fetchone()[0] == 0:
                return
        time.sleep(0.01)
    raise AssertionError(f"backend {pid} did not exit")


def test_connect_checkout_checkin(make_pool: MakePool) -> None:
    pool = make_pool(0, 2)
    rec = Recorder()
    pool.add_listener(rec)
    assert pool.listeners == (rec,)
    conn = pool.getconn()
    time.sleep(0.05)
    pool.putconn(conn)
    again = pool.getconn()  # from the idle queue
    pool.putconn(again)
    assert rec.kinds() == ["ConnectEvent", "CheckoutEvent", "CheckinEvent",
                           "CheckoutEvent", "CheckinEvent"]
    (connect,) = rec.of(ConnectEvent)
    assert connect.pool is pool
    assert connect.connection is conn
    assert connect.duration > 0
    assert connect.error is None
    opened, reused = rec.of(CheckoutEvent)
    for checkout in (opened, reused):
        assert checkout.pool is pool
        assert checkout.connection is conn
        assert checkout.waited is False
    assert opened.opened is True  # nothing idle: getconn opened it, and its wait covers that
    assert 0 < opened.wait_time <= connect.duration + 0.05
    assert reused.opened is False
    assert reused.wait_time == 0.0
    first, second = rec.of(CheckinEvent)
    assert first.connection is conn
    assert first.use_time >= 0.05
    assert first.kept is True
    assert first.reason is None
    assert second.use_time < first.use_time


def test_events_of_a_known_sequence(make_pool: MakePool) -> None:
    """One connection opened, checked out, waited for in vain, returned, checked out again,
    returned with close=True, then the pool closed: every event in that order, each naming the
    pool and the one connection."""
    pool = make_pool(0, 1, timeout=0.1)
    rec = Recorder()
    pool.add_listener(rec)
    conn = pool.getconn(timeout=0)  # opened here: with a timeout it would wait for the open
    with pytest.raises(PoolExhausted) as raised:
        pool.getconn()
    pool.putconn(conn)
    pool.putconn(pool.getconn(), close=True)
    pool.close()
    assert rec.kinds() == ["ConnectEvent", "CheckoutEvent", "TimeoutEvent", "CheckinEvent",
                           "CheckoutEvent", "CheckinEvent", "DiscardEvent", "CloseEvent"]
    connect, out1, timeout, in1, out2, in2, discard, close = rec.events
    assert all(e.connection is conn for e in (connect, out1, in1, out2, in2, discard))
    assert timeout.error is raised.value and timeout.timeout == 0.1
    assert in2.kept is False and discard.reason == DiscardReason.CLOSED_BY_USER
    assert close.in_use == 0 and all(e.pool is pool for e in rec.events)


def test_connect_failure_event(make_pool: MakePool) -> None:
    pool = make_pool(0, 2, dsn="", **NOWHERE)
    rec = Recorder()
    pool.add_listener(rec)
    with pytest.raises(psycopg2.OperationalError) as info:
        pool.getconn()
    (connect,) = rec.of(ConnectEvent)
    assert connect.connection is None
    assert connect.error is info.value
    assert connect.duration >= 0
    assert rec.of(CheckoutEvent) == []


def test_checkout_after_waiting(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, timeout=5)  # minconn=1: the first checkout finds it idle
    rec = Recorder()
    pool.add_listener(rec)
    conn = pool.getconn()
    got, waited = getconn_while_returned(pool, conn, 0.2)
    assert got is conn
    first, second = rec.of(CheckoutEvent)
    assert first.waited is False and first.wait_time == 0.0
    assert second.waited is True
    assert second.connection is conn
    assert 0.19 <= second.wait_time <= waited + 0.01
    # the returner's checkin is announced before the waiter's checkout
    assert [k for k in rec.kinds() if k != "ConnectEvent"] == ["CheckoutEvent", "CheckinEvent",
                                                               "CheckoutEvent"]
    pool.putconn(got)


def test_checkin_not_kept_on_close_true(make_pool: MakePool) -> None:
    pool = make_pool(0, 2)
    rec = Recorder()
    pool.add_listener(rec)
    conn = pool.getconn()
    pool.putconn(conn, close=True)
    (checkin,) = rec.of(CheckinEvent)
    assert checkin.kept is False
    assert checkin.reason == DiscardReason.CLOSED_BY_USER
    (discard,) = rec.of(DiscardEvent)
    assert discard.reason == DiscardReason.CLOSED_BY_USER
    assert discard.connection is conn
    assert discard.connection_id == id(conn)
    assert discard.backend_pid == conn.info.backend_pid or discard.backend_pid > 0
    assert discard.age > 0


def test_checkin_not_kept_when_broken(make_pool: MakePool, admin: Any) -> None:
    """Returned inside a transaction whose server session died: the rollback fails."""
    pool = make_pool(0, 2)
    rec = Recorder()
    pool.add_listener(rec)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    with conn.cursor() as cur:
        cur.execute("SELECT 1")  # a transaction is open
    terminate(admin, pid)
    pool.putconn(conn)
    (checkin,) = rec.of(CheckinEvent)
    assert checkin.kept is False
    assert checkin.reason == DiscardReason.BROKEN
    (discard,) = rec.of(DiscardEvent)
    assert discard.reason == DiscardReason.BROKEN
    assert discard.backend_pid == pid
    assert pool.get_stats()["discarded_broken"] == 1
    assert pool.get_stats()["pool_size"] == 0


def test_checkin_of_a_lost_idle_session_is_broken(make_pool: MakePool, admin: Any) -> None:
    """Outside a transaction, the session dies; the next query fails (psycopg2 closed=2)."""
    pool = make_pool(0, 2)
    rec = Recorder()
    pool.add_listener(rec)
    conn = pool.getconn()
    terminate(admin, conn.info.backend_pid)
    with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
        cur.execute("SELECT 1")
    pool.putconn(conn)
    (checkin,) = rec.of(CheckinEvent)
    assert checkin.kept is False
    assert checkin.reason == DiscardReason.BROKEN


def test_timeout_event_and_notes(make_pool: MakePool) -> None:
    pool = make_pool(0, 1)

    class Noter:
        def __init__(self) -> None:
            self.events: list[TimeoutEvent] = []

        def on_timeout(self, event: TimeoutEvent) -> None:
            self.events.append(event)
            event.error.add_note("held by: test_timeout_event_and_notes")

    noter = Noter()
    pool.add_listener(noter)
    conn = pool.getconn()
    with pytest.raises(PoolExhausted) as info:
        pool.getconn()
    with pytest.raises(PoolExhausted) as info2:
        pool.getconn(timeout=0.1)
    first, second = noter.events
    assert first.error is info.value
    assert first.timeout == 0 and first.wait_time == 0
    assert second.error is info2.value
    assert second.timeout == 0.1 and second.wait_time >= 0.09
    assert "held by: test_timeout_event_and_notes" in info.value.__notes__
    pool.putconn(conn)


def test_discard_reasons(make_pool: MakePool) -> None:
    pool = make_pool(0, 4, idle_timeout=30)
    rec = Recorder()
    pool.add_listener(rec)
    a, b, c = pool.getconn(), pool.getconn(), pool.getconn()
    pool.putconn(a)
    pool.return_times[a] -= 60  # idle past idle_timeout: discarded when next checked out
    d = pool.getconn()  # not a: a new one is opened in its place
    assert d is not a and a.closed
    c.close()
    pool.putconn(c)
    pool.putconn(b)
    busy = pool.getconn()  # b (last in, first out)
    pool.putconn(d)
    pool.close()  # d, idle
    pool.putconn(busy)
    reasons = [(e.reason, e.connection) for e in rec.of(DiscardEvent)]
    assert reasons == [(DiscardReason.IDLE_TIMEOUT, a), (DiscardReason.CLOSED_BY_USER, c),
                       (DiscardReason.POOL_CLOSED, d), (DiscardReason.POOL_CLOSED, b)]
    (close,) = rec.of(CloseEvent)
    assert close.pool is pool
    assert close.in_use == 1


def test_close_event_with_idle_connections(make_pool: MakePool) -> None:
    pool = make_pool(3, 5)
    rec = Recorder()
    pool.add_listener(rec)
    held = pool.getconn()
    pool.close()
    assert [e.reason for e in rec.of(DiscardEvent)] == [DiscardReason.POOL_CLOSED] * 2
    (close,) = rec.of(CloseEvent)
    assert close.in_use == 1
    pool.close()  # idempotent: no second event
    assert len(rec.of(CloseEvent)) == 1
    pool.putconn(held)
    assert len(rec.of(DiscardEvent)) == 3


def test_clear_reports_cleared(make_pool: MakePool) -> None:
    pool = make_pool(2, 3)
    rec = Recorder()
    pool.add_listener(rec)
    pool.clear()
    assert [e.reason for e in rec.of(DiscardEvent)] == [DiscardReason.CLEARED] * 2


class DiscardsOnly:
    """Keeps no reference to any connection (a recorder would keep them alive)."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, int, int, str]] = []

    def on_discard(self, event: DiscardEvent) -> None:
        self.seen.append((event.connection, event.connection_id, event.backend_pid,
                          event.reason))


def test_garbage_collected_connection_gives_its_slot_back(make_pool: MakePool) -> None:
    pool = make_pool(0, 2)
    listener = DiscardsOnly()
    pool.add_listener(listener)
    conn = pool.getconn()
    conn_id, pid = id(conn), conn.info.backend_pid
    assert pool.get_stats()["pool_size"] == 1
    del conn
    gc.collect()
    pool.checkouts()  # announced by the collector thread, at the latest by this call
    assert listener.seen == [(None, conn_id, pid, DiscardReason.GARBAGE_COLLECTED)]
    stats = pool.get_stats()
    assert stats["pool_size"] == 0
    assert stats["pool_in_use"] == 0
    assert stats["discarded_garbage_collected"] == 1


def test_garbage_collected_connection_serves_a_waiter(make_pool: MakePool) -> None:
    pool = make_pool(0, 1, timeout=10)
    listener = DiscardsOnly()
    pool.add_listener(listener)
    box: dict[str, Any] = {"conn": pool.getconn()}
    result: dict[str, Any] = {}

    def wait() -> None:
        try:
            result["conn"] = pool.getconn()
        except Exception as exc:  # noqa: BLE001 - inspected below
            result["error"] = exc

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    started = time.monotonic()
    box.clear()  # the application drops its only reference without putconn
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()
    assert "error" not in result, result
    assert time.monotonic() - started < 2
    assert [reason for *_, reason in listener.seen] == [DiscardReason.GARBAGE_COLLECTED]
    stats = pool.get_stats()
    assert stats["pool_size"] == 1
    assert stats["pool_in_use"] == 1


class Raiser:
    """Raises in every hook."""

    def __init__(self) -> None:
        self.calls = 0

    def _raise(self, event: Any) -> None:
        self.calls += 1
        raise RuntimeError(f"listener failure on {type(event).__name__}")

    on_connect = on_checkout = on_checkin = on_timeout = on_discard = on_close = _raise


def test_raising_listener_never_breaks_the_pool(make_pool: MakePool,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="psycopg2_pool")
    pool = make_pool(1, 2, timeout=0)
    raiser = Raiser()
    rec = Recorder()
    pool.add_listener(raiser)
    pool.add_listener(rec)  # a later listener still receives every event
    a = pool.getconn()
    b = pool.getconn()  # opens
    with pytest.raises(PoolExhausted):
        pool.getconn()
    pool.putconn(a)
    pool.putconn(b, close=True)
    with pool.getconn() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
    conn = pool.getconn()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    pool.putconn(conn)  # rolled back
    pool.close()
    stats = pool.get_stats()
    assert raiser.calls == len(rec.events) > 0
    assert stats["listener_errors"] == raiser.calls
    kinds = set(rec.kinds())
    assert kinds == {"ConnectEvent", "CheckoutEvent", "CheckinEvent", "TimeoutEvent",
                     "DiscardEvent", "CloseEvent"}
    assert stats["pool_size"] == 0


def test_raising_listener_with_waiting_and_failures(make_pool: MakePool,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A raising on_checkout for a waiter that was handed a connection must not hang it."""
    caplog.set_level(logging.CRITICAL, logger="psycopg2_pool")
    pool = make_pool(0, 1, timeout=5)
    pool.add_listener(Raiser())
    conn = within(5, pool.getconn)
    result: dict[str, Any] = {}

    def wait() -> None:
        result["conn"] = pool.getconn()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    within(5, pool.putconn, conn)
    thread.join(3)
    assert not thread.is_alive(), "the waiter never returned from getconn (deadlock)"
    assert result["conn"] is conn
    within(5, pool.putconn, conn)
    # connect, checkout, checkin (hand-over), the waiter's checkout, checkin
    assert within(5, pool.get_stats)["listener_errors"] == 5
    failing = make_pool(0, 1, dsn="", **NOWHERE)
    failing.add_listener(Raiser())
    with pytest.raises(psycopg2.OperationalError):
        within(5, failing.getconn)
    assert within(5, failing.get_stats)["listener_errors"] == 1


def test_a_listener_raising_in_every_hook_and_fields_form(make_pool: MakePool) -> None:
    """A listener whose every ``on_*`` attribute raises, the fields forms included: each call
    is counted, and every pool call still does its job."""
    class Broken:
        def __getattr__(self, name: str) -> Any:
            if name.startswith("on_"):
                def fail(*event: Any) -> None:
                    raise RuntimeError(f"broken {name}")
                return fail
            raise AttributeError(name)

    pool = make_pool(0, 1)
    pool.add_listener(Broken())
    conn = pool.getconn()
    with pytest.raises(PoolExhausted):
        pool.getconn()
    pool.putconn(conn, close=True)
    pool.putconn(pool.getconn())
    pool.close()
    stats = pool.get_stats()
    # connect x2, checkout x2 (and their fields form x2), timeout, checkin x2 (and x2),
    # discard x2 (closed_by_user, pool_closed), close: every one of them raised, and every
    # call above still did its job.
    assert stats["listener_errors"] == 14
    assert stats["returns"] == 2


def test_listener_may_use_the_pool_after_a_wait(make_pool: MakePool) -> None:
    """Listeners are documented to run without the pool's lock: one may call get_stats()."""
    pool = make_pool(0, 1, timeout=5)
    seen: list[dict[str, Any]] = []

    class StatsOnCheckout:
        def on_checkout(self, event: CheckoutEvent) -> None:
            seen.append(event.pool.get_stats())

    pool.add_listener(StatsOnCheckout())
    conn = within(5, pool.getconn)
    waiter = threading.Thread(target=lambda: seen.append({"got": pool.getconn()}),
                              daemon=True)
    waiter.start()
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    within(5, pool.putconn, conn)
    waiter.join(3)
    assert not waiter.is_alive(), "getconn after a wait hung in its listener (deadlock)"
    assert len(seen) == 3
    assert seen[2]["got"] is conn
    within(5, pool.putconn, conn)


def test_raising_listener_is_logged(make_pool: MakePool,
                                    caplog: pytest.LogCaptureFixture) -> None:
    pool = make_pool(0, 1)
    pool.add_listener(Raiser())
    with caplog.at_level(logging.ERROR, logger="psycopg2_pool"):
        pool.putconn(pool.getconn())
    assert any("listener" in r.getMessage() for r in caplog.records)


def test_add_twice_and_remove(make_pool: MakePool) -> None:
    pool = make_pool(0, 2)
    rec = Recorder()
    pool.add_listener(rec)
    with pytest.raises(ValueError):
        pool.add_listener(rec)
    assert pool.listeners == (rec,)
    pool.putconn(pool.getconn())
    count = len(rec.events)
    assert count == 3
    pool.remove_listener(rec)
    assert pool.listeners == ()
    pool.putconn(pool.getconn())
    pool.putconn(pool.getconn(), close=True)
    pool.close()
    assert len(rec.events) == count
    pool.remove_listener(rec)  # not attached: ignored


def test_duck_typed_listener(make_pool: MakePool) -> None:
    class OnlyCheckouts:
        def __init__(self) -> None:
            self.events: list[CheckoutEvent] = []

        def on_checkout(self, event: CheckoutEvent) -> None:
            self.events.append(event)

    pool = make_pool(0, 2)
    listener = OnlyCheckouts()
    pool.add_listener(listener)
    conn = pool.getconn()
    pool.putconn(conn)
    pool.putconn(pool.getconn(), close=True)
    pool.close()
    assert [e.connection for e in listener.events] == [conn, conn]
    assert all(isinstance(e, CheckoutEvent) for e in listener.events)


def test_object_without_hooks_is_refused(make_pool: MakePool) -> None:
    pool = make_pool(0, 1)
    with pytest.raises(TypeError):
        pool.add_listener(object())


def test_events_are_immutable(make_pool: MakePool) -> None:
    pool = make_pool(0, 1)
    rec = Recorder()
    pool.add_listener(rec)
    pool.putconn(pool.getconn())
    event = rec.of(CheckoutEvent)[0]
    with pytest.raises(AttributeError):
        event.wait_time = 5  # type: ignore[misc]
    assert event._fields == ("pool", "connection", "wait_time", "waited", "opened")


def test_the_fields_form_gets_what_the_events_carry(make_pool: MakePool) -> None:
    # on_checkout_fields / on_checkin_fields: the event's fields as arguments, in the same
    # order as the event forms, for every path (served at once, opened, waited, discarded).
    pool = make_pool(0, 1, timeout=5)
    events = Recorder()
    fields: list[tuple[str, tuple[Any, ...]]] = []

    class Fields:
        def on_checkout_fields(self, *args: Any) -> None:
            fields.append(("out", args))

        def on_checkin_fields(self, *args: Any) -> None:
            fields.append(("in", args))

    pool.add_listener(events)
    pool.add_listener(Fields())
    conn = pool.getconn(timeout=0)  # opened here
    pool.putconn(conn)
    conn = pool.getconn()  # at once
    threading.Timer(0.05, pool.putconn, args=(conn,)).start()
    again = pool.getconn()  # waited for the return
    pool.putconn(again, close=True)  # discarded
    expected = [("out" if isinstance(e, CheckoutEvent) else "in", tuple(e))
                for e in events.events if isinstance(e, (CheckoutEvent, CheckinEvent))]
    assert fields == expected
    assert [f[1][3:] for f in fields if f[0] == "out"] == [(False, True), (False, False),
                                                          (True, False)]
    assert fields[-1][1][3:] == (False, "closed_by_user")


def test_a_raising_fields_listener_does_not_break_the_pool(make_pool: MakePool) -> None:
    pool = make_pool(1, 1)

    class Raising:
        def on_checkout_fields(self, *args: Any) -> None:
            raise RuntimeError("listener bug")

        def on_checkin_fields(self, *args: Any) -> None:
            raise RuntimeError("listener bug")

    pool.add_listener(Raising())
    pool.putconn(pool.getconn())
    assert pool.get_stats()["listener_errors"] == 2
