"""The hook interface: every event, in order, with its fields; listeners cannot break the pool."""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import psycopg2
import pytest

from psycopg2_pool import (
    CheckinEvent,
    CheckoutEvent,
    CloseEvent,
    ConnectEvent,
    ConnectionPool,
    DiscardEvent,
    PoolExhausted,
    PoolListener,
    TimeoutEvent,
)


class Recorder(PoolListener):
    def __init__(self) -> None:
        self.events: list[Any] = []

    def on_connect(self, event: ConnectEvent) -> None:
        self.events.append(event)

    def on_checkout(self, event: CheckoutEvent) -> None:
        self.events.append(event)

    def on_checkin(self, event: CheckinEvent) -> None:
        self.events.append(event)

    def on_timeout(self, event: TimeoutEvent) -> None:
        event.error.add_note("noted by a listener")
        self.events.append(event)

    def on_discard(self, event: DiscardEvent) -> None:
        self.events.append(event)

    def on_close(self, event: CloseEvent) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def test_events_of_a_known_sequence(dsn: str) -> None:
    pool = ConnectionPool(0, 1, dsn=dsn, timeout=0.1)
    rec = Recorder()
    pool.add_listener(rec)
    conn = pool.getconn(timeout=0)  # opened here: with a timeout it would wait for the open
    time.sleep(0.02)
    with pytest.raises(PoolExhausted) as raised:
        pool.getconn()
    pool.putconn(conn)
    pool.putconn(pool.getconn(), close=True)
    pool.close()
    kinds = [type(e).__name__ for e in rec.events]
    assert kinds == ["ConnectEvent", "CheckoutEvent", "TimeoutEvent", "CheckinEvent",
                     "CheckoutEvent", "CheckinEvent", "DiscardEvent", "CloseEvent"]
    connect, out1, timeout, in1, _, in2, discard, close = rec.events
    assert connect.connection is conn and connect.error is None and connect.duration > 0
    assert out1.connection is conn and out1.waited is False
    assert out1.opened is True and 0 < out1.wait_time <= connect.duration + 0.05
    assert timeout.error is raised.value and timeout.timeout == 0.1
    assert 0.1 <= timeout.wait_time < 1
    assert "noted by a listener" in raised.value.__notes__
    assert in1.kept is True and in1.reason is None and in1.use_time >= 0.02
    assert in2.kept is False and in2.reason == "closed_by_user"
    assert discard.reason == "closed_by_user" and discard.connection is conn
    assert discard.connection_id == id(conn) and discard.backend_pid > 0
    assert close.in_use == 0 and all(e.pool is pool for e in rec.events)


def test_waited_checkout_reports_its_wait(dsn: str) -> None:
    pool = ConnectionPool(0, 1, dsn=dsn, timeout=5)
    rec = Recorder()
    pool.add_listener(rec)
    held = pool.getconn()
    threading.Timer(0.1, pool.putconn, args=(held,)).start()
    conn = pool.getconn()
    (_, waited) = rec.of(CheckoutEvent)
    assert waited.waited is True and 0.09 <= waited.wait_time < 1
    # the checkin of the returner was announced before the waiter's checkout
    order = [type(e).__name__ for e in rec.events if not isinstance(e, ConnectEvent)]
    assert order == ["CheckoutEvent", "CheckinEvent", "CheckoutEvent"]
    pool.putconn(conn)
    pool.close()


def test_connect_failure_event() -> None:
    pool = ConnectionPool(0, 1, host="127.0.0.1", port=1, connect_timeout=2)
    rec = Recorder()
    pool.add_listener(rec)
    with pytest.raises(psycopg2.OperationalError) as raised:
        pool.getconn()
    (event,) = rec.of(ConnectEvent)
    assert event.connection is None and event.error is raised.value
    pool.close()


def test_discard_reasons(dsn: str) -> None:
    pool = ConnectionPool(0, 3, dsn=dsn, idle_timeout=30)
    rec = Recorder()
    pool.add_listener(rec)
    a, b, c = pool.getconn(), pool.getconn(), pool.getconn()
    a.close()
    pool.putconn(a)  # closed by the application
    pool.putconn(b)
    pool.return_times[b] -= 60
    d = pool.getconn()  # b is idle too long: discarded at checkout, d opened instead
    assert d is not b and b.closed
    pool.putconn(c)
    pool.putconn(d)
    pool.close()  # c, d: pool closed
    assert [e.reason for e in rec.of(DiscardEvent)] == ["closed_by_user", "idle_timeout",
                                                        "pool_closed", "pool_closed"]


def test_garbage_collected_checkout_frees_its_slot_and_is_announced(dsn: str) -> None:
    pool = ConnectionPool(0, 1, dsn=dsn, timeout=5)
    discards: list[DiscardEvent] = []

    class Discards:  # keeps no connection alive, unlike Recorder's checkout events
        def on_discard(self, event: DiscardEvent) -> None:
            discards.append(event)

    pool.add_listener(Discards())
    conn = pool.getconn()
    conn_id = id(conn)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.getconn()))
    waiter.start()
    deadline = time.monotonic() + 5
    while pool.get_stats()["requests_waiting"] == 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    del conn
    gc.collect()
    waiter.join(5)
    assert len(got) == 1  # the freed slot went to the waiter
    (discard,) = discards
    assert discard.reason == "garbage_collected" and discard.connection is None
    assert discard.connection_id == conn_id
    assert pool.get_stats()["discarded_garbage_collected"] == 1
    pool.putconn(got[0])
    pool.close()


def test_a_raising_listener_never_breaks_the_pool(dsn: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def __getattr__(self, name: str) -> Any:
            if name.startswith("on_"):
                def fail(*event: Any) -> None:
                    raise RuntimeError(f"broken {name}")
                return fail
            raise AttributeError(name)

    pool = ConnectionPool(0, 1, dsn=dsn)
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
    assert any("listener" in r.getMessage() for r in caplog.records)


def test_duck_typed_listener_and_removal(dsn: str) -> None:
    seen: list[float] = []

    class OnlyCheckouts:
        def on_checkout(self, event: CheckoutEvent) -> None:
            seen.append(event.wait_time)

    pool = ConnectionPool(0, 1, dsn=dsn)
    listener = OnlyCheckouts()
    pool.add_listener(listener)
    pool.putconn(pool.getconn())
    pool.remove_listener(listener)
    pool.putconn(pool.getconn())
    assert len(seen) == 1 and seen[0] > 0  # the one checkout it saw opened its connection
    assert pool.listeners == ()
    pool.close()
