"""Every misuse and bad argument gets its exact error, leaks no password, and changes nothing.

Two tables: constructor arguments (run for ``ConnectionPool`` and ``ThreadedConnectionPool``)
and runtime misuse (each row performs one misuse on a fresh pool). Every row checks the
exception class and its full message, that the password planted in the arguments appears
nowhere in the exception chain, and that no server connection (constructor) or no pool
state (runtime: ``get_stats()`` minus timing, then a working checkout) was left behind.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

import psycopg2_pool.pool
from psycopg2_pool import (
    ConnectionPool,
    PoolClosed,
    PoolError,
    PoolListener,
    ThreadedConnectionPool,
    ThreadSafeConnectionPool,
    check_connection,
)
from psycopg2_pool._watchdog import Watchdog
from psycopg2_pool.connection import RETURNED_INSIDE_WITH
from tests.support.errors import exception_texts
from tests.support.pools import MakePool, settled_backend_count

PASSWORD = "pl4nted-S3cret-pw"

#: Stands for the test server's DSN with ``PASSWORD`` in it (known only at run time).
SECRET_DSN = "<secret dsn>"

TIMING = ("connections_ms", "requests_wait_ms")

SECONDS = "{} must be a number of seconds, got {}"
SECONDS_OR_NONE = "{} must be a number of seconds or None, got {}"
NAN = "{} must be a number of seconds, got NaN"
AT_LEAST_0 = "{} must be >= 0 seconds, got {}"
ABOVE_0 = "{} must be > 0 seconds, got {}; pass None for no limit"
MAXCONN_TYPE = "maxconn must be an int (or float('inf') for no limit), got {}"
UNKNOWN = ('unknown connection argument: invalid connection option "{}"; pass only '
           'psycopg2.connect() arguments and libpq connection options (host, port, dbname, '
           'user, password, connect_timeout, sslmode, ...)')
BAD_DSN = "invalid connection string (dsn): {}; check its key=value pairs or URI syntax"
UNKNOWN_IN_DSN = ('invalid connection string (dsn): invalid connection option "{}"; check the '
                  "option's spelling (host, port, dbname, user, password, connect_timeout, "
                  "sslmode, ...)")
FACTORY = "connection_factory must be a subclass of psycopg2.extensions.connection"
FOREIGN = ("this connection does not belong to this pool (it was not checked out with this "
           "pool's getconn()); close it yourself or return it to the pool it came from")
RETURNED_TWICE = "this connection was already returned to the pool; return each connection once"
NOT_A_CONNECTION = "putconn() takes a connection from this pool's getconn(), got {}"
WITH_RETURNED = ("this connection was already returned to the pool: using it in a with block "
                 "would share it with whoever checks it out next; take a new one with "
                 "`with pool.getconn() as conn:` or `with pool.connection() as conn:`")
CLOSED = ("the connection pool {name!r} is closed; getconn() cannot be used after close() "
          "— create a new pool")
NOT_A_LISTENER = ("a listener needs at least one of the methods on_connect, on_checkout_fields, "
                  "on_checkout, on_checkin_fields, on_checkin, on_timeout, on_discard, "
                  "on_unavailable, on_recovered, on_role_change, on_role_restored, on_close")


def exactly(message: str) -> str:
    """A ``match=`` pattern for exactly ``message``, nothing before or after."""
    return rf"\A{re.escape(message)}\Z"


def assert_no_password(exc: BaseException) -> None:
    for text in exception_texts(exc):
        assert PASSWORD not in text, f"the password shows in: {text}"


def snapshot(pool: ConnectionPool) -> dict[str, Any]:
    """``get_stats()`` without the fields that measure time."""
    stats = pool.get_stats()
    for key in TIMING:
        stats.pop(key)
    return stats


# -- constructor arguments -------------------------------------------------------------------


def refuses_second_connection() -> dict[str, Any]:
    """A connection_factory that opens one connection, then fails: minconn=2 has opened one
    server connection when construction fails, which must be closed."""
    count = itertools.count()

    class RefusesSecond(psycopg2.extensions.connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if next(count):
                raise RuntimeError("this factory refuses a second connection")
            super().__init__(*args, **kwargs)

    return {"connection_factory": RefusesSecond}


@dataclass(frozen=True)
class Bad:
    """``cls(*args, **kwargs)`` raises ``error`` with exactly ``message``.

    ``SECRET_DSN`` in args or kwargs stands for the server's DSN with the password; unless
    kwargs has a ``dsn`` (or a str is positional), ``dsn=SECRET_DSN`` is added. ``extra``
    builds more keyword arguments at run time (objects with state of their own).
    """

    id: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    error: type[BaseException]
    message: str
    extra: Callable[[], dict[str, Any]] | None = None


def sizes() -> list[Bad]:
    rows = [
        Bad("minconn>maxconn", (5, 2), {}, ValueError,
            "minconn (5) must not be greater than maxconn (2)"),
        Bad("minconn>maxconn-kw", (), {"minconn": 3, "maxconn": 2}, ValueError,
            "minconn (3) must not be greater than maxconn (2)"),
        Bad("minconn-negative", (-1, 2), {}, ValueError, "minconn must be >= 0, got -1"),
        Bad("maxconn-0", (0, 0), {}, ValueError, "maxconn must be >= 1, got 0"),
        Bad("maxconn-negative", (0, -3), {}, ValueError, "maxconn must be >= 1, got -3"),
    ]
    for value, shown in [("1", "str"), (True, "bool"), (False, "bool"), (1.5, "float"),
                         (1.0, "float"), (None, "NoneType"), (math.nan, "float"),
                         (math.inf, "float")]:
        rows.append(Bad(f"minconn={value!r}", (value, 2), {}, TypeError,
                        f"minconn must be an int, got {shown}"))
    for value, shown in [("5", "str"), (True, "True"), (2.5, "2.5"), (2.0, "2.0"),
                         (None, "NoneType"), (math.nan, "nan"), (-math.inf, "-inf")]:
        rows.append(Bad(f"maxconn={value!r}", (0, value), {}, TypeError,
                        MAXCONN_TYPE.format(shown)))
    return rows


def durations() -> list[Bad]:
    rows = []
    for name, optional, positive in [("timeout", False, False),
                                     ("idle_timeout", True, False),
                                     ("max_lifetime", True, True),
                                     ("check_idle_after", True, False),
                                     ("io_timeout", True, True)]:
        kind = SECONDS_OR_NONE if optional else SECONDS
        out_of_range = ABOVE_0 if positive else AT_LEAST_0
        cases: list[tuple[Any, type[BaseException], str]] = [
            (-1, ValueError, out_of_range.format(name, "-1")),
            (-0.5, ValueError, out_of_range.format(name, "-0.5")),
            (-math.inf, ValueError, out_of_range.format(name, "-inf")),
            (math.nan, ValueError, NAN.format(name)),
            (True, TypeError, kind.format(name, "bool")),
            (False, TypeError, kind.format(name, "bool")),
            (b"5", TypeError, kind.format(name, "bytes")),
            ([5], TypeError, kind.format(name, "list")),
        ]
        cases.append(("5", TypeError, kind.format(name, "str")))
        if positive:
            cases += [(0, ValueError, ABOVE_0.format(name, "0")),
                      (0.0, ValueError, ABOVE_0.format(name, "0.0"))]
        if not optional:
            cases.append((None, TypeError, SECONDS.format(name, "NoneType")))
        for value, error, message in cases:
            rows.append(Bad(f"{name}={value!r}", (0, 2), {name: value}, error, message))
    rows += [
        Bad("idle_timeout-positional-negative", (0, 2, -5), {}, ValueError,
            AT_LEAST_0.format("idle_timeout", "-5")),
        Bad("idle_timeout-positional-nan", (0, 2, math.nan), {}, ValueError,
            NAN.format("idle_timeout")),
        Bad("idle_timeout-positional-bytes", (0, 2, b"600"), {}, TypeError,
            SECONDS_OR_NONE.format("idle_timeout", "bytes")),
        Bad("idle_timeout-positional-and-keyword", (0, 2, 60), {"idle_timeout": 30}, TypeError,
            "idle_timeout given twice: as the third positional argument and as idle_timeout=; "
            "pass it once"),
        # psycopg2.pool's DSN third (a str) is accepted (tests/pool/test_psycopg2_pool_dropin.py);
        # given twice, or followed by too much, it is refused without being quoted back.
        Bad("positional-dsn-third-and-dsn-kw", (1, 5, SECRET_DSN), {"dsn": SECRET_DSN},
            TypeError, "dsn given twice: as the third positional argument and as dsn=; pass "
                       "it once"),
        Bad("positional-factory-and-factory-kw", (1, 5, SECRET_DSN,
                                                  psycopg2.extensions.connection),
            {"connection_factory": psycopg2.extensions.connection}, TypeError,
            "connection_factory given twice: as the fourth positional argument and as "
            "connection_factory=; pass it once"),
        Bad("positional-dsn-then-four-more", (1, 5, SECRET_DSN, None, None, 600), {},
            TypeError, "after minconn and maxconn, psycopg2.connect() takes at most 3 "
                       "positional arguments (dsn, connection_factory, cursor_factory), got 4; "
                       "pass the others by keyword"),
        Bad("positional-dsn-bad-factory", (1, 5, SECRET_DSN, dict), {}, TypeError, FACTORY),
        Bad("positional-dsn-malformed", (1, 5, f"host=/tmp password={PASSWORD} port"), {},
            ValueError, BAD_DSN.format('missing "=" after "…" in connection info string')),
        Bad("positional-dsn-second", (1, SECRET_DSN), {}, TypeError,
            MAXCONN_TYPE.format("str")),
        Bad("positional-dsn-first", (SECRET_DSN,), {}, TypeError,
            "minconn must be an int, got str"),
        Bad("positional-dsn-fourth", (1, 5, 600, SECRET_DSN), {}, TypeError,
            "with idle_timeout third (a number or None), ConnectionPool() takes at most 3 "
            "positional arguments (minconn, maxconn, idle_timeout), got 4; pass connection "
            "arguments by keyword (dsn=..., host=..., ...), or the DSN third as psycopg2.pool "
            "does"),
    ]
    return rows


def others() -> list[Bad]:
    rows = [
        Bad("check=str", (0, 2), {"check": "SELECT 1"}, TypeError,
            "check must be a callable taking a connection, got str"),
        Bad("check=int", (0, 2), {"check": 1}, TypeError,
            "check must be a callable taking a connection, got int"),
        Bad("name=int", (0, 2), {"name": 3}, TypeError, "name must be a non-empty str"),
        Bad("name=empty", (0, 2), {"name": ""}, TypeError, "name must be a non-empty str"),
        Bad("name=bytes", (0, 2), {"name": b"app"}, TypeError, "name must be a non-empty str"),
        Bad("async=True", (0, 2), {"async": True}, TypeError,
            "asynchronous connections cannot be pooled; drop async=True"),
        Bad("async=1", (0, 2), {"async": 1}, TypeError,
            "asynchronous connections cannot be pooled; drop async=True"),
        Bad("async_=True", (0, 2), {"async_": True}, TypeError,
            "asynchronous connections cannot be pooled; drop async=True"),
        Bad("factory=dict", (0, 2), {"connection_factory": dict}, TypeError, FACTORY),
        Bad("factory=cursor", (0, 2), {"connection_factory": psycopg2.extensions.cursor},
            TypeError, FACTORY),
        Bad("factory=str", (0, 2), {"connection_factory": "psycopg2.extensions.connection"},
            TypeError, FACTORY),
        Bad("factory=function", (0, 2), {"connection_factory": psycopg2.connect}, TypeError,
            FACTORY),
        Bad("factory=0", (0, 2), {"connection_factory": 0}, TypeError, FACTORY),
        Bad("factory=list", (0, 2), {"connection_factory": [psycopg2.extensions.connection]},
            TypeError, FACTORY),
        Bad("factory-fails-second-connection", (2, 2), {}, RuntimeError,
            "this factory refuses a second connection", extra=refuses_second_connection),
        Bad("dsn=bytes", (0, 2), {"dsn": f"password={PASSWORD}".encode()}, TypeError,
            "dsn must be a str (a libpq connection string or URI), got bytes"),
        Bad("dsn=empty-bytes", (0, 2), {"dsn": b""}, TypeError,
            "dsn must be a str (a libpq connection string or URI), got bytes"),
        Bad("dsn=int", (0, 2), {"dsn": 42}, TypeError,
            "dsn must be a str (a libpq connection string or URI), got int"),
        Bad("dsn=0", (0, 2), {"dsn": 0}, TypeError,
            "dsn must be a str (a libpq connection string or URI), got int"),
    ]
    for option in ["foo_bar", "idle_timout", "max_conn", "min_conn", "maxconnections",
                   "pasword"]:
        rows.append(Bad(f"unknown-{option}", (0, 2), {option: PASSWORD}, TypeError,
                        UNKNOWN.format(option)))
    # An unknown option inside the DSN is a malformed DSN (ValueError, as docs/api.md says);
    # only an unknown keyword argument is a TypeError, as Python's unexpected keyword is.
    for shape, dsn in [("kv", f"host=/tmp password={PASSWORD} bogus=1"),
                       ("kv-typo-after-password", f"password={PASSWORD} dbnme=app")]:
        rows.append(Bad(f"unknown-option-in-dsn-{shape}", (0, 2), {"dsn": dsn}, ValueError,
                        UNKNOWN_IN_DSN.format("dbnme" if "dbnme" in dsn else "bogus")))
    rows.append(Bad("unknown-option-in-dsn-and-keyword", (0, 2),
                    {"dsn": f"password={PASSWORD} bogus=1", "hots": "h"}, ValueError,
                    UNKNOWN_IN_DSN.format("bogus")))
    missing_equals = BAD_DSN.format('missing "=" after "…" in connection info string')
    ipv6 = BAD_DSN.format('end of string reached when looking for matching "…" in IPv6 host '
                          'address in URI: "…"')
    percent = BAD_DSN.format('invalid percent-encoded token: "…"')
    for shape, dsn, message in [
        ("kv-missing-equals-at-end", f"host=/tmp password={PASSWORD} port", missing_equals),
        ("kv-missing-equals-before-password", f"host=/tmp password {PASSWORD}",
         missing_equals),
        ("kv-unterminated-quote", f"host=/tmp password='{PASSWORD}",
         BAD_DSN.format("unterminated quoted string in connection info string")),
        ("uri-ipv6-unclosed", f"postgresql://u:{PASSWORD}@[::1", ipv6),
        ("uri-ipv6-unclosed-with-path", f"postgresql://u:{PASSWORD}@[h/db", ipv6),
        ("uri-bad-percent-in-password", f"postgresql://u:{PASSWORD}%zz@h/db", percent),
        ("uri-bad-percent", "postgresql://u:%zz@h/db", percent),
        ("uri-query-param-without-equals", f"postgresql://u:{PASSWORD}@h/db?sslmode",
         BAD_DSN.format('missing key/value separator "=" in URI query parameter: "…"')),
        ("uri-query-param-without-value", f"postgresql://u:{PASSWORD}@h/db?x=",
         BAD_DSN.format('invalid URI query parameter: "…"')),
        ("uri-unknown-query-param", f"postgresql://u:{PASSWORD}@h/db?bogus=1",
         BAD_DSN.format('invalid URI query parameter: "…"')),
    ]:
        rows.append(Bad(f"dsn-{shape}", (0, 2), {"dsn": dsn}, ValueError, message))
    return rows


CONSTRUCTOR_ROWS = sizes() + durations() + others()


def fill_in(value: Any, secret_dsn: str) -> Any:
    return secret_dsn if value is SECRET_DSN else value


@pytest.fixture
def secret_dsn(dsn: str) -> str:
    """The test server's DSN with ``PASSWORD`` planted (the server does not ask for one)."""
    return psycopg2.extensions.make_dsn(dsn, password=PASSWORD)


@pytest.mark.parametrize("cls", [ConnectionPool, ThreadedConnectionPool],
                         ids=["ConnectionPool", "ThreadedConnectionPool"])
@pytest.mark.parametrize("row", CONSTRUCTOR_ROWS, ids=[row.id for row in CONSTRUCTOR_ROWS])
def test_bad_constructor_argument(cls: type[ConnectionPool], row: Bad, secret_dsn: str,
                                  admin: Any, app_name: str) -> None:
    args = tuple(fill_in(a, secret_dsn) for a in row.args)
    kwargs = {k: fill_in(v, secret_dsn) for k, v in row.kwargs.items()}
    if "dsn" not in kwargs and not any(isinstance(a, str) for a in row.args):
        kwargs["dsn"] = secret_dsn
    kwargs["application_name"] = app_name  # to count what the server saw of this pool
    if row.extra is not None:
        kwargs.update(row.extra())
    with pytest.raises(row.error, match=exactly(row.message)) as raised:
        cls(*args, **kwargs)
    assert type(raised.value) is row.error
    assert_no_password(raised.value)
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None  # e.g. libpq's unredacted parse error
    assert settled_backend_count(admin, app_name, 0) == 0  # failed construction: none left


def test_the_three_names_are_one_class() -> None:
    assert ThreadedConnectionPool is ConnectionPool
    assert ThreadSafeConnectionPool is ConnectionPool


@pytest.mark.parametrize("kwargs", [
    {"minconn": 0},
    {"maxconn": math.inf},
    {"timeout": math.inf},
    {"idle_timeout": None},
    {"idle_timeout": 0},
    {"idle_timeout": math.inf},
    {"max_lifetime": math.inf},
    {"max_lifetime": None},
    {"check_idle_after": 0},
    {"check_idle_after": math.inf},
    {"io_timeout": None},
    {"io_timeout": math.inf, "check_idle_after": 0},  # armed with no deadline: see below
    {"connection_factory": None},
    {"async": False},
    {"dsn": None},
], ids=repr)
def test_edge_values_that_are_accepted(make_pool: MakePool, dsn: str,
                                       kwargs: dict[str, Any]) -> None:
    """The boundaries of the table above: these are valid and give a working pool."""
    kwargs = {"minconn": 1, "maxconn": 2, **kwargs}
    if kwargs.get("dsn", "") is None:
        kwargs.update(psycopg2.extensions.parse_dsn(dsn))
    pool = make_pool(**kwargs)
    for _ in range(2):
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    pool.putconn(pool.getconn(timeout=math.inf))


def test_io_timeout_inf_does_not_stop_the_watchdog(make_pool: MakePool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An accepted io_timeout of inf once killed the process-wide watchdog thread (its wait
    overflowed), silently disabling every pool's io_timeout from then on. A watchdog of its
    own for this test, so that the inf deadline is the first it sees."""
    monkeypatch.setattr(psycopg2_pool.pool, "WATCHDOG", Watchdog())

    def slow_check(conn: Any) -> None:
        time.sleep(0.2)  # the watchdog wakes up for this armed, never-ending deadline
        check_connection(conn)

    def hung_check(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(10)")

    unbounded = make_pool(1, 1, io_timeout=math.inf, check=slow_check)
    unbounded.putconn(unbounded.getconn())
    assert unbounded.get_stats()["discarded_failed_check"] == 0

    bounded = make_pool(1, 1, io_timeout=0.3, check=hung_check)
    started = time.monotonic()
    bounded.putconn(bounded.getconn())  # the hung check is cut short, a new one opened
    assert time.monotonic() - started < 5
    assert bounded.get_stats()["discarded_failed_check"] == 1


# -- runtime misuse --------------------------------------------------------------------------


@dataclass
class Env:
    """What a runtime row acts on: a fresh pool (1 idle connection, maxconn 2) whose DSN
    carries the planted password, and room for what the row's setup made."""

    pool: ConnectionPool
    make_pool: MakePool
    secret_dsn: str
    ctx: dict[str, Any] = field(default_factory=dict)


Step = Callable[[Env], object]


@dataclass(frozen=True)
class Misuse:
    """After ``setup``, ``misuse`` raises ``error`` with exactly ``message`` (formatted with
    ``name``, the pool's name), or nothing when ``error`` is None; ``after`` checks the state
    the row cares about, then returns anything it borrowed."""

    id: str
    misuse: Step
    error: type[BaseException] | None
    message: str = ""
    setup: Step | None = None
    after: Step | None = None


def nothing(env: Env) -> None:
    pass


def check_out(env: Env) -> None:
    env.ctx["conn"] = env.pool.getconn()


def check_out_and_return(env: Env) -> None:
    conn = env.ctx["conn"] = env.pool.getconn()
    env.pool.putconn(conn)


def check_out_and_discard(env: Env) -> None:
    conn = env.ctx["conn"] = env.pool.getconn()
    env.pool.putconn(conn, close=True)
    # The discard makes the background refill open one for minconn: wait for it, or the
    # snapshot and the checkouts after the misuse race a slot still being opened.
    env.pool.wait(5)


def give_back(env: Env) -> None:
    env.pool.putconn(env.ctx["conn"])


def returned_once(env: Env) -> None:
    """The double return changed nothing: the connection is idle once, handed out once."""
    pool, conn = env.pool, env.ctx["conn"]
    assert list(pool.idle_connections) == [conn]
    assert not conn.closed
    assert pool.getconn() is conn
    second = pool.getconn()
    assert second is not conn  # not available twice
    pool.putconn(conn)
    pool.putconn(second)


def discarded(env: Env) -> None:
    assert env.ctx["conn"].closed
    assert env.ctx["conn"] not in env.pool.idle_connections


def open_foreign(env: Env) -> None:
    env.ctx["foreign"] = psycopg2.connect(env.secret_dsn)


def foreign_untouched(env: Env) -> None:
    foreign = env.ctx["foreign"]
    try:
        assert not foreign.closed  # the pool did not touch it
        with foreign.cursor() as cur:
            cur.execute("SELECT 1")
        assert foreign not in env.pool.idle_connections
    finally:
        foreign.close()


def other_pools_checked_out(env: Env) -> None:
    other = env.ctx["other"] = env.make_pool(0, 2, dsn=env.secret_dsn)
    env.ctx["foreign"] = other.getconn()


def other_pools_idle(env: Env) -> None:
    other_pools_checked_out(env)
    env.ctx["other"].putconn(env.ctx["foreign"])


def still_checked_out_of_its_pool(env: Env) -> None:
    other, conn = env.ctx["other"], env.ctx["foreign"]
    assert not conn.closed
    assert conn not in env.pool.idle_connections
    assert other.connections_in_use == {conn}
    assert other.get_stats()["returns"] == 0
    other.putconn(conn)
    assert list(other.idle_connections) == [conn]


def still_idle_in_its_pool(env: Env) -> None:
    other, conn = env.ctx["other"], env.ctx["foreign"]
    assert not conn.closed
    assert list(other.idle_connections) == [conn]
    assert other.get_stats()["returns"] == 1


def with_returned(env: Env) -> None:
    with env.ctx["conn"]:
        env.ctx["ran"] = True  # never: entering the block raises


def block_never_ran(env: Env) -> None:
    assert "ran" not in env.ctx


def with_returned_idle(env: Env) -> None:
    block_never_ran(env)
    returned_once(env)


def with_discarded(env: Env) -> None:
    block_never_ran(env)
    discarded(env)


def enter_then_return(env: Env) -> None:
    conn = env.ctx["conn"] = env.pool.getconn()
    conn.__enter__()
    env.pool.putconn(conn)  # inside the with block


def leave_block(env: Env) -> None:
    env.ctx["conn"].__exit__(None, None, None)


def enter_context_then_return(env: Env) -> None:
    env.ctx["cm"] = cm = env.pool.connection()
    conn = env.ctx["conn"] = cm.__enter__()
    env.pool.putconn(conn)


def leave_context(env: Env) -> None:
    env.ctx["cm"].__exit__(None, None, None)


def idle_once(env: Env) -> None:
    assert list(env.pool.idle_connections) == [env.ctx["conn"]]


def close_pool(env: Env) -> None:
    env.pool.close()


def return_then_close(env: Env) -> None:
    check_out_and_return(env)
    env.pool.close()


def use_context_manager(env: Env) -> None:
    with env.pool.connection():
        env.ctx["ran"] = True


def use_context_manager_with_timeout(timeout: Any) -> Step:
    def use(env: Env) -> None:
        with env.pool.connection(timeout=timeout):
            env.ctx["ran"] = True
    return use


def exhaust(env: Env) -> None:
    env.ctx["conns"] = [env.pool.getconn(), env.pool.getconn()]


def give_all_back(env: Env) -> None:
    for conn in env.ctx["conns"]:
        env.pool.putconn(conn)


def check_out_keyed(env: Env) -> None:
    env.ctx["conn"] = env.pool.getconn(key="a")


def keyed_still_out(env: Env) -> None:
    conn = env.ctx["conn"]
    assert env.pool.getconn(key="a") is conn
    env.pool.putconn(conn, key="a")


def settings_unchanged(env: Env) -> None:
    assert env.pool.idle_timeout == 600
    assert env.pool.check_idle_after is None
    assert env.pool.timeout == 0


class Checkouts:
    def on_checkout(self, event: Any) -> None:
        pass


def attach(env: Env) -> None:
    env.ctx["listener"] = Checkouts()
    env.pool.add_listener(env.ctx["listener"])


def attach_then_detach(env: Env) -> None:
    attach(env)
    env.pool.remove_listener(env.ctx["listener"])


def attached_once(env: Env) -> None:
    assert env.pool.listeners == (env.ctx["listener"],)


def no_listener(env: Env) -> None:
    assert env.pool.listeners == ()


def getconn_with(**kwargs: Any) -> Step:
    return lambda env: env.pool.getconn(**kwargs)


def put_back(thing: Any) -> Step:
    return lambda env: env.pool.putconn(fill_in(thing, env.secret_dsn))


def settable(attribute: str, value: Any) -> Step:
    return lambda env: setattr(env.pool, attribute, value)


class NotCallableHooks:
    on_checkout = 5
    on_connect = None


def runtime_rows() -> list[Misuse]:
    rows = [
        Misuse("putconn-foreign-connection", lambda e: e.pool.putconn(e.ctx["foreign"]),
               PoolError, FOREIGN, setup=open_foreign, after=foreign_untouched),
        Misuse("putconn-other-pools-checked-out", lambda e: e.pool.putconn(e.ctx["foreign"]),
               PoolError, FOREIGN, setup=other_pools_checked_out,
               after=still_checked_out_of_its_pool),
        Misuse("putconn-other-pools-idle", lambda e: e.pool.putconn(e.ctx["foreign"]),
               PoolError, FOREIGN, setup=other_pools_idle, after=still_idle_in_its_pool),
    ]
    for label, thing, shown in [("None", None, "NoneType"), ("str", "conn", "str"),
                                ("int", 42, "int"), ("object", object(), "object"),
                                ("the-dsn", SECRET_DSN, "str")]:
        rows.append(Misuse(
            f"putconn-{label}",
            put_back(thing),
            TypeError, NOT_A_CONNECTION.format(shown), setup=check_out, after=give_back))
    rows += [
        Misuse("putconn-a-cursor", lambda e: e.pool.putconn(e.ctx["conn"].cursor()),
               TypeError, NOT_A_CONNECTION.format("cursor"), setup=check_out, after=give_back),
        Misuse("double-return", lambda e: e.pool.putconn(e.ctx["conn"]), PoolError,
               RETURNED_TWICE, setup=check_out_and_return, after=returned_once),
        Misuse("double-return-second-with-close", lambda e: e.pool.putconn(e.ctx["conn"],
                                                                           close=True),
               PoolError, RETURNED_TWICE, setup=check_out_and_return, after=returned_once),
        Misuse("double-return-after-close-true", lambda e: e.pool.putconn(e.ctx["conn"]),
               PoolError, RETURNED_TWICE, setup=check_out_and_discard, after=discarded),
        Misuse("putconn-wrong-key", lambda e: e.pool.putconn(e.ctx["conn"], key="b"),
               PoolError, "this connection was not checked out under key 'b'",
               setup=check_out_keyed, after=keyed_still_out),
        Misuse("putconn-key-for-unkeyed", lambda e: e.pool.putconn(e.ctx["conn"], key="a"),
               PoolError, "this connection was not checked out under key 'a'",
               setup=check_out, after=give_back),
        Misuse("getconn-after-close", lambda e: e.pool.getconn(), PoolClosed, CLOSED,
               setup=close_pool),
        Misuse("getconn-key-after-close", lambda e: e.pool.getconn(key="k"), PoolClosed,
               CLOSED, setup=close_pool),
        Misuse("getconn-timeout-after-close", lambda e: e.pool.getconn(timeout=1),
               PoolClosed, CLOSED, setup=close_pool),
        Misuse("connection-after-close", use_context_manager, PoolClosed, CLOSED,
               setup=close_pool, after=block_never_ran),
        Misuse("putconn-returned-before-close", lambda e: e.pool.putconn(e.ctx["conn"]),
               PoolError, RETURNED_TWICE, setup=return_then_close, after=discarded),
        Misuse("with-on-returned-connection", with_returned, PoolError, WITH_RETURNED,
               setup=check_out_and_return, after=with_returned_idle),
        Misuse("with-on-discarded-connection", with_returned, PoolError, WITH_RETURNED,
               setup=check_out_and_discard, after=with_discarded),
        Misuse("leave-with-after-putconn-inside", leave_block, PoolError,
               RETURNED_INSIDE_WITH, setup=enter_then_return, after=idle_once),
        Misuse("leave-connection-after-putconn-inside", leave_context, PoolError,
               RETURNED_INSIDE_WITH, setup=enter_context_then_return, after=idle_once),
        Misuse("getconn-unhashable-key", getconn_with(key=[]), TypeError,
               "unhashable type: 'list'"),
    ]
    for value, error, message in [
        (-1, ValueError, AT_LEAST_0.format("timeout", "-1")),
        (-math.inf, ValueError, AT_LEAST_0.format("timeout", "-inf")),
        (math.nan, ValueError, NAN.format("timeout")),
        ("1", TypeError, SECONDS.format("timeout", "str")),
        (True, TypeError, SECONDS.format("timeout", "bool")),
    ]:
        # With an idle connection at hand (the lock-free path), and with none left.
        rows.append(Misuse(f"getconn-timeout={value!r}",
                           getconn_with(timeout=value), error, message))
        rows.append(Misuse(f"getconn-timeout={value!r}-exhausted",
                           getconn_with(timeout=value), error, message,
                           setup=exhaust, after=give_all_back))
        rows.append(Misuse(f"getconn-key-timeout={value!r}",
                           getconn_with(key="k", timeout=value), error, message))
        rows.append(Misuse(f"connection-timeout={value!r}",
                           use_context_manager_with_timeout(value), error, message,
                           after=block_never_ran))
    for attribute, value, error, message in [
        ("idle_timeout", math.nan, ValueError, NAN.format("idle_timeout")),
        ("idle_timeout", -1, ValueError, AT_LEAST_0.format("idle_timeout", "-1")),
        ("idle_timeout", "10", TypeError, SECONDS_OR_NONE.format("idle_timeout", "str")),
        ("idle_timeout", True, TypeError, SECONDS_OR_NONE.format("idle_timeout", "bool")),
        ("check_idle_after", -1, ValueError, AT_LEAST_0.format("check_idle_after", "-1")),
        ("check_idle_after", math.nan, ValueError, NAN.format("check_idle_after")),
        ("check_idle_after", "0", TypeError, SECONDS_OR_NONE.format("check_idle_after",
                                                                     "str")),
        ("timeout", math.nan, ValueError, NAN.format("timeout")),
        ("timeout", -1, ValueError, AT_LEAST_0.format("timeout", "-1")),
        ("timeout", None, TypeError, SECONDS.format("timeout", "NoneType")),
        ("timeout", "5", TypeError, SECONDS.format("timeout", "str")),
    ]:
        rows.append(Misuse(f"set-{attribute}={value!r}", settable(attribute, value), error,
                           message, after=settings_unchanged))
    rows += [
        Misuse("add_listener-object", lambda e: e.pool.add_listener(object()), TypeError,
               NOT_A_LISTENER, after=no_listener),
        Misuse("add_listener-None", lambda e: e.pool.add_listener(None), TypeError,
               NOT_A_LISTENER, after=no_listener),
        Misuse("add_listener-non-callable-hooks",
               lambda e: e.pool.add_listener(NotCallableHooks()), TypeError, NOT_A_LISTENER,
               after=no_listener),
        Misuse("add_listener-class", lambda e: e.pool.add_listener(PoolListener), TypeError,
               "add_listener() takes a listener object, got the class PoolListener; pass an "
               "instance: PoolListener()", after=no_listener),
        Misuse("add_listener-twice", lambda e: e.pool.add_listener(e.ctx["listener"]),
               ValueError, "this listener is already attached to the pool", setup=attach,
               after=attached_once),
        # Documented as ignored: no error, and nothing changes.
        Misuse("remove_listener-not-attached", lambda e: e.pool.remove_listener(Checkouts()),
               None, setup=attach, after=attached_once),
        Misuse("remove_listener-twice", lambda e: e.pool.remove_listener(e.ctx["listener"]),
               None, setup=attach_then_detach, after=no_listener),
        Misuse("remove_listener-on-empty", lambda e: e.pool.remove_listener(object()),
               None, after=no_listener),
    ]
    return rows


RUNTIME_ROWS = runtime_rows()


def assert_pool_works(pool: ConnectionPool) -> None:
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    conns = [pool.getconn(), pool.getconn()]  # the whole of maxconn is still there
    for conn in conns:
        pool.putconn(conn)
    stats = pool.get_stats()
    assert stats["pool_in_use"] == 0 and stats["requests_waiting"] == 0


@pytest.mark.parametrize("row", RUNTIME_ROWS, ids=[row.id for row in RUNTIME_ROWS])
def test_runtime_misuse(row: Misuse, make_pool: MakePool, secret_dsn: str) -> None:
    pool = make_pool(1, 2, dsn=secret_dsn)
    env = Env(pool, make_pool, secret_dsn)
    (row.setup or nothing)(env)
    before = snapshot(pool)
    if row.error is None:
        row.misuse(env)
    else:
        message = row.message.format(name=pool.name)
        with pytest.raises(row.error, match=exactly(message)) as raised:
            row.misuse(env)
        assert type(raised.value) is row.error
        assert_no_password(raised.value)
        assert raised.value.__cause__ is None
    assert snapshot(pool) == before
    assert PASSWORD not in repr(pool)
    (row.after or nothing)(env)
    if pool.closed:
        with pytest.raises(PoolClosed):
            pool.getconn()
    else:
        assert_pool_works(pool)
