"""Listener registration and dispatch: the pool's side of :mod:`psycopg2_pool.events`.

``add_listener`` looks each ``on_*`` method up once and keeps, per hook, a tuple of the
bound methods to call (``_on_checkout``, ...); a hook nobody listens to is an empty tuple, so
the pool tests one attribute and builds no event. It also notes the deepest
``checkout_stack_depth`` a listener asks for (``_stack_depth``): the checkout stacks the pool
then keeps on its records. :class:`Listeners` is a base class of
:class:`~psycopg2_pool.pool.ConnectionPool` rather than an object it holds: the fast paths of
``getconn``/``putconn`` read those tuples straight off the pool and inline the dispatch loop,
with no extra attribute hop per checkout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .events import HOOKS, PoolListener
from .stats import LISTENER_ERRORS

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Record

logger = logging.getLogger("psycopg2_pool")

#: A hook's methods: each takes one event (the ``*_fields`` hooks take the fields instead).
Methods = tuple[Callable[[Any], None], ...]


class Listeners:
    """The listeners of a pool, looked up once per hook; a listener never breaks the pool."""

    # Set up by the pool: its lock, its counters (``listener_errors`` is counted here) and
    # its name (for the log line of a failing listener).
    _lock: threading.Lock
    _stats: dict[str, float]
    _records: dict[int, Record]  # every connection's record
    name: str

    def _init_listeners(self) -> None:
        self._listeners: tuple[object, ...] = ()
        self._on_connect: Methods = ()
        self._on_checkout: Methods = ()
        self._on_checkin: Methods = ()
        self._on_checkout_fields: tuple[Callable[..., None], ...] = ()
        self._on_checkin_fields: tuple[Callable[..., None], ...] = ()
        self._checkout_hooked = self._checkin_hooked = False
        self._stack_depth = 0  # the most checkout_stack_depth a listener asks for
        self._on_timeout: Methods = ()
        self._on_discard: Methods = ()
        self._on_unavailable: Methods = ()
        self._on_recovered: Methods = ()
        self._on_role_change: Methods = ()
        self._on_role_restored: Methods = ()
        self._on_close: Methods = ()

    def add_listener(self, listener: object) -> None:
        """Attach a listener (see :mod:`psycopg2_pool.events`); its ``on_*`` methods are used."""
        if isinstance(listener, type):
            raise TypeError(f"add_listener() takes a listener object, got the class "
                            f"{listener.__name__}; pass an instance: {listener.__name__}()")
        if not any(callable(getattr(listener, hook, None)) for hook in HOOKS):
            raise TypeError(f"a listener needs at least one of the methods {', '.join(HOOKS)}")
        depth = getattr(listener, "checkout_stack_depth", 0)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise TypeError(f"a listener's checkout_stack_depth is a number of frames (an int "
                            f">= 0, 0 for none); got {depth!r}")
        with self._lock:
            if listener in self._listeners:
                raise ValueError("this listener is already attached to the pool")
            self._set_listeners((*self._listeners, listener))

    def remove_listener(self, listener: object) -> None:
        """Detach a listener; a listener that is not attached is ignored."""
        with self._lock:
            self._set_listeners(tuple(x for x in self._listeners if x is not listener))

    @property
    def listeners(self) -> tuple[object, ...]:
        """The attached listeners, in the order they are called."""
        return self._listeners

    def _set_listeners(self, listeners: tuple[object, ...]) -> None:
        self._listeners = listeners
        for hook in HOOKS:
            methods = []
            for listener in listeners:
                method = getattr(listener, hook, None)
                if not callable(method):
                    continue
                if getattr(type(listener), hook, None) is getattr(PoolListener, hook):
                    continue  # PoolListener's no-op: skip it, it costs a call per event
                methods.append(method)
            setattr(self, f"_{hook}", tuple(methods))
        depth = max((getattr(x, "checkout_stack_depth", 0) for x in listeners), default=0)
        if depth != self._stack_depth:
            # Stacks kept under the old depth (or none) no longer describe what is asked for.
            self._forget_stacks()
            self._stack_depth = depth
        # Checkout stacks are kept inside the checkout dispatch: asking for them hooks it.
        self._checkout_hooked = bool(self._on_checkout or self._on_checkout_fields or depth)
        self._checkin_hooked = bool(self._on_checkin or self._on_checkin_fields)

    def _forget_stacks(self) -> None:
        """Drop the stack and thread kept for each checked-out connection (an idle one's are
        replaced at its next checkout)."""
        for rec in list(self._records.values()):
            rec.taken = None

    def _emit_fields(self, methods: tuple[Callable[..., None], ...], *fields: Any) -> None:
        """Call the fields form of a hook (slow paths; the fast ones inline it)."""
        for method in methods:
            try:
                method(self, *fields)
            except Exception:  # noqa: BLE001 - a listener must never break the pool
                self._listener_failed(method)

    def _emit(self, methods: Methods, event: object) -> None:
        for method in methods:
            try:
                method(event)
            except Exception:  # noqa: BLE001 - a listener must never break the pool
                self._listener_failed(method)

    def _listener_failed(self, method: Callable[..., None]) -> None:
        with self._lock:
            self._stats[LISTENER_ERRORS] += 1
            count = self._stats[LISTENER_ERRORS]
        if count <= 10:
            logger.exception("pool %r: listener %r raised; the pool carries on", self.name,
                             method)


__all__ = ["Listeners", "Methods"]
