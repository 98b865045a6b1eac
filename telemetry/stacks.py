"""Cheap checkout-site capture, formatted lazily.

At checkout only ``(code object, instruction offset)`` pairs are kept (about a microsecond for
a typical stack, against ~7 µs for ``traceback.extract_stack``: even ``f_lineno`` costs, since
it decodes the line table). Line numbers, file names and the trimming of library frames are
worked out only when a report is made.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Sequence
from types import CodeType, FrameType

import psycopg2_pool

Frames = tuple[tuple[CodeType, int], ...]  # (code, f_lasti), innermost first

#: How many frames a checkout keeps: the pool's own few, the checkout site, and enough of
#: its callers to tell which path led there (each frame costs ~0.1 µs to keep).
MAX_FRAMES = 20

# Only the pool's frames stand between a checkout and the application (the leak detector's
# own frame is skipped when capturing); code living in ``telemetry``, the demo for one, is
# application code like any other.
_OWN_DIRS = (os.path.dirname(psycopg2_pool.__file__ or "") + os.sep,)
_LIBRARY_DIRS = tuple({os.path.realpath(p) + os.sep for key in ("stdlib", "platstdlib",
                                                                  "purelib", "platlib")
                       if (p := sysconfig.get_paths().get(key))})


def capture(skip: int = 1) -> Frames:
    """The caller's stack (innermost first) as (code, offset) pairs, skipping ``skip`` frames."""
    frame: FrameType | None = sys._getframe(skip + 1)
    frames: list[tuple[CodeType, int]] = []
    append = frames.append
    for _ in range(MAX_FRAMES):
        if frame is None:
            break
        append((frame.f_code, frame.f_lasti))
        frame = frame.f_back
    return tuple(frames)


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
    filename = code.co_filename
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


def site(frames: Frames) -> str:
    """The checkout site: the innermost application frame."""
    shown = application_frames(frames)
    return format_frame(*shown[0]) if shown else "<unknown>"


def sites_summary(sites: Sequence[tuple[str, float]], top: int = 5) -> list[dict[str, object]]:
    """Group (site, held seconds) pairs: count and oldest hold per site, most held first."""
    grouped: dict[str, list[float]] = {}
    for where, held in sites:
        grouped.setdefault(where, []).append(held)
    ranked = sorted(grouped.items(), key=lambda item: (-len(item[1]), -max(item[1])))
    return [{"site": where, "count": len(helds), "oldest_s": round(max(helds), 3)}
            for where, helds in ranked[:top]]
