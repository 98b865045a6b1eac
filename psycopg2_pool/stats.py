"""The keys of :meth:`ConnectionPool.get_stats`, named once.

The pool builds its snapshot from these names, ``telemetry.metrics`` reads its gauges by
them and a test checks that docs/api.md documents each: a key renamed here is renamed
everywhere, and one added here is missing from the docs until it is written down.
"""

from __future__ import annotations

from .events import DiscardReason

# State, read under the pool's lock at the time of the snapshot.
NAME = "name"
POOL_MIN = "pool_min"
POOL_MAX = "pool_max"
POOL_SIZE = "pool_size"
POOL_AVAILABLE = "pool_available"
POOL_IN_USE = "pool_in_use"
POOL_OPENING = "pool_opening"
REQUESTS_WAITING = "requests_waiting"
REQUESTS = "requests"
RETURNS = "returns"
UNAVAILABLE_S = "unavailable_s"

# Counters since the pool was created.
EXHAUSTED = "exhausted"
WAITS = "waits"
REQUESTS_WAIT_MS = "requests_wait_ms"
TIMEOUTS = "timeouts"
REQUESTS_REFUSED = "requests_refused"
ROLLBACKS = "rollbacks"
CONNECTIONS_NUM = "connections_num"
CONNECTIONS_ERRORS = "connections_errors"
CONNECTIONS_MS = "connections_ms"
OUTAGES = "outages"
ROLE_CHANGES = "role_changes"
LISTENER_ERRORS = "listener_errors"
CONNECTIONS_DISCARDED = "connections_discarded"

#: ``discarded_<reason>``: discards by :class:`~psycopg2_pool.events.DiscardReason`.
DISCARDED_PREFIX = "discarded_"


def discarded(reason: str) -> str:
    """The key counting the discards for ``reason`` (a ``DiscardReason``)."""
    return DISCARDED_PREFIX + reason


#: What the pool counts as it goes, in seconds where a time: ``wait_time`` and
#: ``connect_time`` are reported in milliseconds as ``requests_wait_ms``/``connections_ms``.
WAIT_TIME = "wait_time"
CONNECT_TIME = "connect_time"
COUNTERS = (EXHAUSTED, WAITS, WAIT_TIME, TIMEOUTS, REQUESTS_REFUSED, ROLLBACKS,
            CONNECTIONS_NUM, CONNECTIONS_ERRORS, CONNECT_TIME, OUTAGES, ROLE_CHANGES,
            LISTENER_ERRORS)

#: Every key of a snapshot, in its order.
KEYS = (NAME, POOL_MIN, POOL_MAX, POOL_SIZE, POOL_AVAILABLE, POOL_IN_USE, POOL_OPENING,
        REQUESTS_WAITING, REQUESTS, RETURNS, UNAVAILABLE_S, EXHAUSTED, WAITS, TIMEOUTS,
        REQUESTS_REFUSED, ROLLBACKS, CONNECTIONS_NUM, CONNECTIONS_ERRORS, OUTAGES,
        ROLE_CHANGES, LISTENER_ERRORS, REQUESTS_WAIT_MS, CONNECTIONS_MS, CONNECTIONS_DISCARDED,
        *(discarded(reason) for reason in DiscardReason.ALL))

#: The keys docs/api.md lists one by one (the ``discarded_<reason>`` keys as one row).
DOCUMENTED = tuple(key for key in KEYS if not key.startswith(DISCARDED_PREFIX))

__all__ = ["COUNTERS", "CONNECTIONS_DISCARDED", "CONNECTIONS_ERRORS", "CONNECTIONS_MS",
           "CONNECTIONS_NUM", "CONNECT_TIME", "DISCARDED_PREFIX", "DOCUMENTED", "EXHAUSTED",
           "KEYS", "LISTENER_ERRORS", "NAME", "OUTAGES", "POOL_AVAILABLE", "POOL_IN_USE",
           "POOL_MAX", "POOL_MIN", "POOL_OPENING", "POOL_SIZE", "REQUESTS", "REQUESTS_REFUSED",
           "REQUESTS_WAITING", "REQUESTS_WAIT_MS", "RETURNS", "ROLE_CHANGES", "ROLLBACKS",
           "TIMEOUTS", "UNAVAILABLE_S", "WAITS", "WAIT_TIME", "discarded"]
