"""A password, however it is given, never shows in anything the pool or its telemetry emits.

Each SHAPE hands a password to the pool one way: URI userinfo or query (percent-encoded or
not), key=value (quoted or not), keyword argument, URI plus keyword, PGPASSWORD, passfile,
PGPASSFILE. Each shape is swept against two TARGETS: the test server (pgserver trusts local
sockets and ignores the password, so the pool works and libpq really receives the secret) and
a refused address (every connection fails). A sweep drives an instrumented pool through
checkouts, a failing listener, a garbage-collected connection, exhaustion with and without a
wait, a foreign and a double return, a leak report and close, recording every sink. Each
SINK is a function returning texts, and ``assert_clean`` looks for the password in all of
them, in every encoding it could take. Malformed options, unknown keywords and a subprocess
with PGPASSWORD set are checked the same way.

Every password contains ``CORE``, so partial leaks (a fragment after a quote, say) show too.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, quote_plus

import psycopg2
import psycopg2.extensions
import pytest
import structlog
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from psycopg2_pool import ConnectionPool
from psycopg2_pool.dsn import parse_options
from telemetry import PoolInstrumentation, instrument, names
from tests.support.errors import exception_texts
from tests.support.system import DSN_ENV

CORE = "Zq7Kx9Secret"  # in every password below; no other text of the library contains it
PLAIN = CORE
SPECIAL = "p@ss:w/rd% ?#&=" + CORE  # needs percent-encoding in a URI
QUOTED = "a b'c\\" + CORE + '" d'  # needs quoting in key=value (space, quotes, backslash)
PASSFILE = "pf:" + CORE  # a colon, escaped in the passfile


def libpq_quote(value: str) -> str:
    """``value`` escaped for a single-quoted key=value option."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def secret_forms(password: str) -> set[str]:
    """The spellings a sink could give the password: raw, percent-encoded, escaped, CORE."""
    forms = {
        password,
        quote(password, safe=""),
        quote(password),
        quote_plus(password),
        libpq_quote(password),
        password.replace("\\", "\\\\").replace(":", "\\:"),  # passfile
        repr(password)[1:-1],
        json.dumps(password)[1:-1],
        CORE,
    }
    return {form for form in forms if form}


def assert_clean(texts: Iterable[str]) -> None:
    """No text contains the password in any of its forms."""
    for text in texts:
        leaked = sorted(form for form in FORBIDDEN if form in text)
        assert not leaked, f"the password ({leaked}) shows in:\n{text}"



# -- shapes and targets ---------------------------------------------------------------------


class Target(NamedTuple):
    """Where the pool connects: the test server, or an address that refuses connections."""

    id: str
    host: str
    port: str
    user: str
    dbname: str
    authority: str  # the URI's host:port ("" for a socket directory, given in the query)
    reachable: bool

    @property
    def base(self) -> str:
        """key=value options, no password."""
        return psycopg2.extensions.make_dsn(host=self.host, port=self.port, user=self.user,
                                            dbname=self.dbname, connect_timeout=2)

    @property
    def query(self) -> str:
        """A URI query with what the authority does not say."""
        params = {"connect_timeout": "2"}
        if not self.authority:
            params = {"host": self.host, "port": self.port, **params}
        return "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())

    @property
    def uri(self) -> str:
        """A URI without a password."""
        return f"postgresql://{self.user}@{self.authority}/{self.dbname}?{self.query}"

    @property
    def default_name(self) -> str:
        return f"{self.host}:{self.port}/{self.dbname}"


REFUSED = Target("refused", "127.0.0.1", "1", "app", "db", "127.0.0.1:1", reachable=False)


def server_target(dsn: str) -> Target:
    """The test server as libpq resolves ``dsn`` (it may leave host, user or dbname to the
    PG* variables or libpq's defaults: a ``PSYCOPG2_POOL_TEST_DSN`` need not name them)."""
    conn = psycopg2.connect(dsn)
    try:
        info = conn.info
        return Target("server", info.host, str(info.port), info.user, info.dbname, "",
                      reachable=True)
    finally:
        conn.close()


Build = Callable[[Target, str, Path], dict[str, Any]]  # (target, password, passfile) -> kwargs


def uri_userinfo(t: Target, password: str, passfile: Path) -> dict[str, Any]:
    return {"dsn": f"postgresql://{t.user}:{quote(password, safe='')}@{t.authority}/"
                   f"{t.dbname}?{t.query}"}


def uri_query(t: Target, password: str, passfile: Path) -> dict[str, Any]:
    return {"dsn": f"{t.uri}&password={quote(password, safe='')}"}


def key_value(t: Target, password: str, passfile: Path) -> dict[str, Any]:
    return {"dsn": f"{t.base} password={password}"}


def key_value_quoted(t: Target, password: str, passfile: Path) -> dict[str, Any]:
    return {"dsn": f"{t.base} password='{libpq_quote(password)}'"}


def keyword(t: Target, password: str, passfile: Path) -> dict[str, Any]:
    return {"dsn": t.base, "password": password}


def keyword_with_uri(t: Target, password: str, passfile: Path) -> dict[str, Any]:
    return {"dsn": t.uri, "password": password}


def passfile_option(t: Target, password: str, passfile: Path) -> dict[str, Any]:
    return {"dsn": t.base, "passfile": str(passfile)}


def no_password(t: Target, password: str, passfile: Path) -> dict[str, Any]:
    return {"dsn": t.base}


class Shape(NamedTuple):
    """One way of giving the pool a password."""

    id: str
    password: str
    build: Build
    environ: Callable[[str, Path], dict[str, str]] | None = None

    @property
    def in_options(self) -> bool:
        """True when the password is among the pool's connection options."""
        return self.environ is None and self.build is not passfile_option


SHAPES = [
    Shape("uri-userinfo", PLAIN, uri_userinfo),
    Shape("uri-userinfo-percent-encoded", SPECIAL, uri_userinfo),
    Shape("uri-query", PLAIN, uri_query),
    Shape("uri-query-percent-encoded", SPECIAL, uri_query),
    Shape("key-value", PLAIN, key_value),
    Shape("key-value-quoted", QUOTED, key_value_quoted),
    Shape("keyword", PLAIN, keyword),
    Shape("keyword-special-characters", QUOTED + SPECIAL, keyword),
    Shape("keyword-with-uri", SPECIAL, keyword_with_uri),
    Shape("PGPASSWORD", PLAIN, no_password, lambda password, f: {"PGPASSWORD": password}),
    Shape("passfile", PASSFILE, passfile_option),
    Shape("PGPASSFILE", PASSFILE, no_password, lambda password, f: {"PGPASSFILE": str(f)}),
]

#: Every spelling of every password above: no sink may contain any of them.
FORBIDDEN = frozenset().union(*(secret_forms(shape.password) for shape in SHAPES))


# -- one sweep: every sink recorded ------------------------------------------------------------


@dataclass
class Sweep:
    """What the library emitted while one shape was driven against one target."""

    shape: Shape
    target: Target
    name: str = ""
    password_used: str | None = None  # what libpq got: proves the shape carried the secret
    password_configured: str | None = None  # what the pool's options hold
    pool: list[str] = field(default_factory=list)
    connections: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    event_types: set[str] = field(default_factory=set)
    exceptions: list[BaseException] = field(default_factory=list)
    logging: list[str] = field(default_factory=list)
    log_events: list[str] = field(default_factory=list)
    structlog: list[str] = field(default_factory=list)
    json: io.StringIO = field(default_factory=io.StringIO)
    console: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    spans: list[Any] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    prometheus: list[str] = field(default_factory=list)

    def catch(self, call: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """Call, keeping the exception it raises (a sink); the test checks the types."""
        try:
            call(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every error is recorded and checked
            self.exceptions.append(exc)

    def snapshot(self, pool: ConnectionPool, handle: PoolInstrumentation, *conns: Any) -> None:
        self.name = pool.name
        self.pool += [repr(pool), str(pool), pool.name, repr(pool.get_stats()), repr(handle),
                      handle.name, repr(list(pool.idle_connections)),
                      repr(pool.connections_in_use)]
        for conn in conns:
            self.connections += [repr(conn), str(conn), conn.dsn]

    def snapshot_leaks(self, handle: PoolInstrumentation) -> None:
        detector = handle.leak_detector
        assert detector is not None
        self.leaks += [repr(handle.leaks()), repr(handle.leaks(all_checkouts=True)),
                       repr(list(detector.collected)), repr(detector.holders())]

    def wait_for_log(self, event: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while event not in self.log_events:
            assert time.monotonic() < deadline, f"no {event} logged within {timeout} s"
            time.sleep(0.02)


class Everything:
    """A listener keeping the repr of every event (not the event: connections must die)."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep

    def _record(self, event: Any) -> None:
        self.sweep.event_types.add(type(event).__name__)
        self.sweep.events += [repr(event), *map(str, event)]

    on_connect = on_checkout = on_checkin = on_timeout = on_discard = _record
    on_unavailable = on_recovered = on_close = _record


class FailsOnce:
    """A listener whose first call raises (with the event in the message): logged by the pool."""

    def __init__(self) -> None:
        self.failed = False

    def _fail(self, event: Any) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError(f"listener failure on {event!r}")

    on_connect = on_checkout = on_checkin = on_timeout = on_discard = _fail
    on_unavailable = on_recovered = on_close = _fail


class Lines(logging.Handler):
    """Formats stdlib records at once (exc_info included) and keeps only the text."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += [self.format(record), repr(record.args)]


@contextmanager
def recording(sweep: Sweep, shape: Shape, passfile: Path) -> Iterator[None]:
    """Stdlib logging at DEBUG and structlog (raw, console, JSON) into ``sweep``; the
    shape's environment variables set (and the others unset) meanwhile."""
    handler = Lines(sweep.logging)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    console = structlog.dev.ConsoleRenderer(colors=False)

    def tee(logger: Any, method: str, event_dict: Any) -> Any:
        sweep.log_events.append(event_dict["event"])
        sweep.structlog.append(repr(event_dict))
        sweep.console.append(console(logger, method, dict(event_dict)))
        return event_dict

    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso"), tee,
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(sweep.json),
        cache_logger_on_first_use=False)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.delenv("PGPASSWORD", raising=False)
            env.delenv("PGPASSFILE", raising=False)
            environ = shape.environ(shape.password, passfile) if shape.environ else {}
            for key, value in environ.items():
                env.setenv(key, value)
            yield
    finally:
        structlog.reset_defaults()
        root.removeHandler(handler)
        root.setLevel(level)


class Sdk:
    """The OpenTelemetry SDK: in-memory spans, in-memory metrics and a Prometheus reader."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.registry = CollectorRegistry()
        self.meter_provider = MeterProvider(metric_readers=[
            self.reader, PrometheusMetricReader(registry=self.registry)])

    def collect(self, sweep: Sweep) -> None:
        data = self.reader.get_metrics_data()
        if data is not None:
            sweep.metrics.append(data.to_json())
        sweep.prometheus.append(generate_latest(self.registry).decode())

    def shutdown(self) -> None:
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


def exercise_server(pool: ConnectionPool, handle: PoolInstrumentation, sdk: Sdk, s: Sweep,
                    dsn: str) -> None:
    a = pool.getconn()  # FailsOnce raises here: logged with its traceback
    with a.cursor() as cur:
        cur.execute("SELECT 1")
    s.password_used = a.info.password
    dropped = pool.getconn()  # connection_leaked: garbage-collected while checked out
    del dropped
    gc.collect()
    b = pool.getconn()
    s.snapshot(pool, handle, a, b)
    s.catch(pool.getconn)  # exhausted, no wait (the note names the holders)
    s.catch(pool.getconn, timeout=0.05)  # exhausted after a wait
    foreign = psycopg2.connect(dsn)
    try:
        s.catch(pool.putconn, foreign)  # not from this pool
    finally:
        foreign.close()
    s.wait_for_log("connection_leak_suspected")  # a and b, held past leak_threshold
    s.snapshot_leaks(handle)
    sdk.collect(s)  # before close: the gauges stop with the pool
    pool.putconn(a)  # connection_leak_returned
    s.catch(pool.putconn, a)  # returned twice
    pool.putconn(b, close=True)  # discarded (closed_by_user)
    kept = pool.getconn()
    pool.close()  # closed with a connection out: reported
    s.catch(pool.getconn)  # closed pool
    pool.putconn(kept)  # discarded (pool_closed)
    s.snapshot(pool, handle, kept)


def exercise_refused(pool: ConnectionPool, handle: PoolInstrumentation, sdk: Sdk, s: Sweep,
                     dsn: str) -> None:
    s.snapshot(pool, handle)
    s.catch(pool.getconn)  # connection refused
    s.catch(pool.getconn, timeout=0.05)
    foreign = psycopg2.connect(dsn)
    try:
        s.catch(pool.putconn, foreign)
    finally:
        foreign.close()
    s.snapshot_leaks(handle)
    sdk.collect(s)
    pool.close()
    s.catch(pool.getconn)
    s.snapshot(pool, handle)


def run_sweep(shape: Shape, target: Target, dsn: str, passfile: Path) -> Sweep:
    s = Sweep(shape, target)
    kwargs = shape.build(target, shape.password, passfile)
    sdk = Sdk()
    with recording(s, shape, passfile):
        s.password_configured = parse_options(dict(kwargs)).get("password")
        if not target.reachable:
            s.catch(ConnectionPool, 1, 1, **kwargs)  # fails in the constructor (minconn)
        pool = ConnectionPool(1 if target.reachable else 0, 2, **kwargs)
        handle = instrument(pool, tracer_provider=sdk.tracer_provider,
                            meter_provider=sdk.meter_provider, leak_threshold=0.2)
        pool.add_listener(Everything(s))
        pool.add_listener(FailsOnce())
        try:
            with sdk.tracer_provider.get_tracer("tests").start_as_current_span("request"):
                exercise = exercise_server if target.reachable else exercise_refused
                exercise(pool, handle, sdk, s, dsn)
            s.snapshot_leaks(handle)
            sdk.collect(s)
        finally:
            pool.close()
            handle.uninstrument()
            s.spans = list(sdk.exporter.get_finished_spans())
            sdk.shutdown()
    return s


SWEEPS = [(shape, target) for shape in SHAPES for target in ("server", "refused")]


@pytest.fixture(scope="module")
def passfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "pgpass"
    path.write_text("*:*:*:*:" + PASSFILE.replace("\\", "\\\\").replace(":", "\\:") + "\n")
    path.chmod(0o600)  # libpq ignores a passfile others can read
    return path


@pytest.fixture(scope="module", params=SWEEPS, ids=[f"{s.id}@{t}" for s, t in SWEEPS])
def sweep(request: pytest.FixtureRequest, dsn: str, passfile: Path) -> Sweep:
    shape, target = request.param
    if target == "server" and os.environ.get(DSN_ENV):
        try:
            psycopg2.connect(dsn, password=PLAIN).close()
        except psycopg2.OperationalError:
            pytest.skip(f"the server {DSN_ENV} names checks passwords: the sweeps that plant "
                        f"one need a server that ignores it (trust), as the embedded one does")
    return run_sweep(shape, server_target(dsn) if target == "server" else REFUSED, dsn,
                     passfile)


# -- sinks: each returns the texts it shows --------------------------------------------------


def pool_sink(s: Sweep) -> list[str]:
    """repr/str of the pool and the handle, pool.name, get_stats(), before and after close."""
    return s.pool


def connection_sink(s: Sweep) -> list[str]:
    """repr/str/dsn of pooled connections."""
    return s.connections


def event_sink(s: Sweep) -> list[str]:
    """repr of every event (all six types) and str of each field."""
    return s.events


def exception_sink(s: Sweep) -> list[str]:
    return [text for exc in s.exceptions for text in exception_texts(exc)]


def stdlib_logging_sink(s: Sweep) -> list[str]:
    """Records at DEBUG, formatted with their exc_info."""
    return s.logging


def structlog_event_sink(s: Sweep) -> list[str]:
    """The event dicts as the processors received them."""
    return s.structlog


def structlog_json_sink(s: Sweep) -> list[str]:
    return s.json.getvalue().splitlines()


def structlog_console_sink(s: Sweep) -> list[str]:
    return s.console


def leak_report_sink(s: Sweep) -> list[str]:
    """Leak snapshots, holders, collected leaks, and the leak events as rendered."""
    return s.leaks + [line for line in structlog_json_sink(s) if "leak" in line]


def span_sink(s: Sweep) -> list[str]:
    """Span names, attributes, events (exceptions recorded), status descriptions, resource."""
    return [span.to_json() for span in s.spans]


def metric_sink(s: Sweep) -> list[str]:
    """Every metric point and its attributes, from the in-memory reader."""
    return s.metrics


def prometheus_sink(s: Sweep) -> list[str]:
    """The Prometheus exposition text."""
    return s.prometheus


SINKS = {
    "pool": pool_sink,
    "connection": connection_sink,
    "events": event_sink,
    "exceptions": exception_sink,
    "stdlib-logging": stdlib_logging_sink,
    "structlog-events": structlog_event_sink,
    "structlog-json": structlog_json_sink,
    "structlog-console": structlog_console_sink,
    "leak-reports": leak_report_sink,
    "spans": span_sink,
    "metrics": metric_sink,
    "prometheus": prometheus_sink,
}


@pytest.mark.parametrize("sink", SINKS.values(), ids=SINKS.keys())
def test_sink_never_shows_the_password(sweep: Sweep, sink: Callable[[Sweep], list[str]]
                                       ) -> None:
    assert_clean(sink(sweep))


def test_sweep_carried_the_password_and_reached_every_sink(sweep: Sweep) -> None:
    """The sinks above are clean, not empty: the secret was in use and everything fired."""
    shape, target = sweep.shape, sweep.target
    if shape.in_options:
        assert sweep.password_configured == shape.password
    assert sweep.name == target.default_name  # never the user nor the password
    errors = [type(e).__name__ for e in sweep.exceptions]
    spans = {span.attributes.get("psycopg2_pool.outcome") for span in sweep.spans}
    if target.reachable:
        assert sweep.password_used == shape.password  # libpq got the secret
        assert errors == ["PoolExhausted", "PoolExhausted", "PoolError", "PoolError",
                          "PoolClosed"]
        assert "connections checked out by" in "".join(sweep.exceptions[0].__notes__)
        assert sweep.event_types == {"ConnectEvent", "CheckoutEvent", "CheckinEvent",
                                     "TimeoutEvent", "DiscardEvent", "CloseEvent"}
        assert {"pool_exhausted", "connection_discarded", "connection_leak_suspected",
                "connection_leak_returned", "connection_leaked",
                "pool_closed_with_connections_out"} <= set(sweep.log_events)
        assert {"acquired", "timeout"} <= spans
        assert any(leak.startswith("[Leak(") for leak in sweep.leaks)
        assert sweep.connections
        assert names.COUNT in "".join(sweep.metrics)
    else:
        # the constructor and timeout=0 fail with libpq's error; a caller that waits, once
        # its timeout passed, with ServerUnavailable (libpq's error as its cause)
        assert errors == ["OperationalError"] * 2 + ["ServerUnavailable", "PoolError",
                                                     "PoolClosed"]
        assert sweep.event_types == {"ConnectEvent", "UnavailableEvent", "TimeoutEvent",
                                     "CloseEvent"}
        assert {"connection_failed", "pool_closed"} <= set(sweep.log_events)
        assert names.ERRORS in "".join(sweep.metrics)
    assert any("raised; the pool carries on" in line for line in sweep.logging)
    assert "Traceback" in "".join(sweep.logging)
    assert sweep.json.getvalue() and sweep.console and sweep.structlog
    assert "db_client_connection_max" in "".join(sweep.prometheus)


def test_assert_clean_sees_every_form_of_every_password() -> None:
    for form in FORBIDDEN:
        with pytest.raises(AssertionError):
            assert_clean([f"before {form} after"])


# -- options the pool refuses ------------------------------------------------------------------

MALFORMED: dict[str, dict[str, Any]] = {
    "kv-trailing-word": {"dsn": f"host=/tmp password={PLAIN} port"},
    "kv-unterminated-quote": {"dsn": f"host=/tmp password='{PLAIN}"},
    "kv-missing-equals": {"dsn": f"host=/tmp password {PLAIN}"},
    "kv-unquoted-space": {"dsn": f"host=/tmp password=a b{PLAIN}"},
    "kv-unquoted-space-and-quote": {"dsn": f'host=/tmp password=a b"{PLAIN}'},
    "kv-stray-equals": {"dsn": f"dbname=x password={PLAIN} = y"},
    "kv-escaped-quote-unterminated": {"dsn": f"host=/tmp password='{PLAIN}\\' x"},
    "kv-nul": {"dsn": f"host=/tmp password={PLAIN}\x00"},
    "uri-ipv6-unterminated": {"dsn": f"postgresql://u:{PLAIN}@[h/db"},
    "uri-ipv6-unterminated-quote": {"dsn": f'postgresql://u:q"{PLAIN}@[h/db'},
    "uri-ipv6-unterminated-encoded": {"dsn": f"postgresql://u:{quote(SPECIAL, safe='')}@[h/db"},
    "uri-ipv6-empty": {"dsn": f"postgresql://u:{PLAIN}@[]/db"},
    "uri-unexpected-character": {"dsn": f"postgresql://u:{PLAIN}@[::1]x/db"},
    "uri-query-no-value": {"dsn": f"postgresql://u:{PLAIN}@h/db?sslmode"},
    "uri-query-empty-key": {"dsn": f"postgresql://u:{PLAIN}@h/db?connect_timeout=1&x="},
    "uri-query-misspelled": {"dsn": f"postgresql://u@h/db?pasword={PLAIN}"},
    "uri-bad-percent": {"dsn": f"postgresql://u:{PLAIN}%zz@h/db"},
    "uri-bad-percent-quotes": {"dsn": f'postgresql://u@h/db?password=q"a"{PLAIN}%zz'},
    "uri-percent-nul": {"dsn": f"postgresql://u@h/db?password={PLAIN}%00"},
    "keyword-nul": {"dsn": "host=/tmp", "password": f"{PLAIN}\x00"},
    "keyword-with-space": {"dsn": "host=/tmp", "pass word": PLAIN},
    "dsn-bytes": {"dsn": f"password={PLAIN}".encode()},
}


@pytest.mark.parametrize("kwargs", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_options_fail_without_the_password(kwargs: dict[str, Any],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG), pytest.raises((ValueError, TypeError)) as raised:
        ConnectionPool(1, 1, **kwargs)  # minconn=1: what parses but cannot connect fails too
    assert_clean([*exception_texts(raised.value), caplog.text])


@pytest.mark.parametrize(("build", "error"), [
    (lambda t: {"dsn": t.uri, "pasword": PLAIN}, TypeError),  # an unexpected keyword
    (lambda t: {"dsn": f"{t.base} pasword={PLAIN}"}, ValueError),  # a malformed DSN
], ids=["keyword", "in-key-value-dsn"])
def test_unknown_option_error_names_the_option_not_the_value(
        build: Callable[[Target], dict[str, Any]], error: type[Exception], dsn: str) -> None:
    with pytest.raises(error, match="pasword") as raised:
        ConnectionPool(0, 1, **build(server_target(dsn)))
    assert_clean(exception_texts(raised.value))


def test_default_name_never_uses_user_or_password(dsn: str) -> None:
    target = server_target(dsn)
    pool = ConnectionPool(0, 1, **uri_userinfo(target, PLAIN, Path()), user="postgres")
    try:
        assert pool.name == target.default_name
        assert_clean([pool.name])
    finally:
        pool.close()


SUBPROCESS = """
import logging, os, sys, time, traceback
from psycopg2_pool import ConnectionPool, PoolExhausted
from telemetry import instrument

logging.basicConfig(level=logging.DEBUG)  # stderr; structlog's default prints to stdout

class Print:
    def _print(self, event):
        print(repr(event))
    on_connect = on_checkout = on_checkin = on_timeout = on_discard = on_close = _print

pool = ConnectionPool(0, 1, dsn=sys.argv[1], name=None)
handle = instrument(pool, leak_threshold=0.1)
pool.add_listener(Print())
conn = pool.getconn()
print("password used:", conn.info.password == os.environ["PGPASSWORD"])
try:
    pool.getconn()
except PoolExhausted as exc:
    print(exc)
    traceback.print_exception(exc)
time.sleep(0.8)
print(repr(pool), repr(conn), pool.get_stats(), handle.leaks())
pool.putconn(conn)
pool.close()
"""


def test_pgpassword_never_shows_in_a_whole_process_output(dsn: str) -> None:
    """PGPASSWORD set for a whole process: nothing it prints (stdout, stderr) shows it."""
    env = dict(os.environ, PGPASSWORD=PLAIN)
    result = subprocess.run([sys.executable, "-c", SUBPROCESS, dsn], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "password used: True" in result.stdout
    assert "no more connections in the pool" in result.stdout
    assert "connection_leak_suspected" in result.stdout
    assert "CheckoutEvent" in result.stdout
    assert_clean([result.stdout, result.stderr])
