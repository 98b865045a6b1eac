"""Everything an exception shows, for tests that look for a password in it."""

from __future__ import annotations

import traceback


def exception_texts(exc: BaseException) -> list[str]:
    """What an exception shows: str, repr, args, attributes, notes, the formatted traceback,
    and the same for every exception of its ``__cause__``/``__context__`` chain (the secrets
    tests look for a password in all of it)."""
    texts: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        texts += [str(error), repr(error), repr(error.args), repr(getattr(error, "__dict__", {})),
                  repr(getattr(error, "pgerror", None)), *getattr(error, "__notes__", ()),
                  "".join(traceback.format_exception(error))]
        todo += [e for e in (error.__cause__, error.__context__) if e is not None]
    return texts
