"""The pool's exceptions.

They subclass ``psycopg2.pool.PoolError`` so code written for ``psycopg2.pool`` keeps catching
them; exhaustion is also a ``psycopg2.OperationalError``, the class psycopg2-pool 1.2's users see
in the error ``psycopg2.OperationalError: no more connections in the pool``.
"""

from __future__ import annotations

from ._driver import psycopg2, psycopg2_pool_module


def one_line(error: BaseException | None) -> str | None:
    """An error's message on one line, for logs and messages (libpq's names host, port and
    user, never the password); None for no error."""
    return " ".join(str(error).split()) if error is not None else None


class PoolError(psycopg2_pool_module.PoolError):
    """Misuse of the pool: a foreign or already returned connection, a closed pool, ..."""


class PoolClosed(PoolError):
    """The pool was closed with :meth:`ConnectionPool.close`; make a new pool to go on."""


class PoolExhausted(PoolError, psycopg2.OperationalError):
    """``getconn`` found all ``maxconn`` connections in use and none came back in time.

    Attributes give the figures of the message, for programs: ``maxconn``, ``in_use``,
    ``waited`` (seconds) and ``timeout`` (seconds).
    """

    def __init__(self, message: str = "no more connections in the pool", *,
                 maxconn: float = 0, in_use: int = 0, waited: float = 0.0,
                 timeout: float = 0.0) -> None:
        super().__init__(message)
        self.maxconn = maxconn
        self.in_use = in_use
        self.waited = waited
        self.timeout = timeout


class TooManyRequests(PoolExhausted):
    """``getconn`` was refused at once: ``max_waiting`` callers were already waiting.

    psycopg_pool's name. Being a :class:`PoolExhausted`, it is also a ``PoolError`` and a
    ``psycopg2.OperationalError``.
    """


class ServerUnavailable(psycopg2.OperationalError):
    """``getconn`` waited ``timeout`` seconds and no connection could be opened.

    The server refused or failed every attempt (``attempts`` of them, the last one's message
    is in the text and in ``__cause__``), or did not answer in time. Not a ``PoolError``: the
    pool is not misused, and code that caught psycopg2's ``OperationalError`` for a failed
    connect keeps catching it. The pool goes on trying in the background.
    """

    def __init__(self, message: str, *, waited: float = 0.0, timeout: float = 0.0,
                 attempts: int = 0, unavailable_for: float = 0.0) -> None:
        super().__init__(message)
        self.waited = waited
        self.timeout = timeout
        self.attempts = attempts
        self.unavailable_for = unavailable_for


class IOTimeout(psycopg2.OperationalError):
    """A round trip the pool started itself (``check``, the rollback or ``reset`` of a
    return) outlived ``io_timeout``: the watchdog shut the socket down and the connection is
    discarded, even if the call itself happened to return."""


__all__ = ["IOTimeout", "PoolClosed", "PoolError", "PoolExhausted", "ServerUnavailable",
           "TooManyRequests", "one_line"]
