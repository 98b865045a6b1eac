"""The arguments each new connection is opened with: fixed at construction, or asked for
again at every open.

psycopg_pool's ``conninfo`` and ``kwargs`` may be callables (psycopg_pool 3.3), called for
each new connection, so that what changes while the pool lives reaches new connections:
a password that is a token valid for 15 minutes (cloud IAM authentication), a host list
from service discovery. The same here: ``dsn`` may be a callable returning a connection
string, and ``kwargs`` a dict, or a callable returning one, of connection arguments laid
over the keyword arguments. :meth:`ConnectionPool.drain` then replaces the connections
already open, when they must go at once (credentials revoked, a host retired).

The callables run on the thread that opens (a background worker, or the caller with
``timeout=0``), outside the pool's lock; one that raises fails that attempt like a refused
connection (the pool retries with its backoff and reports the outage once). Their results
are never logged: they hold secrets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .dsn import parse_options

Dsn = Callable[[], str]
Kwargs = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


class ConnectArguments:
    """What ``psycopg2.connect`` is called with for each new connection."""

    __slots__ = ("dsn", "fixed", "kwargs")

    def __init__(self, fixed: dict[str, Any], dsn: Dsn | None = None,
                 kwargs: Callable[[], Mapping[str, Any]] | None = None,
                 changing: frozenset[str] = frozenset()) -> None:
        #: the arguments that never change (the DSN when not a callable); what the kwargs
        #: callable returned at construction (``changing``) is left out: asked for again
        self.fixed = {k: v for k, v in fixed.items() if k not in changing}
        self.dsn = dsn  #: called for the DSN of each new connection, or None
        self.kwargs = kwargs  #: called for arguments laid over ``fixed``, or None

    @property
    def changing(self) -> bool:
        """Whether any argument is asked for again at each open."""
        return self.dsn is not None or self.kwargs is not None

    def resolve(self) -> dict[str, Any]:
        """The arguments for one new connection (may call the user's callables)."""
        if self.dsn is None and self.kwargs is None:
            return self.fixed
        args = dict(self.fixed)
        if self.dsn is not None:
            dsn = self.dsn()
            if not isinstance(dsn, str):
                raise TypeError(f"the dsn callable returned a {type(dsn).__name__}; it must "
                                f"return a str (a libpq connection string or URI)")
            args["dsn"] = dsn
        if self.kwargs is not None:
            more = self.kwargs()
            if not isinstance(more, Mapping):
                raise TypeError(f"the kwargs callable returned a {type(more).__name__}; it "
                                f"must return a dict of connection arguments")
            _refuse_reserved(more)
            args.update(more)
        # Validated as at construction: libpq quotes a malformed string in its messages,
        # password included, and parse_options raises a message that quotes none of it.
        parse_options(args)
        return args


def split(connect_kwargs: dict[str, Any], kwargs: Kwargs | None
          ) -> tuple[Dsn | None, Callable[[], Mapping[str, Any]] | None, frozenset[str]]:
    """Take the callables out of the constructor's arguments, leaving in ``connect_kwargs``
    what one call of each returns now (so that the options are validated and the pool named
    as for fixed arguments); return the callables, and the keys the kwargs callable gave
    (asked for again at each open, never fixed). A dict ``kwargs`` is merged in."""
    dsn = connect_kwargs.get("dsn")
    dsn_source: Dsn | None = None
    if callable(dsn):
        dsn_source = dsn
        first = dsn()
        if not isinstance(first, str):
            raise TypeError(f"dsn must be a str or a callable returning one; the callable "
                            f"returned a {type(first).__name__}")
        connect_kwargs["dsn"] = first
    kwargs_source: Callable[[], Mapping[str, Any]] | None = None
    if kwargs is not None:
        if callable(kwargs):
            kwargs_source = kwargs
            now = kwargs()
        else:
            now = kwargs
        if not isinstance(now, Mapping):
            raise TypeError(f"kwargs must be a dict of connection arguments or a callable "
                            f"returning one, got {type(now).__name__}")
        _refuse_reserved(now)
        connect_kwargs.update(now)
    changing = frozenset(now) if kwargs_source is not None else frozenset()
    return dsn_source, kwargs_source, changing


def _refuse_reserved(arguments: Mapping[str, Any]) -> None:
    for key in arguments:
        if key in ("dsn", "connection_factory"):
            raise TypeError(f"kwargs cannot set {key}; pass it to ConnectionPool itself")


__all__ = ["ConnectArguments", "split"]
