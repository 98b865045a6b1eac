"""The seam between a pool and whatever checks it for leaks (the pytest plugin).

The pool knows nothing of leak detection: a leak checker is a listener (see
:mod:`psycopg2_pool.events`) that also answers :class:`LeakChecker`'s two questions, such as
``telemetry``'s ``LeakDetector``. The pytest plugin finds checkers among the listeners of the
open pools, so it needs neither ``telemetry`` nor OpenTelemetry: an application whose own
module is called ``telemetry`` runs pytest as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from . import _forking

if TYPE_CHECKING:  # pragma: no cover
    from .pool import ConnectionPool


@runtime_checkable
class LeakRecord(Protocol):
    """One connection a checker blames: where it was taken, and the stack that took it."""

    @property
    def site(self) -> str:
        """The checkout line, ``file:line in function``."""

    @property
    def traceback(self) -> str:
        """The checkout stack as a traceback-style block (``File "…", line N, in f``)."""


@runtime_checkable
class LeakChecker(Protocol):
    """A listener that remembers checkouts; times are ``time.monotonic()`` seconds."""

    def checkouts_since(self, started: float) -> Sequence[LeakRecord]:
        """Connections checked out at or after ``started`` and still out."""

    def collected_since(self, started: float) -> Sequence[LeakRecord]:
        """Connections checked out since ``started`` and garbage-collected unreturned."""


def open_pools() -> list[ConnectionPool]:
    """Every pool of this process that is not closed."""
    return _forking.pools()


def checkers(pool: ConnectionPool) -> list[LeakChecker]:
    """The leak checkers attached to ``pool`` as listeners."""
    return [listener for listener in pool.listeners if isinstance(listener, LeakChecker)]


__all__ = ["LeakChecker", "LeakRecord", "checkers", "open_pools"]
