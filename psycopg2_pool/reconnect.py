"""When to try to connect again after a failure: one backoff for the whole pool.

However many callers wait, a pool whose connects fail makes one attempt at a time, spaced
by an exponential backoff with jitter (so that the pools of many processes do not retry in
step): 50 ms, then doubling up to 0.5 s. The cap is low on purpose: it bounds how long after
the server is back the first checkout succeeds, and an attempt against a server that
refuses costs it almost nothing (one against a server that does not answer lasts
``connect_timeout``, which spaces the attempts by itself).

The state lives under the pool's lock; this class does no locking of its own.
"""

from __future__ import annotations

import random

from .errors import one_line

#: Seconds before the first retry, the growth factor, and the longest wait between tries.
INITIAL_DELAY = 0.05
FACTOR = 2.0
MAX_DELAY = 0.5
#: An attempt still in progress after this many seconds means the server is not answering:
#: a caller that times out meanwhile is told so (ServerUnavailable), not that the pool is
#: exhausted. A healthy connect takes milliseconds, a slow TLS one across regions < 0.5 s.
NOT_ANSWERING = 1.0


class Backoff:
    """The reconnect state of one pool: failing or not, since when, and when to retry."""

    __slots__ = ("failures", "last_error", "next_attempt", "since")

    def __init__(self) -> None:
        self.failures = 0  #: attempts that failed since the last success
        self.since = 0.0  #: monotonic time of the first of those failures
        self.next_attempt = 0.0  #: no retry before this monotonic time
        self.last_error: BaseException | None = None

    @property
    def failing(self) -> bool:
        """True from a failed attempt until the next successful one (an outage)."""
        return self.failures > 0

    def failed(self, now: float, error: BaseException) -> bool:
        """Record a failed attempt; True when it begins an outage."""
        began = self.failures == 0
        if began:
            self.since = now
        self.failures += 1
        self.last_error = error
        delay = min(MAX_DELAY, INITIAL_DELAY * FACTOR ** (self.failures - 1))
        self.next_attempt = now + random.uniform(delay / 2, delay)  # "equal jitter"
        return began

    def succeeded(self, now: float) -> tuple[float, int, BaseException | None] | None:
        """Record a success; (outage seconds, failed attempts, last error) if it ends one."""
        if not self.failures:
            return None
        ended = (now - self.since, self.failures, self.last_error)
        self.failures = 0
        self.last_error = None
        self.next_attempt = 0.0
        return ended

    def describe(self, now: float) -> str:
        """The outage in words, for error messages: attempts, how long, libpq's last message."""
        return (f"{self.failures} connection attempt(s) failed over the last "
                f"{self.unavailable_for(now):.3g} s, the last with: {one_line(self.last_error)}")

    def unavailable_for(self, now: float) -> float:
        """Seconds the pool has been failing to connect (0.0 when it is not)."""
        return now - self.since if self.failures else 0.0


__all__ = ["FACTOR", "INITIAL_DELAY", "MAX_DELAY", "NOT_ANSWERING", "Backoff"]
