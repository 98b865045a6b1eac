"""Every name the telemetry emits, in one place: metrics, attributes, spans, log events.

Metric and attribute names of the database client connection pool come from
``opentelemetry-semantic-conventions``; the project's own metrics live outside the reserved
``db.*`` namespace, under ``psycopg2_pool.*``. docs/telemetry.md is checked against this module
by a test, and the dashboards are generated from it.
"""

from __future__ import annotations

from typing import NamedTuple

from opentelemetry.semconv._incubating.attributes.db_attributes import (
    DB_CLIENT_CONNECTION_POOL_NAME,
    DB_CLIENT_CONNECTION_STATE,
)
from opentelemetry.semconv._incubating.metrics.db_metrics import (
    DB_CLIENT_CONNECTION_COUNT,
    DB_CLIENT_CONNECTION_CREATE_TIME,
    DB_CLIENT_CONNECTION_IDLE_MAX,
    DB_CLIENT_CONNECTION_IDLE_MIN,
    DB_CLIENT_CONNECTION_MAX,
    DB_CLIENT_CONNECTION_PENDING_REQUESTS,
    DB_CLIENT_CONNECTION_TIMEOUTS,
    DB_CLIENT_CONNECTION_USE_TIME,
    DB_CLIENT_CONNECTION_WAIT_TIME,
)

COUNT = DB_CLIENT_CONNECTION_COUNT
IDLE_MAX = DB_CLIENT_CONNECTION_IDLE_MAX
IDLE_MIN = DB_CLIENT_CONNECTION_IDLE_MIN
MAX = DB_CLIENT_CONNECTION_MAX
PENDING_REQUESTS = DB_CLIENT_CONNECTION_PENDING_REQUESTS
TIMEOUTS = DB_CLIENT_CONNECTION_TIMEOUTS
CREATE_TIME = DB_CLIENT_CONNECTION_CREATE_TIME
WAIT_TIME = DB_CLIENT_CONNECTION_WAIT_TIME
USE_TIME = DB_CLIENT_CONNECTION_USE_TIME
LEAKS = "psycopg2_pool.connection.leaks"
EXHAUSTIONS = "psycopg2_pool.exhaustions"
DISCARDS = "psycopg2_pool.connection.discards"
ERRORS = "psycopg2_pool.connection.errors"
ATTEMPTS = "psycopg2_pool.connection.attempts"
OUTAGES = "psycopg2_pool.outages"
ROLE_CHANGES = "psycopg2_pool.role_changes"
SERVER_CONNECTIONS = "psycopg2_pool.server.connections"
UNAVAILABLE_TIME = "psycopg2_pool.unavailable_time"
REFUSED = "psycopg2_pool.refused_requests"

#: The instrumentation scope (meter and tracer name).
SCOPE = "psycopg2_pool"

#: The structlog logger of the log events (also the stdlib logger's name when structlog
#: renders through stdlib logging).
LOGGER_NAME = "psycopg2_pool"

POOL_NAME = DB_CLIENT_CONNECTION_POOL_NAME  # "db.client.connection.pool.name"
STATE = DB_CLIENT_CONNECTION_STATE  # "db.client.connection.state": "idle" | "used"
REASON = "psycopg2_pool.discard.reason"  # why a connection was discarded
ERROR_TYPE = "error.type"  # semantic conventions: the exception's class name
SERVER_ADDRESS = "server.address"  # semantic conventions: the server libpq connected to
SERVER_PORT = "server.port"  # (a unix socket's directory, and the port in its name)

#: Bucket boundaries (seconds) for pool latencies: 100 µs to 10 s. The SDK's defaults suit
#: milliseconds (0, 5, 10, ... 10000) and would put every checkout in the first bucket.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metric(NamedTuple):
    """One metric: its name, OpenTelemetry instrument kind, unit, attributes, description.

    ``instrument`` is ``ObservableCounter`` (monotonic), ``ObservableUpDownCounter`` (a level
    that adds up across pools and processes), ``ObservableGauge`` (a level that does not add
    up, such as a duration) or ``Histogram``.
    """

    name: str
    instrument: str
    unit: str
    attributes: tuple[str, ...]
    description: str


METRICS = (
    Metric(COUNT, "ObservableUpDownCounter", "{connection}",
           (POOL_NAME, STATE), "Connections currently open, by state (idle or used)."),
    Metric(IDLE_MAX, "ObservableUpDownCounter", "{connection}",
           (POOL_NAME,), "Most idle connections allowed (maxconn: the pool keeps what it has)."),
    Metric(IDLE_MIN, "ObservableUpDownCounter", "{connection}",
           (POOL_NAME,), "Fewest connections kept open (minconn)."),
    Metric(MAX, "ObservableUpDownCounter", "{connection}",
           (POOL_NAME,), "Most open connections allowed (maxconn)."),
    Metric(PENDING_REQUESTS, "ObservableUpDownCounter", "{request}",
           (POOL_NAME,), "getconn calls waiting for a connection."),
    Metric(TIMEOUTS, "ObservableCounter", "{timeout}",
           (POOL_NAME,), "getconn calls that gave up: exhausted at once, or timed out (pool "
           "exhausted, or server unavailable)."),
    Metric(CREATE_TIME, "Histogram", "s",
           (POOL_NAME,), "Time to open a connection."),
    Metric(WAIT_TIME, "Histogram", "s",
           (POOL_NAME,), "Time getconn took to obtain a connection (0 when one was idle)."),
    Metric(USE_TIME, "Histogram", "s",
           (POOL_NAME,), "Time a connection was checked out, from getconn to putconn."),
    Metric(LEAKS, "ObservableCounter", "{connection}",
           (POOL_NAME,), "Connections held past the leak threshold, or collected unreturned."),
    Metric(EXHAUSTIONS, "ObservableCounter", "{event}",
           (POOL_NAME,), "Times getconn found every connection in use and had to wait or fail."),
    Metric(DISCARDS, "ObservableCounter", "{connection}",
           (POOL_NAME, REASON), "Connections closed by the pool (or collected), by reason."),
    Metric(ERRORS, "ObservableCounter", "{error}",
           (POOL_NAME,), "Failed attempts to open a connection."),
    Metric(ATTEMPTS, "ObservableCounter", "{attempt}",
           (POOL_NAME,), "Attempts to open a connection, successful or not."),
    Metric(OUTAGES, "ObservableCounter", "{outage}",
           (POOL_NAME,), "Times opening connections started to fail (an outage began)."),
    Metric(ROLE_CHANGES, "ObservableCounter", "{event}",
           (POOL_NAME,), "Times a server lost the role the pool asks for "
           "(target_session_attrs: a primary fenced or demoted, a standby promoted) and its "
           "connections were replaced: a failover seen by the pool."),
    Metric(SERVER_CONNECTIONS, "ObservableUpDownCounter", "{connection}",
           (POOL_NAME, SERVER_ADDRESS, SERVER_PORT), "Connections open (idle and in use) per "
           "server a multi-host DSN let libpq choose: where the pool is after a failover, how "
           "a read pool spreads over replicas."),
    Metric(UNAVAILABLE_TIME, "ObservableGauge", "s",
           (POOL_NAME,), "How long the pool has been unable to open a connection (0 when it "
           "can)."),
    Metric(REFUSED, "ObservableCounter", "{request}",
           (POOL_NAME,), "getconn calls refused at once: max_waiting callers were already "
           "waiting."),
)

METRIC_BY_NAME = {m.name: m for m in METRICS}

#: The span made for a getconn inside a recording trace (semantic conventions style:
#: "<operation> <target>"; the pool name goes in an attribute).
SPAN_GETCONN = "getconn"
SPAN_WAIT_TIME = "psycopg2_pool.wait_time"  # seconds waited
SPAN_WAITED = "psycopg2_pool.waited"  # whether the call waited at all
SPAN_OPENED = "psycopg2_pool.opened"  # acquired only: whether it opened the connection
SPAN_OUTCOME = "psycopg2_pool.outcome"  # "acquired" | "timeout" | "refused"
SPAN_ATTRIBUTES = (POOL_NAME, SPAN_WAIT_TIME, SPAN_WAITED, SPAN_OPENED, SPAN_OUTCOME,
                   ERROR_TYPE, SERVER_ADDRESS, SERVER_PORT)


#: The log events (structlog's ``event``), described in LOG_EVENTS below.
LOG_POOL_EXHAUSTED = "pool_exhausted"
LOG_REQUEST_REFUSED = "request_refused"
LOG_CONNECTION_FAILED = "connection_failed"
LOG_POOL_UNAVAILABLE = "pool_unavailable"
LOG_POOL_RECOVERED = "pool_recovered"
LOG_SERVER_UNAVAILABLE = "server_unavailable"
LOG_CONNECTION_DISCARDED = "connection_discarded"
LOG_SERVER_ROLE_CHANGED = "server_role_changed"
LOG_POOL_MOVED = "pool_moved"
LOG_POOL_CLOSED = "pool_closed"
LOG_POOL_CLOSED_WITH_CONNECTIONS_OUT = "pool_closed_with_connections_out"
LOG_CONNECTION_LEAK_SUSPECTED = "connection_leak_suspected"
LOG_CONNECTION_LEAK_RETURNED = "connection_leak_returned"
LOG_CONNECTION_LEAKED = "connection_leaked"


class LogEvent(NamedTuple):
    """One structlog event: its name, level and what it is about."""

    name: str
    level: str
    description: str


LOG_EVENTS = (
    LogEvent(LOG_POOL_EXHAUSTED, "warning",
             "getconn gave up: every connection in use. Counts, wait, and who holds them "
             "(at most one a second per pool, with a count of the others)."),
    LogEvent(LOG_REQUEST_REFUSED, "warning",
             "getconn was refused at once: max_waiting callers already waited (at most one a "
             "second per pool, with a count of the others)."),
    LogEvent(LOG_CONNECTION_FAILED, "error",
             "Opening a connection failed (at most one per 5 s per pool, with a count of the "
             "others)."),
    LogEvent(LOG_POOL_UNAVAILABLE, "error",
             "Opening connections started to fail: an outage began (once per outage)."),
    LogEvent(LOG_POOL_RECOVERED, "warning",
             "A connection opened again after an outage: how long it lasted, attempts that "
             "failed."),
    LogEvent(LOG_SERVER_UNAVAILABLE, "warning",
             "getconn gave up because no connection could be opened: the server is down or not "
             "answering (at most one per 5 s per pool, with a count of the others)."),
    LogEvent(LOG_CONNECTION_DISCARDED, "debug", "The pool closed a connection, and why."),
    LogEvent(LOG_SERVER_ROLE_CHANGED, "warning",
             "A server lost the role the pool asks for (target_session_attrs): which server, "
             "what it reports, how many of its connections are being replaced (once per "
             "server and failover)."),
    LogEvent(LOG_POOL_MOVED, "warning",
             "After server_role_changed: the first new connection to a server with the role; "
             "from which server to which, and how long after the change."),
    LogEvent(LOG_POOL_CLOSED, "info", "The pool was closed with every connection returned."),
    LogEvent(LOG_POOL_CLOSED_WITH_CONNECTIONS_OUT, "warning",
             "The pool was closed while connections were still checked out."),
    LogEvent(LOG_CONNECTION_LEAK_SUSPECTED, "warning",
             "A connection was held past the leak threshold: where it was taken."),
    LogEvent(LOG_CONNECTION_LEAK_RETURNED, "info",
             "A connection reported as leaked came back: total time held."),
    LogEvent(LOG_CONNECTION_LEAKED, "error",
             "A checked-out connection was garbage-collected without being returned."),
)

LOG_EVENT_NAMES = tuple(e.name for e in LOG_EVENTS)
