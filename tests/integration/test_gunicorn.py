"""Several worker processes: the production guide's gunicorn recipe, run as written, under real
gunicorn and a real Prometheus, and why prometheus_client's multiprocess mode is not the way."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from psycopg2_pool import ConnectionPool
from telemetry import instrument
from tests.support.system import REQUIRE_BINARIES_ENV, free_port, require_binary

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "production.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def recipe(first_line: str) -> str:
    """The production guide's code block that starts with ``first_line``."""
    blocks = [body for _, body in BLOCK.findall(GUIDE.read_text())
              if body.startswith(first_line)]
    assert len(blocks) == 1, f"docs/production.md has no single block starting {first_line!r}"
    return blocks[0]


def require_gunicorn() -> None:
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        message = ("gunicorn is not installed (the `test` extra has it: "
                   "python3 -m pip install -e '.[test]', as .ci/run does)")
        if os.environ.get(REQUIRE_BINARIES_ENV) == "1":
            pytest.fail(f"{message}, and {REQUIRE_BINARIES_ENV}=1 forbids skipping")
        pytest.skip(message)


def free_port_pair() -> int:
    """A port p on 127.0.0.1 such that p and p + 1 are free: the two workers' metrics ports."""
    for _ in range(50):
        base = free_port()
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", base))
                b.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise AssertionError("no two consecutive free ports")


def get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read())


def query(prometheus: str, expr: str) -> list[Any]:
    data = json.loads(get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode(
        {"query": expr})))
    assert data["status"] == "success", (expr, data)
    return list(data["data"]["result"])


def wait_ready(url: str, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            get(url, timeout=2)
            return
        except OSError:
            assert process.poll() is None, f"{what} exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{what} not ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
def ports() -> tuple[int, int]:
    """gunicorn's port, and the first of the two workers' metrics ports."""
    return free_port(), free_port_pair()


@pytest.fixture
def gunicorn(dsn: str, ports: tuple[int, int], tmp_path: Path) -> Iterator[tuple[int, int]]:
    """The guide's app.py and gunicorn.conf.py under real gunicorn: (http port, metrics port)."""
    require_gunicorn()
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text(recipe("# app.py"))
    (app / "gunicorn.conf.py").write_text(recipe("# gunicorn.conf.py"))
    http, metrics = ports
    env = dict(os.environ, APP_DSN=dsn, METRICS_PORT=str(metrics),
               PYTHONPATH=os.pathsep.join([str(app), str(ROOT),
                                           os.environ.get("PYTHONPATH", "")]))
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
             "--bind", f"127.0.0.1:{http}", "app:application"],
            cwd=app, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{http}/", process, "gunicorn", log)
        for port in (metrics, metrics + 1):  # both workers' exporters
            wait_ready(f"http://127.0.0.1:{port}/metrics", process, "a worker's exporter", log)
        yield http, metrics
    finally:
        stop(process)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert len(re.findall(r"worker \d+: metrics on 127\.0\.0\.1:\d+", text)) == 2, text


@pytest.fixture
def prometheus(ports: tuple[int, int], tmp_path: Path) -> Iterator[str]:
    """A real Prometheus with the guide's prometheus.yml, pointed at this test's ports (started
    first: it takes some seconds to scrape for the first time)."""
    require_gunicorn()
    binary = require_binary("prometheus")
    _, metrics = ports
    scrape = recipe("# prometheus.yml").replace("127.0.0.1:9464", f"127.0.0.1:{metrics}")
    scrape = scrape.replace("127.0.0.1:9465", f"127.0.0.1:{metrics + 1}")
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 500ms\n  evaluation_interval: 1s\n" + scrape)
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/-/ready", process, "prometheus", log)
        yield url
    finally:
        stop(process)
        shutil.rmtree(tmp_path / "data", ignore_errors=True)


def requests(http: int, stop_event: threading.Event, served: set[str]) -> None:
    while not stop_event.is_set():
        body = get(f"http://127.0.0.1:{http}/").decode()
        served.add(body.split()[-1])


def dashboard_queries() -> list[tuple[str, str]]:
    out = []
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            out += [(panel["title"], t["expr"]) for t in panel.get("targets", [])]
    return out


def substitute(expr: str) -> str:
    return (expr.replace("$__rate_interval", "3s").replace("$__range", "1m")
            .replace("$job", "web").replace("$instance", ".*").replace("$pool", "web"))


@pytest.mark.slow  # real services: .ci/run runs it
def test_gunicorn_recipe_two_workers_both_pools_on_the_dashboard(
        prometheus: str, gunicorn: tuple[int, int]) -> None:
    http, metrics = gunicorn
    instances = {f"127.0.0.1:{metrics}", f"127.0.0.1:{metrics + 1}"}
    stop_event = threading.Event()
    served: set[str] = set()
    clients = [threading.Thread(target=requests, args=(http, stop_event, served))
               for _ in range(8)]
    for client in clients:
        client.start()
    try:
        deadline = time.monotonic() + 15
        rated = ('count_over_time(db_client_connection_wait_time_seconds_count'
                 '{job="web"}[3s]) >= 4')
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if len(query(prometheus, rated)) == 2:
                break
        results = {(title, expr): query(prometheus, substitute(expr))
                   for title, expr in dashboard_queries()}
    finally:
        stop_event.set()
        for client in clients:
            client.join(10)
    assert len(served) == 2, f"requests were served by {served}: not both workers"
    up = query(prometheus, 'up{job="web"} == 1')
    assert {r["metric"]["instance"] for r in up} == instances
    empty = [title for (title, _), result in results.items() if not result]
    assert not empty, f"panels with no data: {empty}"
    for (title, expr), result in results.items():
        assert {r["metric"]["db_client_connection_pool_name"] for r in result} == {"web"}, title
        if "by (instance" in expr or "le, instance" in expr:  # the per-instance row
            assert {r["metric"]["instance"] for r in result} == instances, title
    # The sums add both workers' pools: each has maxconn=4 and minconn=1.
    (maximum,) = query(prometheus, substitute(
        'sum by (db_client_connection_pool_name) (db_client_connection_max{job=~"$job", '
        'instance=~"$instance", db_client_connection_pool_name=~"$pool"})'))
    assert float(maximum["value"][1]) == 8.0
    # The template variables' label_values(), through the label API.
    values = json.loads(get(f"{prometheus}/api/v1/label/instance/values?"
                            + urllib.parse.urlencode({"match[]": "db_client_connection_count"})))
    assert set(values["data"]) == instances


def test_prometheus_client_multiprocess_mode_does_not_carry_opentelemetry_metrics(
        dsn: str, tmp_path: Path) -> None:
    """What docs/dashboards.md says: MultiProcessCollector serves prometheus_client's own
    metrics only; the OpenTelemetry exporter's collector, in REGISTRY, is never asked."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client import values as client_values
    from prometheus_client.metrics import Counter
    from prometheus_client.multiprocess import MultiProcessCollector

    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    pool = ConnectionPool(1, 2, dsn=dsn, name="mp")
    handle = instrument(pool, meter_provider=provider)
    previous = client_values.ValueClass
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    try:
        client_values.ValueClass = client_values.get_value_class()  # the mmap-file values
        Counter("app_requests", "a prometheus_client metric", registry=None).inc()
        with pool.connection():
            pass
        in_process = generate_latest(REGISTRY).decode()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(tmp_path))
        multiprocess = generate_latest(registry).decode()
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR")
        client_values.ValueClass = previous
        handle.uninstrument()
        pool.close()
        provider.shutdown()
    assert 'db_client_connection_count{db_client_connection_pool_name="mp"' in in_process
    assert "app_requests_total 1.0" in multiprocess  # the mode works for its own metrics
    assert "db_client_connection" not in multiprocess  # and serves none of the pool's
