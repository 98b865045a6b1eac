"""The password never shows: not in repr, names, statistics, errors, events nor logs.

pgserver's server trusts local Unix-socket connections, so a password is accepted and ignored:
the pools below work normally while carrying one.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

from psycopg2_pool import ConnectionPool, PoolClosed, PoolError, PoolExhausted

PASSWORD = "s3cret-pw"


def uri_with_password(dsn: str) -> str:
    options = psycopg2.extensions.parse_dsn(dsn)
    return (f"postgresql://{options.get('user', 'postgres')}:{PASSWORD}@/"
            f"{options.get('dbname', 'postgres')}?host={options['host']}")


@pytest.fixture(params=["keyword", "dsn", "uri"])
def secret_kwargs(request: pytest.FixtureRequest, dsn: str) -> dict[str, Any]:
    """The same password given three ways: password=, inside a key=value DSN, in a URI."""
    if request.param == "keyword":
        return {"dsn": dsn, "password": PASSWORD}
    if request.param == "dsn":
        return {"dsn": psycopg2.extensions.make_dsn(dsn, password=PASSWORD)}
    return {"dsn": uri_with_password(dsn)}


@pytest.fixture
def pool(secret_kwargs: dict[str, Any]) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(1, 2, **secret_kwargs)
    yield pool
    pool.close()


def assert_no_password(*texts: object) -> None:
    for text in texts:
        assert PASSWORD not in str(text), text
        assert PASSWORD not in repr(text), text


def formatted(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def test_repr_name_and_stats(pool: ConnectionPool) -> None:
    conn = pool.getconn()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    assert_no_password(repr(pool), str(pool), pool.name, pool.get_stats())
    pool.putconn(conn)
    pool.close()
    assert_no_password(repr(pool), pool.get_stats())


def test_pooled_connection_repr(pool: ConnectionPool) -> None:
    conn = pool.getconn()
    assert_no_password(repr(conn), conn.dsn)
    pool.putconn(conn)


def test_error_messages(pool: ConnectionPool, dsn: str) -> None:
    held = [pool.getconn(), pool.getconn()]
    with pytest.raises(PoolExhausted) as exhausted:
        pool.getconn()
    with pytest.raises(PoolExhausted) as exhausted_after_wait:
        pool.getconn(timeout=0.05)
    foreign = psycopg2.connect(dsn)
    try:
        with pytest.raises(PoolError) as not_ours:
            pool.putconn(foreign)
    finally:
        foreign.close()
    for conn in held:
        pool.putconn(conn)
    with pytest.raises(PoolError) as twice:
        pool.putconn(held[0])
    pool.close()
    with pytest.raises(PoolClosed) as closed:
        pool.getconn()
    for info in (exhausted, exhausted_after_wait, not_ours, twice, closed):
        assert_no_password(info.value, formatted(info.value), info.value.args)


def test_events_do_not_carry_the_password_in_their_repr(pool: ConnectionPool) -> None:
    events: list[Any] = []

    class All:
        def _add(self, event: Any) -> None:
            events.append(event)

        on_connect = on_checkout = on_checkin = on_timeout = on_discard = on_close = _add

    pool.add_listener(All())
    a = pool.getconn()
    b = pool.getconn()
    with pytest.raises(PoolExhausted):
        pool.getconn()
    pool.putconn(a)
    pool.putconn(b, close=True)
    pool.close()
    assert {type(e).__name__ for e in events} == {
        "ConnectEvent", "CheckoutEvent", "CheckinEvent", "TimeoutEvent", "DiscardEvent",
        "CloseEvent"}
    for event in events:
        assert_no_password(event)


def test_logs(pool: ConnectionPool, caplog: pytest.LogCaptureFixture) -> None:
    class Raiser:
        def on_checkout(self, event: Any) -> None:
            raise RuntimeError("listener failure")

    pool.add_listener(Raiser())
    with caplog.at_level(logging.DEBUG):
        pool.putconn(pool.getconn())
        pool.close()
    assert caplog.records, "the failing listener was not logged"
    for record in caplog.records:
        assert_no_password(record.getMessage())
        if record.exc_info:
            assert_no_password("".join(traceback.format_exception(*record.exc_info)))
    assert_no_password(caplog.text)


@pytest.mark.parametrize("bad", [
    f"host=/tmp password={PASSWORD} port",
    f"host=/tmp password='{PASSWORD}",
    f"host=/tmp password {PASSWORD}",
    f"postgresql://u:{PASSWORD}@[h/db",
    f"postgresql://u:{PASSWORD}@h/db?sslmode",
    f"postgresql://u:{PASSWORD}@h/db?connect_timeout=1&x=",
    f"postgresql://u:{PASSWORD}%zz@h/db",
    f"dbname=x password={PASSWORD} = y",
])
def test_malformed_dsn_errors_and_tracebacks(bad: str) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        ConnectionPool(0, 1, dsn=bad)
    assert_no_password(info.value, info.value.args, formatted(info.value))


def test_unknown_option_error_names_the_option_not_the_value(dsn: str) -> None:
    with pytest.raises(TypeError, match="pasword") as info:
        ConnectionPool(0, 1, dsn=dsn, pasword=PASSWORD)
    assert_no_password(info.value, formatted(info.value))


def test_connection_failure_error(dsn: str) -> None:
    pool = ConnectionPool(0, 1, dsn="", host="127.0.0.1", port=1, connect_timeout=2,
                          password=PASSWORD)
    try:
        with pytest.raises(psycopg2.OperationalError) as info:
            pool.getconn()
        assert_no_password(info.value, formatted(info.value), repr(pool), pool.get_stats())
    finally:
        pool.close()


def test_default_name_never_uses_user_or_password(dsn: str) -> None:
    pool = ConnectionPool(0, 1, dsn=uri_with_password(dsn), user="postgres")
    try:
        host = psycopg2.extensions.parse_dsn(dsn)["host"]
        assert pool.name == f"{host}:5432/postgres"
        assert_no_password(pool.name)
    finally:
        pool.close()
