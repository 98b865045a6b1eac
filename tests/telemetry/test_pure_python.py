"""A leak report is the same whether the pool walked the checkout stack in C or in Python
(``PSYCOPG2_POOL_PURE_PYTHON=1``, what runs where ``psycopg2_pool._capture`` was not built)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from psycopg2_pool import stacks

LEAK = textwrap.dedent("""
    import json, sys
    from psycopg2_pool import ConnectionPool, stacks
    from telemetry import instrument

    def take(pool):
        return pool.getconn()  # the checkout line

    def handler(pool):
        return take(pool)

    pool = ConnectionPool(1, 2, dsn=sys.argv[1])
    handle = instrument(pool, leak_threshold=60)
    conn = handler(pool)
    [leak] = handle.leaks(all_checkouts=True)
    print(json.dumps({"accelerated": stacks.ACCELERATED, "site": leak.site,
                      "frames": [list(f) for f in leak.frames], "stack": leak.stack}))
    pool.putconn(conn)
    pool.close()
""")


@pytest.mark.skipif(not stacks.ACCELERATED, reason="psycopg2_pool._capture is not built here: "
                                                   "only the Python walk to compare")
def test_a_leak_report_is_the_same_with_either(dsn: str, tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(LEAK)
    root = Path(__file__).resolve().parents[2]
    reports = []
    for pure in ("0", "1"):
        env = dict(os.environ, **{stacks.PURE_PYTHON_ENV: pure})
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH"))
                                            if p)
        result = subprocess.run([sys.executable, str(script), dsn], capture_output=True,
                                text=True, env=env, cwd=tmp_path, timeout=60, check=True)
        reports.append(json.loads(result.stdout))
    c_report, py_report = reports
    assert c_report.pop("accelerated") is True
    assert py_report.pop("accelerated") is False
    assert c_report == py_report
    assert c_report["site"] == "app.py:7 in take"
    assert [f[1:] for f in c_report["frames"]] == [
        [14, "<module>", "conn = handler(pool)"], [10, "handler", "return take(pool)"],
        [7, "take", "return pool.getconn()  # the checkout line"]]
