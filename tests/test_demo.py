"""The demo (the README's first command) runs, reports its planted leak, and stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from conftest import backend_count

ROOT = Path(__file__).resolve().parent.parent
DEMO = [sys.executable, "-m", "telemetry.demo"]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PSYCOPG2_POOL_DEMO_DSN"}
    env.update(extra)
    return env


def test_help_documents_every_option() -> None:
    result = subprocess.run([*DEMO, "--help"], capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert result.returncode == 0
    for option in ("--dsn", "--duration", "--threads", "--maxconn", "--timeout",
                   "--leak-threshold", "--port", "--no-progress"):
        assert option in result.stdout
    assert "PSYCOPG2_POOL_DEMO_DSN" in result.stdout


def test_bad_option_is_refused() -> None:
    result = subprocess.run([*DEMO, "--duration", "0"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 2 and "--duration must be > 0" in result.stderr


def test_brief_run_reports_the_leak_and_serves_metrics(dsn: str) -> None:
    process = subprocess.Popen(
        [*DEMO, "--dsn", dsn, "--duration", "4", "--port", "0", "--leak-threshold", "0.5",
         "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=ROOT, env=environment())
    assert process.stdout is not None
    lines = []
    metrics = ""
    for line in process.stdout:
        lines.append(line)
        match = re.search(r"Prometheus metrics: (http://127\.0\.0\.1:\d+/metrics)", line)
        if match:
            time.sleep(1.5)
            with urllib.request.urlopen(match.group(1), timeout=10) as response:
                metrics = response.read().decode()
    assert process.wait(60) == 0
    output = "".join(lines)
    assert 'db_client_connection_count{db_client_connection_pool_name="demo"' in metrics
    assert "db_client_connection_wait_time_seconds_bucket" in metrics
    assert "Summary" in output
    assert re.search(r"wait: p50 [\d.]+ ms, p95 [\d.]+ ms", output)
    assert re.search(r"[1-9]\d* of them gave up \(timeouts\)", output)  # the burst
    assert re.search(r"LEAK: .*\n\s+taken at telemetry/demo\.py:\d+ in monthly_report", output)
    assert "connection_leak_suspected" in output and "pool_exhausted" in output
    assert "import dashboards/psycopg2-pool-overview.json" in output


def test_ctrl_c_stops_cleanly(dsn: str, admin: Any) -> None:
    process = subprocess.Popen(
        [*DEMO, "--dsn", dsn, "--duration", "60", "--port", "0", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env=environment())
    assert process.stdout is not None
    for line in process.stdout:
        if "Prometheus metrics:" in line:
            break
    time.sleep(1.5)
    assert backend_count(admin, "psycopg2-pool-demo") >= 1
    process.send_signal(signal.SIGINT)
    rest = process.stdout.read()
    assert process.wait(30) == 0
    assert "Interrupted: pool closed." in rest and "Summary" in rest
    deadline = time.monotonic() + 5
    while backend_count(admin, "psycopg2-pool-demo") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert backend_count(admin, "psycopg2-pool-demo") == 0  # nothing left connected


def test_embedded_server_is_started_and_removed() -> None:
    result = subprocess.run([*DEMO, "--duration", "2", "--port", "0", "--no-progress"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env=environment())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    match = re.search(r"Starting an embedded PostgreSQL in (\S+) \.\.\.", result.stdout)
    assert match and "Embedded PostgreSQL stopped and removed." in result.stdout
    assert not Path(match.group(1)).exists()
