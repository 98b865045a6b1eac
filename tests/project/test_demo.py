"""The demo (the README's first command) runs, reports its planted leak, and stops cleanly."""

from __future__ import annotations

import os
import pty
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.pools import backend_count

ROOT = Path(__file__).resolve().parents[2]
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
        [*DEMO, "--dsn", dsn, "--duration", "3", "--port", "0", "--leak-threshold", "0.5",
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
    # The last progress line and the summary read the same statistics.
    last = [line for line in lines if re.match(r"\[[#-]{30}\]", line)][-1]
    bar = re.search(r"getconn +(\d+) .* timeouts +(\d+)", last)
    said = re.search(r"(\d+) getconn calls.* (\d+) of them gave up", output)
    assert bar and said and bar.groups() == said.groups(), (last, said)
    # The summary is the last thing said: no event is logged after it.
    after = output[output.index("Summary"):]
    assert not re.search(r"^\d\d:\d\d:\d\d \[", after, re.M), after
    assert 'service_name="psycopg2-pool-demo"' in metrics  # target_info, not unknown_service
    for path in re.findall(r"(?:import the dashboard|how:) (\S+?)\)?\.?$", output, re.M):
        assert Path(path).is_absolute() and Path(path).is_file(), path
    assert re.search(r"import the dashboard \S+psycopg2-pool-overview\.json", output)


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
    assert process.wait(30) == 130  # 128 + SIGINT, as a shell expects of an interrupted program
    assert "Summary" in rest and rest.rstrip().endswith("Interrupted: pool closed.")
    deadline = time.monotonic() + 5
    while backend_count(admin, "psycopg2-pool-demo") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert backend_count(admin, "psycopg2-pool-demo") == 0  # nothing left connected


@pytest.mark.slow  # default suite under 3 minutes: .ci/run's slow set runs it
def test_embedded_server_is_started_and_removed() -> None:
    env = environment()
    env.pop("XDG_RUNTIME_DIR", None)  # as in a container or over ssh: platformdirs warns
    result = subprocess.run([*DEMO, "--duration", "2", "--port", "0", "--no-progress"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr == ""  # no RuntimeDirWarning (or anything) before the first line
    assert result.stdout.startswith("Starting an embedded PostgreSQL in ")
    match = re.search(r"Starting an embedded PostgreSQL in (\S+) \.\.\.", result.stdout)
    assert match and "Embedded PostgreSQL stopped and removed." in result.stdout
    assert not Path(match.group(1)).exists()


def test_busy_port_is_said_in_one_line_before_any_server_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*DEMO, "--duration", "2", "--port", str(port), "--no-progress"],
                                capture_output=True, text=True, timeout=60, cwd=ROOT,
                                env=environment())
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.startswith(f"psycopg2-pool-demo: cannot serve the metrics on "
                                    f"127.0.0.1:{port}: the port is in use")
    assert "--port PORT" in result.stderr and "--port 0" in result.stderr
    assert "Starting an embedded PostgreSQL" not in result.stdout  # none to stop
    assert len(result.stderr.splitlines()) == 1


def render(raw: str) -> list[str]:
    """The lines a terminal shows for ``raw``: colours dropped, \\r returns to the line's
    start, ESC[K clears to its end."""
    screen: list[str] = []
    for line in re.sub(r"\x1b\[[0-9;]*m", "", raw).replace("\r\n", "\n").split("\n"):
        cells: list[str] = []
        col = 0
        for piece in re.split(r"(\r|\x1b\[K)", line):
            if piece == "\r":
                col = 0
            elif piece == "\x1b[K":
                del cells[col:]
            else:
                cells[col:col + len(piece)] = piece
                col += len(piece)
        screen.append("".join(cells))
    return screen


@pytest.mark.slow  # default suite under 3 minutes: .ci/run's slow set runs it
def test_log_lines_do_not_glue_onto_the_live_progress_bar(dsn: str) -> None:
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [*DEMO, "--dsn", dsn, "--duration", "3", "--port", "0", "--leak-threshold", "0.3"],
        stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary, cwd=ROOT,
        env=environment())
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert process.wait(60) == 0
    raw = b"".join(chunks).decode()
    assert "\r" in raw  # a live bar, redrawn in place
    screen = render(raw)
    events = [line for line in screen
              if re.search(r"pool_exhausted|connection_leak_suspected", line)]
    assert events, screen
    for line in events:
        assert re.match(r"\d\d:\d\d:\d\d \[", line) and "getconn" not in line, line
    bars = [line for line in screen if re.search(r"\[[#-]{30}\]", line)]
    assert bars and bars[-1].startswith("[" + "#" * 30 + "]"), bars  # the bar ends full
    assert all(line.startswith("[") for line in bars), bars


def test_service_name_is_the_demos_unless_the_environment_names_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from telemetry.demo import resource

    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert resource().attributes["service.name"] == "psycopg2-pool-demo"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "shop-demo")
    assert resource().attributes["service.name"] == "shop-demo"
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=billing,team=db")
    assert resource().attributes["service.name"] == "billing"
