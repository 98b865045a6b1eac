"""Checkout stacks, formatted lazily.

The pool keeps each checkout's stack raw, as ``(code object, instruction offset)`` pairs
(:mod:`psycopg2_pool.stacks`: walked in C, ~0.2 µs for 20 frames, or in Python, ~1.8 µs,
against ~7 µs for ``traceback.extract_stack``: even ``f_lineno`` costs, since it decodes the
line table). Line numbers, file names, source lines and the trimming of library frames are
worked out here, only when a report is made.
"""

from __future__ import annotations

import functools
import linecache
import os
import re
import sys
import sysconfig
from collections.abc import Sequence
from types import CodeType
from typing import Any, NamedTuple

import psycopg2_pool
from psycopg2_pool import stacks as _pool_stacks

Frames = tuple[tuple[CodeType, int], ...]  # (code, f_lasti), innermost first

#: How many frames a checkout keeps: the pool's own few, the library frames between the
#: application and the pool (SQLAlchemy's ORM puts 17 to 27 between a Session call and
#: ``creator=pool.getconn``), the checkout site, and enough of its callers to tell which
#: path led there (walked in C, ~0.01 µs a frame; ~0.1 µs in Python).
MAX_FRAMES = 48

# Only the pool's frames stand between a checkout and the application (the leak detector's
# own frame is skipped when capturing); code living in ``telemetry``, the demo for one, is
# application code like any other.
_OWN_DIRS = (os.path.dirname(psycopg2_pool.__file__ or "") + os.sep,)
_LIBRARY_DIRS = tuple({os.path.realpath(p) + os.sep for key in ("stdlib", "platstdlib",
                                                                  "purelib", "platlib")
                       if (p := sysconfig.get_paths().get(key))})


def pairs(raw: Sequence[Any]) -> Frames:
    """A flat ``(code, offset, ...)`` capture as (code, offset) pairs."""
    return tuple(zip(raw[::2], raw[1::2], strict=True))


def capture(skip: int = 1) -> Frames:
    """The caller's stack (innermost first) as (code, offset) pairs, skipping ``skip`` frames:
    what the pool keeps at a checkout (:mod:`psycopg2_pool.stacks`)."""
    return pairs(_pool_stacks.stack(sys._getframe(skip + 1), MAX_FRAMES))


def line_number(code: CodeType, offset: int) -> int:
    """The source line of the instruction at ``offset`` (what ``f_lineno`` would have said)."""
    for start, end, line in code.co_lines():
        if start <= offset < end:
            return line if line is not None else code.co_firstlineno
    return code.co_firstlineno


def is_own(code: CodeType) -> bool:
    """A frame of the pool package (never the checkout site)."""
    return code.co_filename.startswith(_OWN_DIRS)


def is_library(code: CodeType) -> bool:
    """A frame of the standard library or an installed package (not the application)."""
    return _is_library_file(code.co_filename)


@functools.lru_cache(maxsize=1024)
def _is_library_file(filename: str) -> bool:
    # Cached: ``realpath`` is a few system calls, and an exhausted pool asks for the sites of
    # every checkout at each timeout.
    return filename.startswith("<") or os.path.realpath(filename).startswith(_LIBRARY_DIRS)


def format_frame(code: CodeType, offset: int) -> str:
    """``file:line in function``, the file relative to the working directory when inside it."""
    filename = code.co_filename
    try:
        relative = os.path.relpath(filename)
        if not relative.startswith(".."):
            filename = relative
    except ValueError:  # another drive (Windows)
        pass
    return f"{filename}:{line_number(code, offset)} in {code.co_name}"


def application_frames(frames: Frames) -> list[tuple[CodeType, int]]:
    """The frames to show: the pool's own dropped, library frames trimmed when the
    application has frames of its own (else everything, so a report is never empty)."""
    outside = [(c, n) for c, n in frames if not is_own(c)]
    app = [(c, n) for c, n in outside if not is_library(c)]
    return app or outside


def format_stack(frames: Frames, limit: int = 12) -> list[str]:
    """The checkout stack for a report: innermost (the checkout line) first."""
    shown = application_frames(frames)
    lines = [format_frame(code, offset) for code, offset in shown[:limit]]
    if len(shown) > limit:
        lines.append(f"... {len(shown) - limit} more frames")
    return lines


class Frame(NamedTuple):
    """One frame of a checkout stack as a report shows it (``traceback.FrameSummary``'s data)."""

    file: str  #: as Python's tracebacks print it (``co_filename``), so that editors link it
    line: int
    function: str
    source: str | None  #: the source line, stripped; None when the file cannot be read

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: ``file``, ``line``, ``function`` and, when known, ``source``."""
        out: dict[str, Any] = {"file": self.file, "line": self.line, "function": self.function}
        if self.source is not None:
            out["source"] = self.source
        return out


#: The first line of a checkout stack block, worded like Python's ``Traceback (most recent
#: call last):`` so that it reads (and is linked by editors) the same way.
STACK_HEADER = "Connection checked out at (most recent call last):"


def extract(frames: Frames, limit: int = 12) -> tuple[tuple[Frame, ...], int]:
    """The frames to show, outermost first as in Python's tracebacks (the checkout line
    last), at most ``limit`` of the innermost; and how many outer ones were left out."""
    shown = application_frames(frames)
    kept = shown[:limit]
    out = []
    for code, offset in reversed(kept):
        line = line_number(code, offset)
        out.append(Frame(code.co_filename, line, code.co_name, _source(code.co_filename, line)))
    return tuple(out), len(shown) - len(kept)


# A password written in the source (a URL's ``user:…@``, ``password=…``) must not
# reach a log through a source line.
_SECRET = re.compile(r"""(?P<url>://[^\s:/@'"]*:)[^\s@'"]+(?=@)"""
                     r"""|(?P<kw>\bpassword\s*=\s*['"]?)[^\s'",)]+""", re.IGNORECASE)


def _source(filename: str, line: int) -> str | None:
    try:  # a report may be made at interpreter exit, when reading a file can fail
        linecache.checkcache(filename)
        text = linecache.getline(filename, line).strip()
    except Exception:  # noqa: BLE001 - the source is a courtesy; the report goes on without it
        return None
    return _SECRET.sub(lambda m: (m["url"] or m["kw"]) + "***", text) or None


def format_block(frames: Sequence[Frame], omitted: int = 0, header: str = STACK_HEADER) -> str:
    """The traceback-style block: ``File "…", line N, in func`` and the source line, per frame."""
    lines = [header]
    if omitted:
        lines.append(f"  ... {omitted} outer frame{'s' if omitted > 1 else ''} not shown")
    for frame in frames:
        lines.append(f'  File "{frame.file}", line {frame.line}, in {frame.function}')
        if frame.source is not None:
            lines.append(f"    {frame.source}")
    return "\n".join(lines)


class FrameList(list[dict[str, Any]]):
    """The checkout frames of a log event: a real list of dicts, so that ``JSONRenderer`` (and
    orjson, and any processor) sees structured data, with a short ``repr`` so that
    ``ConsoleRenderer``'s event line stays short: the same frames follow it as the ``stack``
    block."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<{len(self)} frame{'' if len(self) == 1 else 's'}>"


@functools.lru_cache(maxsize=1024)
def site(frames: Frames) -> str:
    """The checkout site: the innermost application frame.

    Cached by stack (a tuple of code objects and offsets, cheap to hash): an exhausted pool
    asks for the site of every checkout at each timeout, and most checkouts share a few stacks
    (~2 µs instead of ~20 µs for 20 frames). The file stays relative to the working directory
    of the first call for that stack.
    """
    shown = application_frames(frames)
    return format_frame(*shown[0]) if shown else "<unknown>"


def sites_summary(holds: Sequence[tuple[str, float, str | None]], top: int = 5,
                  traces: int = 5) -> list[dict[str, object]]:
    """Group (site, held seconds, trace id) triples: per site, the count, the oldest hold and
    the trace ids of its holders (oldest first, at most ``traces``), most held sites first."""
    grouped: dict[str, list[tuple[float, str | None]]] = {}
    for where, held, trace_id in holds:
        grouped.setdefault(where, []).append((held, trace_id))
    ranked = sorted(grouped.items(), key=lambda item: (-len(item[1]),
                                                       -max(h for h, _ in item[1])))
    out: list[dict[str, object]] = []
    for where, entries in ranked[:top]:
        entries.sort(key=lambda entry: -entry[0])
        trace_ids = list(dict.fromkeys(t for _, t in entries if t is not None))
        out.append({"site": where, "count": len(entries), "oldest_s": round(entries[0][0], 3),
                    "trace_ids": trace_ids[:traces]})
    return out
