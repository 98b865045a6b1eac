"""The checkout stack as reports show it: read like Python's own tracebacks, cheap to keep."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

from telemetry import stacks

HERE = Path(__file__)


def captured_and_python(depth: int) -> tuple[stacks.Frames, list[traceback.FrameSummary]]:
    """A capture and Python's own ``extract_stack`` from the same place, ``depth`` calls deep."""
    if depth:
        return captured_and_python(depth - 1)
    return stacks.capture(0), traceback.extract_stack(sys._getframe())


def test_block_lines_are_pythons_own_traceback_lines() -> None:
    raw, python = captured_and_python(2)
    frames, omitted = stacks.extract(raw)
    ours = [f for f in python if f.filename == str(HERE)]  # the application's frames
    assert omitted == 0
    assert [(f.file, f.line, f.function, f.source) for f in frames] == [
        (f.filename, f.lineno, f.name, f.line) for f in ours]
    expected = "\n".join(line for line in "".join(traceback.format_list(ours)).splitlines()
                         if line.strip(" ^~"))  # without the carets newer Pythons add
    body = stacks.format_block(frames).split("\n", 1)[1]
    assert body == expected  # the same text, frame for frame, as a Python traceback
    assert stacks.format_block(frames).splitlines()[0] == (
        "Connection checked out at (most recent call last):")


def test_deep_stacks_keep_the_innermost_frames_and_say_how_many_are_left_out() -> None:
    raw, _ = captured_and_python(15)  # 16 frames of this file, then the test and pytest
    frames, omitted = stacks.extract(raw, limit=12)
    assert len(frames) == 12
    assert frames[-1].function == "captured_and_python"
    assert frames[-1].source == "return stacks.capture(0), traceback.extract_stack(sys._getframe())"
    assert omitted == 5  # 4 more recursive calls and the test function
    block = stacks.format_block(frames, omitted).splitlines()
    assert block[1] == "  ... 5 outer frames not shown"
    assert block[2].startswith(f'  File "{HERE}", line ')


def test_a_frame_without_readable_source_has_no_source_line() -> None:
    namespace: dict[str, Any] = {"capture": stacks.capture}
    exec(compile("def generated():\n    return capture(0)\n", "/nonexistent/gen.py", "exec"),
         namespace)
    raw = namespace["generated"]()
    frames, _ = stacks.extract(raw)
    generated = frames[-1]
    assert (generated.file, generated.line, generated.function, generated.source) == (
        "/nonexistent/gen.py", 2, "generated", None)
    assert generated.as_dict() == {"file": "/nonexistent/gen.py", "line": 2,
                                   "function": "generated"}
    block = stacks.format_block(frames).splitlines()
    assert block[-1] == '  File "/nonexistent/gen.py", line 2, in generated'


def test_source_lines_never_show_a_password(tmp_path: Path) -> None:
    app = tmp_path / "app_with_secrets.py"
    app.write_text(
        "def take(capture):\n"
        "    return capture(0), 'postgresql://app:s3cret@db/app', 'password=s3cret'\n")
    namespace: dict[str, Any] = {}
    exec(compile(app.read_text(), str(app), "exec"), namespace)
    raw, _, _ = namespace["take"](stacks.capture)
    (frame,) = [f for f in stacks.extract(raw)[0] if f.file == str(app)]
    assert frame.source == "return capture(0), 'postgresql://app:***@db/app', 'password=***'"
    assert "s3cret" not in stacks.format_block([frame])


def test_frame_list_is_json_data_with_a_short_repr() -> None:
    raw, _ = captured_and_python(0)
    frames, _ = stacks.extract(raw)
    listed = stacks.FrameList(f.as_dict() for f in frames)
    assert json.loads(json.dumps(listed)) == [f.as_dict() for f in frames]
    assert repr(listed) == f"<{len(frames)} frames>"
    assert repr(stacks.FrameList([{}])) == "<1 frame>"


def test_holders_group_sites_with_their_oldest_traces_first() -> None:
    summary = stacks.sites_summary([("a.py:1 in f", 1.0, "t1"), ("b.py:2 in g", 9.0, None),
                                    ("a.py:1 in f", 3.0, "t3"), ("a.py:1 in f", 2.0, None)])
    assert summary == [
        {"site": "a.py:1 in f", "count": 3, "oldest_s": 3.0, "trace_ids": ["t3", "t1"]},
        {"site": "b.py:2 in g", "count": 1, "oldest_s": 9.0, "trace_ids": []},
    ]
