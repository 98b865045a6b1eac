"""Run a function in a forked child and get back what it returned (as JSON)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any


def in_child(body: Callable[[], Any]) -> Any:
    """Fork; the child runs ``body`` and exits (``os._exit``: none of the parent's exit
    handlers run there); return what it returned, through a pipe, once it exited with 0.
    A child that raised, or died, fails the assertion with its exit status."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.write(write, json.dumps(body()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    status = os.waitpid(child, 0)[1]
    assert status == 0, f"the forked child failed (wait status {status})"
    return json.loads(text)
