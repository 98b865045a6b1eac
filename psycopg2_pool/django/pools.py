"""One ``ConnectionPool`` per database alias per process, for the Django backend.

- :func:`pool_settings` reads ``OPTIONS["pool"]`` (True, or a dict of the pool's arguments
  plus ``instrument``) with ``CONN_MAX_AGE`` and ``CONN_HEALTH_CHECKS``, and refuses what it
  does not know with ``ImproperlyConfigured``, naming the key and the valid ones.
- :data:`POOLS` holds the pools by alias. A pool is built on the alias's first connection,
  from the parameters Django computes (``get_connection_params()``); if they change (the test
  runner renames the database), the next connection builds a new pool and the old one is
  closed (connections still out from it are closed when they are returned).
- Every pool is closed at interpreter exit (an ``atexit`` handler registered with the first
  pool, so that it runs before those registered earlier, such as an OpenTelemetry SDK's).
- After ``os.fork()`` the same pool object serves the child: the pool forgets the parent's
  connections itself (``psycopg2_pool._forking``), and ``base.py`` makes the child's Django
  connections forget theirs.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from django.core.exceptions import ImproperlyConfigured

from ..pool import ConnectionPool

#: What ``OPTIONS["pool"] = True`` means, and what a dict leaves out. ``timeout``: a request
#: waits up to 10 s for a connection, then ``PoolExhausted`` (a Django ``OperationalError``
#: naming the holders when instrumented), below gunicorn's default 30 s worker timeout, so
#: that the pool's error is what the logs show, not a killed worker. ``minconn`` 1: one
#: connection kept open, opened by the first request that needs it; ``maxconn`` 10: more than
#: the threads of a typical worker (raise it to the worker's threads per alias if above).
DEFAULTS: dict[str, Any] = {"minconn": 1, "maxconn": 10, "timeout": 10.0}

#: The keys of ``OPTIONS["pool"]``: ``ConnectionPool``'s arguments that are not connection
#: parameters (those come from the alias's NAME, USER, HOST, PORT and OPTIONS), nor
#: ``close_returns`` (the backend returns connections itself), and ``instrument``.
POOL_ARGUMENTS = ("minconn", "maxconn", "idle_timeout", "timeout", "max_lifetime",
                  "check_idle_after", "check", "io_timeout", "max_waiting", "num_workers",
                  "configure", "reset", "kwargs", "name")
VALID_KEYS = (*POOL_ARGUMENTS, "instrument")

#: Django's pool for psycopg 3 takes psycopg_pool's names; what each is called here.
PSYCOPG_POOL_NAMES = {"min_size": "minconn", "max_size": "maxconn", "max_idle": "idle_timeout",
                      "open": None, "reconnect_timeout": None, "reconnect_failed": None,
                      "connection_class": None}


class PoolSettings(NamedTuple):
    """An alias's pool, as its settings ask for it."""

    kwargs: dict[str, Any]  #: ``ConnectionPool``'s arguments, defaults applied
    instrument: dict[str, Any] | None  #: ``telemetry.instrument``'s arguments, or None


def pool_settings(alias: str, settings_dict: Mapping[str, Any]) -> PoolSettings:
    """Check an alias's pool settings; raise ``ImproperlyConfigured`` on anything wrong."""
    where = f"DATABASES[{alias!r}]"
    options = settings_dict["OPTIONS"].get("pool")
    max_age = settings_dict.get("CONN_MAX_AGE", 0)
    if max_age != 0:
        raise ImproperlyConfigured(
            f"{where}: OPTIONS['pool'] needs CONN_MAX_AGE = 0, got {max_age!r}. With a pool, "
            f"Django hands each request's connection back to the pool when the request ends "
            f"(and the pool keeps it open); a persistent connection would keep it out of the "
            f"pool. Set CONN_MAX_AGE to 0 (the pool's max_lifetime and idle_timeout bound a "
            f"connection's life instead).")
    if options is True:
        options = {}
    elif not isinstance(options, Mapping):
        raise ImproperlyConfigured(
            f"{where}: OPTIONS['pool'] must be True or a dict of the pool's arguments, got "
            f"{type(options).__name__}")
    unknown = [key for key in options if key not in VALID_KEYS]
    if unknown:
        raise ImproperlyConfigured(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} in "
                                   f"OPTIONS['pool']: {_explain(unknown)}. Valid keys: "
                                   f"{', '.join(VALID_KEYS)}")
    kwargs = {**DEFAULTS, **{k: v for k, v in options.items() if k != "instrument"}}
    minconn = kwargs["minconn"]
    if "maxconn" not in options and isinstance(minconn, int) and minconn > DEFAULTS["maxconn"]:
        kwargs["maxconn"] = minconn
    if settings_dict.get("CONN_HEALTH_CHECKS") and "check_idle_after" not in options:
        kwargs["check_idle_after"] = 0  # every checkout, as Django's own pool does
    instrument = options.get("instrument", False)
    if instrument is True:
        return PoolSettings(kwargs, {})
    if instrument is False or instrument is None:
        return PoolSettings(kwargs, None)
    if isinstance(instrument, Mapping):
        return PoolSettings(kwargs, dict(instrument))
    raise ImproperlyConfigured(f"{where}: OPTIONS['pool']['instrument'] must be True, False or "
                               f"a dict of telemetry.instrument()'s keyword arguments, got "
                               f"{type(instrument).__name__}")


def _explain(unknown: list[str]) -> str:
    out = []
    for key in unknown:
        text = repr(key)
        if key in PSYCOPG_POOL_NAMES:
            ours = PSYCOPG_POOL_NAMES[key]
            text += (f" (psycopg_pool's name: use {ours!r})" if ours
                     else " (a psycopg_pool argument this pool has no use for)")
        out.append(text)
    return ", ".join(out)


def build_pool(alias: str, settings: PoolSettings, params: Mapping[str, Any],
               configure_session: Callable[[Any], None]) -> ConnectionPool:
    """The alias's pool on ``params``: ``configure_session`` (Django's session setup) runs on
    each new connection, then the settings' own ``configure``; then ``instrument``."""
    kwargs = dict(settings.kwargs)
    configure_more = kwargs.pop("configure", None)

    def configure(conn: Any) -> None:
        configure_session(conn)
        if configure_more is not None:
            configure_more(conn)

    try:
        pool = ConnectionPool(**kwargs, configure=configure, **params)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"DATABASES[{alias!r}]: the pool refuses its arguments: "
                                   f"{exc}") from exc
    if settings.instrument is not None:
        try:
            _instrument(pool, settings.instrument)
        except BaseException:
            pool.close()
            raise
    return pool


def _instrument(pool: ConnectionPool, arguments: dict[str, Any]) -> None:
    try:
        from telemetry import instrument
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"OPTIONS['pool']['instrument'] needs the telemetry package's dependencies "
            f"(OpenTelemetry, structlog): install this project with its 'telemetry' extra "
            f"({exc})") from exc
    try:
        instrument(pool, **arguments)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"OPTIONS['pool']['instrument']: {exc}") from exc


class _Entry(NamedTuple):
    pool: ConnectionPool
    params: dict[str, Any]


class AliasPools:
    """The pools of this process, one per alias."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[str, _Entry] = {}
        self._exit_handler = False

    def get(self, alias: str) -> ConnectionPool | None:
        entry = self._pools.get(alias)
        return None if entry is None else entry.pool

    def get_or_build(self, alias: str, params: Mapping[str, Any],
                     build: Callable[[], ConnectionPool]) -> ConnectionPool:
        """The alias's pool, built on ``params`` if there is none, or none on these."""
        entry = self._pools.get(alias)
        if entry is not None and entry.params == params:
            return entry.pool
        with self._lock:  # built once: a pool opens minconn connections as it is built
            entry = self._pools.get(alias)
            if entry is not None and entry.params == params:
                return entry.pool
            pool = build()
            self._pools[alias] = _Entry(pool, dict(params))
            if not self._exit_handler:
                atexit.register(close_at_exit)
                self._exit_handler = True
        if entry is not None:
            entry.pool.close()
        return pool

    def close(self, alias: str) -> None:
        with self._lock:
            entry = self._pools.pop(alias, None)
        if entry is not None:
            entry.pool.close()

    def close_all(self) -> None:
        with self._lock:
            entries = list(self._pools.values())
            self._pools.clear()
        for entry in entries:
            entry.pool.close()


POOLS = AliasPools()

#: What runs first at exit: ``base.py`` sets it to return the exiting thread's connections.
before_exit: list[Callable[[], None]] = []


def close_at_exit() -> None:
    for hook in before_exit:
        with contextlib.suppress(Exception):  # at exit, closing the pools matters more
            hook()
    POOLS.close_all()
