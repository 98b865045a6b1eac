"""The shipped dashboard and alert rules: structure, promtool, and a real Prometheus end to end."""

from __future__ import annotations

import json
import random
import re
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

from psycopg2_pool import ConnectionPool, PoolExhausted
from telemetry import instrument, names
from tests.support.gunicorn import get, query
from tests.support.gunicorn import prometheus as run_prometheus
from tests.support.system import free_port, require_binary

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
sys.path.insert(0, str(DASHBOARDS))

import build  # noqa: E402


def dashboards() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def exported_names() -> set[str]:
    """Every series name the OpenTelemetry Prometheus exporter writes for our metrics."""
    out = set()
    for metric in names.METRICS:
        base = build.prom(metric.name)
        if metric.instrument == "Histogram":
            out |= {base + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            out.add(base)
    return out


def test_committed_json_is_what_the_generator_makes() -> None:
    result = subprocess.run([sys.executable, str(DASHBOARDS / "build.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", dashboards(), ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    (ds_input,) = dashboard["__inputs"]
    assert ds_input["type"] == "datasource" and ds_input["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) >= {"datasource", "job", "instance", "pool"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["current"]["value"] == "${" + ds_input["name"] + "}"
    for name in ("job", "instance", "pool"):
        assert variables[name]["multi"] and variables[name]["includeAll"]
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"]

    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"panel {p['id']} overlaps another"
        cells |= area

    known = exported_names()
    for p in panels(dashboard):
        assert p["description"], p["title"]
        assert p["fieldConfig"]["defaults"]["unit"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            used = set(re.findall(r"\b(?:db_client_connection|psycopg2_pool)_[a-z_]+(?=\{)",
                                  t["expr"]))
            assert used and used <= known, (p["title"], used - known)
            for selector in ('job=~"$job"', 'instance=~"$instance"',
                             'db_client_connection_pool_name=~"$pool"'):
                assert selector in t["expr"], (p["title"], selector)


def test_alert_rules_check_and_unit_tests() -> None:
    promtool = require_binary("promtool")
    check = subprocess.run([promtool, "check", "rules", str(DASHBOARDS / "alerts.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "6 rules found" in check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=DASHBOARDS,
                          capture_output=True, text=True, timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr
    text = (DASHBOARDS / "alerts.yml").read_text()
    for name in re.findall(r"\b(?:db_client_connection|psycopg2_pool)_[a-z_]+\b", text):
        assert name in exported_names() | {"db_client_connection_pool_name",
                                           "db_client_connection_state"}, name


# -- end to end: load -> OpenTelemetry Prometheus exporter -> a real Prometheus -> every query



def get_json(url: str) -> Any:
    return json.loads(get(url, timeout=10))


@pytest.fixture
def exporter() -> Iterator[tuple[Any, int]]:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import start_http_server

    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    yield provider, port
    server.shutdown()
    thread.join(5)
    provider.shutdown()  # the reader unregisters its collector from REGISTRY


@pytest.fixture
def prometheus(exporter: tuple[Any, int], tmp_path: Path) -> Iterator[str]:
    _, target_port = exporter
    scrape = ("scrape_configs:\n  - job_name: app\n    static_configs:\n"
              f"      - targets: ['127.0.0.1:{target_port}']\n")
    with run_prometheus(scrape, tmp_path / "data", tmp_path / "prometheus.log",
                        interval="1s") as url:
        yield url


def load(pool: ConnectionPool, stop: threading.Event, seed: int) -> None:
    """Checkouts with waits and timeouts, queries, and now and then a discarded connection."""
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            conn = pool.getconn()
        except PoolExhausted:
            continue
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        time.sleep(rng.uniform(0, 0.02))
        pool.putconn(conn, close=rng.random() < 0.05)


def substitute(expr: str, pool: str) -> str:
    return (expr.replace("$__rate_interval", "10s").replace("$__range", "1m")
            .replace("$job", "app").replace("$instance", ".*").replace("$pool", pool))


@pytest.mark.slow  # real services: .ci/run runs it
def test_every_panel_query_returns_data_from_a_real_prometheus(
        dsn: str, exporter: tuple[Any, int], prometheus: str) -> None:
    provider, _ = exporter
    pool = ConnectionPool(1, 3, dsn=dsn, timeout=0.01, name="e2e")
    handle = instrument(pool, meter_provider=provider, leak_threshold=0.5)
    leaked = pool.getconn()  # held all along: a leak the detector reports
    stop = threading.Event()
    workers = [threading.Thread(target=load, args=(pool, stop, i)) for i in range(5)]
    for worker in workers:
        worker.start()
    try:
        # Scrapes every second; rate() over 10 s needs a few of them with traffic.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(1)
            if len(query(prometheus, "db_client_connection_count[15s]")) >= 2 and query(
                    prometheus, "count_over_time(db_client_connection_count[15s]) >= 12"):
                break
        for pool_value in (".*", "e2e"):
            for dashboard in dashboards():
                for p in panels(json.loads(dashboard.read_text())):
                    for t in p["targets"]:
                        result = query(prometheus, substitute(t["expr"], pool_value))
                        assert result, f"no data for {p['title']!r}: {t['expr']}"
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
        pool.putconn(leaked)
        handle.uninstrument()
        pool.close()
    # The template variables' label_values() queries, through the label API.
    anchor = build.prom(names.COUNT)
    for label_name, expected in (("job", "app"), ("db_client_connection_pool_name", "e2e")):
        values = get_json(f"{prometheus}/api/v1/label/{label_name}/values?"
                          + urllib.parse.urlencode({"match[]": anchor}))["data"]
        assert expected in values
    assert handle.leak_detector is not None and handle.leak_detector.count() >= 1
    assert query(prometheus, 'psycopg2_pool_connection_leaks_total{job="app"} >= 1')
    assert query(prometheus, 'db_client_connection_timeouts_total{job="app"} > 0')
