"""The pool's arguments: validated once, with messages that say what to pass instead.

No message quotes a value that could be a connection string: a str where a number belongs
is named by its type only, since it may hold a password.
"""

from __future__ import annotations

import math
import os
from typing import Any

_INF = math.inf

#: Seconds libpq may take to open a connection when neither the arguments, the DSN nor
#: ``PGCONNECT_TIMEOUT`` say (libpq's own default is to wait forever). It bounds how long a
#: background attempt against a server that accepts and never answers holds its slot.
DEFAULT_CONNECT_TIMEOUT = 10


class _Default(float):
    """A default that can be told from the same number passed explicitly (``is``), so that
    ``idle_timeout`` given both positionally and by keyword is refused, not silently picked."""

    def __repr__(self) -> str:
        return f"{float(self):g}"


#: ``idle_timeout``'s default (psycopg2-pool 1.2's): seconds an idle connection is kept.
IDLE_TIMEOUT: float = _Default(600)

#: psycopg2.connect's positional parameters, in order: what psycopg2.pool passes its ``*args``
#: to after ``minconn, maxconn``.
CONNECT_POSITIONAL = ("dsn", "connection_factory", "cursor_factory")
_ORDINALS = ("third", "fourth", "fifth")


def positional(args: tuple[Any, ...], idle_timeout: Any, connect_kwargs: dict[str, Any]) -> Any:
    """Sort out the positional arguments after ``maxconn``; return ``idle_timeout``.

    psycopg2-pool 1.2 takes ``idle_timeout`` third; psycopg2.pool passes everything after
    ``maxconn`` to ``psycopg2.connect`` (``dsn, connection_factory, cursor_factory``). A number
    or None cannot be a DSN and a str cannot be a duration, so the third argument's type
    decides; psycopg2.pool's arguments are moved into ``connect_kwargs``. No message quotes a
    value: the DSN may hold a password.
    """
    if not args:
        return idle_timeout
    if isinstance(args[0], str):
        if len(args) > len(CONNECT_POSITIONAL):
            raise TypeError(f"after minconn and maxconn, psycopg2.connect() takes at most 3 "
                            f"positional arguments (dsn, connection_factory, cursor_factory), "
                            f"got {len(args)}; pass the others by keyword")
        for name, value, ordinal in zip(CONNECT_POSITIONAL, args, _ORDINALS, strict=False):
            if name in connect_kwargs:
                raise TypeError(f"{name} given twice: as the {ordinal} positional argument "
                                f"and as {name}=; pass it once")
            connect_kwargs[name] = value
        return idle_timeout
    if idle_timeout is not IDLE_TIMEOUT:
        raise TypeError("idle_timeout given twice: as the third positional argument and as "
                        "idle_timeout=; pass it once")
    if len(args) > 1:
        raise TypeError(f"with idle_timeout third (a number or None), ConnectionPool() takes "
                        f"at most 3 positional arguments (minconn, maxconn, idle_timeout), got "
                        f"{2 + len(args)}; pass connection arguments by keyword (dsn=..., "
                        f"host=..., ...), or the DSN third as psycopg2.pool does")
    return args[0]


def seconds(name: str, value: Any, *, positive: bool = False, optional: bool = False) -> float:
    """Validate a duration argument: a real number of seconds, not NaN, not negative."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        accepted = "a number of seconds or None" if optional else "a number of seconds"
        raise TypeError(f"{name} must be {accepted}, got {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{name} must be a number of seconds, got NaN")
    if value < 0 or (positive and value == 0):
        hint = "; pass None for no limit" if positive and optional else ""
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} seconds, "
                         f"got {value!r}{hint}")
    return float(value)


def optional_seconds(name: str, value: Any, *, positive: bool = False) -> float | None:
    return None if value is None else seconds(name, value, positive=positive, optional=True)


def sizes(minconn: Any, maxconn: Any) -> None:
    """Check ``minconn``/``maxconn`` (also for :meth:`ConnectionPool.resize`)."""
    if isinstance(minconn, bool) or not isinstance(minconn, int):
        raise TypeError(f"minconn must be an int, got {type(minconn).__name__}")
    if minconn < 0:
        raise ValueError(f"minconn must be >= 0, got {minconn}")
    if isinstance(maxconn, bool) or not isinstance(maxconn, (int, float)) or (
            isinstance(maxconn, float) and maxconn != _INF):
        shown = repr(maxconn) if isinstance(maxconn, (int, float)) else (
            type(maxconn).__name__)  # a str may be a DSN with a password: never quote it
        raise TypeError(f"maxconn must be an int (or float('inf') for no limit), "
                        f"got {shown}")
    if maxconn < 1:
        raise ValueError(f"maxconn must be >= 1, got {maxconn}")
    if minconn > maxconn:
        raise ValueError(f"minconn ({minconn}) must not be greater than maxconn ({maxconn})")


def count(name: str, value: Any, minimum: int = 0) -> int:
    """An int setting such as ``max_waiting`` (0: no limit) or ``num_workers`` (>= 1)."""
    hint = " (0 for no limit)" if minimum == 0 else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int{hint}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}{hint}, got {value}")
    return value


def hook(name: str, value: Any) -> Any:
    """A callable taking a connection, or None."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable taking a connection, "
                        f"got {type(value).__name__}")
    return value


def flag(name: str, value: Any) -> bool:
    """A bool, and nothing that merely looks true (a string, a number)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def pool_name(value: Any) -> str | None:
    """The ``name`` argument: a non-empty str, or None for the default name."""
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError("name must be a non-empty str")
    return value


def synchronous(connect_kwargs: dict[str, Any]) -> None:
    """Refuse ``async=True``: psycopg2's asynchronous connections cannot be pooled."""
    if connect_kwargs.get("async") or connect_kwargs.get("async_"):
        raise TypeError("asynchronous connections cannot be pooled; drop async=True")


def connect_timeout_default(options: dict[str, str]) -> dict[str, int]:
    """``{"connect_timeout": DEFAULT_CONNECT_TIMEOUT}`` unless the user set one anywhere."""
    if "connect_timeout" in options or os.environ.get("PGCONNECT_TIMEOUT"):
        return {}
    return {"connect_timeout": DEFAULT_CONNECT_TIMEOUT}


def connect_timeout_text(options: dict[str, str], connect_args: dict[str, Any]) -> str:
    """Where the bound of a connect comes from, for error messages."""
    if "connect_timeout" in connect_args:
        return f"connect_timeout={connect_args['connect_timeout']} s"
    if "connect_timeout" in options:
        return f"connect_timeout={options['connect_timeout']} s, from the DSN"
    return f"connect_timeout={os.environ.get('PGCONNECT_TIMEOUT', '')} s, from PGCONNECT_TIMEOUT"


__all__ = ["CONNECT_POSITIONAL", "DEFAULT_CONNECT_TIMEOUT", "IDLE_TIMEOUT",
           "connect_timeout_default", "connect_timeout_text", "count", "hook",
           "optional_seconds", "pool_name", "positional", "seconds", "sizes", "synchronous"]
