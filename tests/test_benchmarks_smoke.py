"""The benchmark scripts keep working (a quick run each; no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("script", "expected"), [
    ("pool_cycle.py", ["| bare, 1 thread | psycopg2.pool |", "psycopg2_pool (this)",
                       "psycopg_pool 3", "| SELECT 1, 8 threads |"]),
    ("telemetry_overhead.py", ["| getconn/putconn | instrument() |", "Checkout-site capture",
                               "Memory:"]),
])
def test_benchmark_quick_run(script: str, expected: list[str], dsn: str,
                             tmp_path: Path) -> None:
    output = tmp_path / "result.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--dsn", dsn,
         "--output", str(output)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    text = output.read_text()
    for fragment in expected:
        assert fragment in text
