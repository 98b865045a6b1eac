"""The checkout stack a pool keeps for a listener that asks for it (the leak detector).

A listener with a ``checkout_stack_depth`` attribute > 0 makes the pool keep, on each
checkout's record, the stack that took the connection (see :meth:`ConnectionPool.checkouts`).
It is walked on every checkout, so it is kept raw: ``(code, offset, code, offset, ...)``,
innermost first, in one flat sequence. Line numbers, file names and source lines are worked
out only by whoever reports (``telemetry.stacks``).

The walk is C (``psycopg2_pool._capture``, ~0.2 µs for 20 frames) where it was built at
install, else Python (:func:`py_stack`, the same items for ~1.8 µs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import FrameType
from typing import Any


def py_stack(frame: FrameType | None, limit: int) -> tuple[Any, ...]:
    """``(code, offset, code, offset, ...)`` of ``frame`` and its callers, innermost first, at
    most ``limit`` frames: one flat tuple (one allocation, not one per frame)."""
    out: list[Any] = []
    append = out.append
    for _ in range(limit):
        if frame is None:
            break
        append(frame.f_code)
        append(frame.f_lasti)
        frame = frame.f_back
    return tuple(out)


#: Set to 1 to use the Python walk even where the C one is built (to compare them).
PURE_PYTHON_ENV = "PSYCOPG2_POOL_PURE_PYTHON"

StackWalk = Callable[[FrameType | None, int], tuple[Any, ...]]

stack: StackWalk
try:  # the C walk, built with the package where a compiler was at hand (setup.py)
    if os.environ.get(PURE_PYTHON_ENV) == "1":
        raise ImportError(f"{PURE_PYTHON_ENV}=1")
    from ._capture import stack
except ImportError:  # pragma: no cover - depends on the build
    stack = py_stack

#: Whether checkout stacks are walked in C (``psycopg2_pool._capture``).
ACCELERATED = stack is not py_stack

__all__ = ["ACCELERATED", "PURE_PYTHON_ENV", "StackWalk", "py_stack", "stack"]
