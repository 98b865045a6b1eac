"""Interpreter exit with connections still checked out prints nothing of ours (issue 14, 3).

Connections held by a module are garbage-collected while the interpreter tears its modules
down. The pool's weakref callback used to announce them as leaks then; the listeners' logging
failed (``import of time halted``) and each failure was printed with its traceback after the
program's own. The program's traceback, and only it, must reach stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# No hook in the script itself: a function defined in ``__main__`` and kept by ``sys`` (an
# excepthook, an atexit handler) keeps the module's globals alive and changes the order of
# teardown, which hid the noise. The copy of the traceback that stderr must equal is made by
# an atexit handler of a module of its own, from ``sys.last_value``.
COPY_MODULE = """
import atexit, sys, traceback

@atexit.register
def keep_a_copy():
    if hasattr(sys, "last_value"):
        with open(sys.argv[2], "w") as copy:
            copy.write("".join(traceback.format_exception(sys.last_value)))
"""

SCRIPT = """
import sys
import keep_traceback_copy
from psycopg2_pool import ConnectionPool
from telemetry import instrument

pool = ConnectionPool(0, 2, dsn=sys.argv[1])
instrument(pool)
held = [pool.getconn(), pool.getconn()]  # still checked out when the interpreter ends
if sys.argv[3] == "raise":
    pool.getconn()  # PoolExhausted, uncaught
"""


def run(dsn: str, tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess[str], str]:
    (tmp_path / "keep_traceback_copy.py").write_text(COPY_MODULE)
    copy = tmp_path / "traceback.txt"
    copy.write_text("")
    path = [str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
    result = subprocess.run([sys.executable, "-c", SCRIPT, dsn, str(copy), mode],
                            capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    return result, copy.read_text()


@pytest.mark.parametrize("attempt", range(3))  # teardown order varies: more than one run
def test_uncaught_exhaustion_prints_only_its_traceback(dsn: str, tmp_path: Path,
                                                       attempt: int) -> None:
    result, traceback_text = run(dsn, tmp_path, "raise")
    assert result.returncode == 1
    assert "PoolExhausted: no more connections in the pool" in traceback_text
    assert result.stderr == traceback_text


def test_normal_exit_with_held_connections_prints_nothing(dsn: str, tmp_path: Path) -> None:
    result, _ = run(dsn, tmp_path, "hold")
    assert result.returncode == 0
    assert result.stderr == ""
