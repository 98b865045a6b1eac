"""Several worker processes: the production guide's gunicorn recipe, run as written, under real
gunicorn and a real Prometheus, and why prometheus_client's multiprocess mode is not the way."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from psycopg2_pool import ConnectionPool
from telemetry import instrument
from tests.support.gunicorn import (
    ROOT,
    check_dashboard,
    free_port_pair,
    get,
    gunicorn,
    production_scrape,
    prometheus,
    query,
    recipe,
    require_gunicorn,
    substitute,
    wait_for_rates,
)
from tests.support.system import free_port


@pytest.fixture
def ports() -> tuple[int, int]:
    """gunicorn's port, and the first of the two workers' metrics ports."""
    return free_port(), free_port_pair()


@pytest.fixture
def site(dsn: str, ports: tuple[int, int], tmp_path: Path) -> Iterator[tuple[int, int]]:
    """The guide's app.py and gunicorn.conf.py under real gunicorn: (http port, metrics port)."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text(recipe("production.md", "# app.py"))
    (app / "gunicorn.conf.py").write_text(recipe("production.md", "# gunicorn.conf.py"))
    http, metrics = ports
    env = dict(os.environ, APP_DSN=dsn, METRICS_PORT=str(metrics),
               PYTHONPATH=os.pathsep.join([str(app), str(ROOT),
                                           os.environ.get("PYTHONPATH", "")]))
    with gunicorn(["-c", "gunicorn.conf.py", "app:application"], app, env, http, metrics,
                  tmp_path / "gunicorn.log"):
        yield http, metrics


@pytest.fixture
def scraper(ports: tuple[int, int], tmp_path: Path) -> Iterator[str]:
    """A real Prometheus with the guide's prometheus.yml, pointed at this test's ports (started
    first: it takes some seconds to scrape for the first time)."""
    require_gunicorn()
    with prometheus(production_scrape(ports[1]), tmp_path / "data",
                    tmp_path / "prometheus.log") as url:
        yield url


def requests(http: int, stop_event: threading.Event, served: set[str]) -> None:
    while not stop_event.is_set():
        body = get(f"http://127.0.0.1:{http}/").decode()
        served.add(body.split()[-1])


@pytest.mark.slow  # real services: .ci/run runs it
def test_gunicorn_recipe_two_workers_both_pools_on_the_dashboard(
        scraper: str, site: tuple[int, int]) -> None:
    http, metrics = site
    instances = {f"127.0.0.1:{metrics}", f"127.0.0.1:{metrics + 1}"}
    stop_event = threading.Event()
    served: set[str] = set()
    clients = [threading.Thread(target=requests, args=(http, stop_event, served))
               for _ in range(8)]
    for client in clients:
        client.start()
    try:
        wait_for_rates(scraper, len(instances))
        check_dashboard(scraper, instances)
    finally:
        stop_event.set()
        for client in clients:
            client.join(10)
    assert len(served) == 2, f"requests were served by {served}: not both workers"
    # The sums add both workers' pools: each has maxconn=4 and minconn=1.
    (maximum,) = query(scraper, substitute(
        'sum by (db_client_connection_pool_name) (db_client_connection_max{job=~"$job", '
        'instance=~"$instance", db_client_connection_pool_name=~"$pool"})'))
    assert float(maximum["value"][1]) == 8.0


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
