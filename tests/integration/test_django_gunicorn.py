"""A real Django app under real gunicorn (2 workers x 4 threads, ``--preload``), with the
settings and gunicorn.conf.py of docs/frameworks.md ("Under gunicorn") taken from the docs, a
real Prometheus scraping both workers, and a PostgreSQL of the module's own to restart.

The app is tests/frameworks/djangoapp, run three ways: as Django's ``wsgi.py`` leaves it, the
pool is built in each worker by its first request; with a query as ``wsgi.py`` is imported (an
app that loads its configuration at start-up), it is built and instrumented in gunicorn's
master, before the fork, the case that needs the most of the backend and the telemetry: each
worker must forget the inherited connection, report through the meter provider post_fork
sets, and run its own leak detector; and built in the master then closed there
(``connection.close_pool()``, as docs/frameworks.md suggests), so that each worker builds and
instruments a pool of its own after the master instrumented one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import OwnServer
from tests.support.gunicorn import (
    ROOT,
    check_dashboard,
    free_port_pair,
    gunicorn,
    production_scrape,
    prometheus,
    query,
    recipe,
    replaced,
    require_gunicorn,
    wait_for_rates,
    worker_ports,
)
from tests.support.system import free_port, require_package

VIEWS = ROOT / "tests" / "frameworks" / "djangoapp" / "views.py"
THREADS = 8  # gunicorn's 2 workers x 4 threads: the most requests in flight at once
LEAK_THRESHOLD = 1

#: What the docs' settings block leaves to the project.
PROJECT_SETTINGS = """
INSTALLED_APPS = ["tests.frameworks.djangoapp"]
ROOT_URLCONF = "tests.frameworks.djangoapp.urls"
MIDDLEWARE = []
SECRET_KEY = "tests"
ALLOWED_HOSTS = ["*"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
"""

#: Django's wsgi.py.
WSGI = """
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
"""
#: A query as wsgi.py is imported (see the module docstring), its connection returned as
#: the end of a request would.
START_UP_QUERY = """
from django.db import connection

from tests.frameworks.djangoapp.models import Item

Item.objects.exists()
connection.close()
"""
#: Where the pool is built: the three ways the site runs.
IN_WORKERS, IN_MASTER, CLOSED_IN_MASTER = (
    "pool-in-workers", "pool-in-master", "pool-closed-in-master")


@dataclass
class Site:
    built: str
    http: int
    metrics: int
    log: Path
    server: OwnServer

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.http}{path}"

    @property
    def instances(self) -> set[str]:
        return {f"127.0.0.1:{self.metrics}", f"127.0.0.1:{self.metrics + 1}"}


@pytest.fixture(scope="module", params=[IN_WORKERS, IN_MASTER, CLOSED_IN_MASTER])
def built(request: pytest.FixtureRequest) -> str:
    """Where the pool is built (the restart test asks for one only)."""
    return str(request.param)


@pytest.fixture(scope="module")
def ports(built: str) -> tuple[int, int]:
    """gunicorn's port, and the first of the two workers' metrics ports."""
    return free_port(), free_port_pair()


@pytest.fixture(scope="module")
def scraper(ports: tuple[int, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus with the production guide's prometheus.yml on this test's ports
    (started first: its first scrape takes a while)."""
    require_gunicorn()
    require_package("django", "Django")
    tmp = tmp_path_factory.mktemp("prometheus")
    with prometheus(production_scrape(ports[1]), tmp / "data", tmp / "prometheus.log") as url:
        yield url


def project(directory: Path, dbname: str, built: str) -> None:
    """settings.py (the docs' block, on the module's server, with a short leak threshold),
    wsgi.py and the docs' gunicorn.conf.py."""
    settings = recipe("frameworks.md", "# settings.py")
    settings = replaced(settings, '"NAME": "app"', f'"NAME": {dbname!r}')
    settings = replaced(settings, '"leak_threshold": 30', f'"leak_threshold": {LEAK_THRESHOLD}')
    (directory / "settings.py").write_text(settings + PROJECT_SETTINGS)
    wsgi = WSGI + ("" if built == IN_WORKERS else START_UP_QUERY)
    if built == CLOSED_IN_MASTER:
        wsgi += "connection.close_pool()\n"
    (directory / "wsgi.py").write_text(wsgi)
    (directory / "gunicorn.conf.py").write_text(recipe("frameworks.md", "# gunicorn.conf.py"))


@pytest.fixture(scope="module")
def site(server: OwnServer, built: str, ports: tuple[int, int], scraper: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The project under ``gunicorn -c gunicorn.conf.py wsgi``, the tables migrated first (a
    deploy's step)."""
    from psycopg2.extensions import parse_dsn

    app = tmp_path_factory.mktemp("djangosite")
    project(app, server.dbname, built)
    http, metrics = ports
    libpq = {f"PG{key.upper()}": value for key, value in parse_dsn(server.uri).items()
             if key in ("host", "port", "user") and value}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, **libpq,
           "METRICS_PORT": str(metrics), "DJANGO_SETTINGS_MODULE": "settings",
           "PYTHONPATH": os.pathsep.join([str(app), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    migrated = subprocess.run([sys.executable, "-m", "django", "migrate", "-v", "0"], cwd=app,
                              env=env, capture_output=True, text=True, timeout=60)
    assert migrated.returncode == 0, migrated.stderr
    log = app / "gunicorn.log"
    with gunicorn(["-c", "gunicorn.conf.py", "wsgi"], app, env, http, metrics, log):
        yield Site(built, http, metrics, log, server)


@dataclass
class Request:
    started: float
    ended: float
    worker: int | None  #: the process that served it; None when it failed
    error: str | None


def fetch(url: str) -> Request:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            worker, error = json.loads(response.read())["worker"], None
    except urllib.error.HTTPError as exc:
        worker, error = None, f"HTTP {exc.code}"
    except OSError as exc:
        worker, error = None, type(exc).__name__
    return Request(started, time.monotonic(), worker, error)


class Load:
    """``THREADS`` clients requesting ``/`` (one ORM query) back to back until stopped."""

    def __init__(self, site: Site) -> None:
        self.requests: list[Request] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(site.url(),))
                         for _ in range(THREADS)]

    def _client(self, url: str) -> None:
        while not self._stop.is_set():
            self.requests.append(fetch(url))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


@pytest.mark.slow  # real services: .ci/run runs it
def test_both_workers_on_the_dashboard(site: Site, scraper: str) -> None:
    """Every panel query of the shipped dashboard returns data for both workers' pools; a
    pool built in the master and kept left each worker its inherited connection to forget
    (a ``fork`` discard), and none otherwise."""
    with Load(site) as load:
        wait_for_rates(scraper, len(site.instances))
        check_dashboard(scraper, site.instances)
    assert not [r for r in load.requests if r.error]
    assert {r.worker for r in load.requests} == set(worker_ports(site.log))
    forks = query(scraper, 'psycopg2_pool_connection_discards_total{job="web", '
                           'psycopg2_pool_discard_reason="fork"} >= 1')
    assert {r["metric"]["instance"] for r in forks} == (
        site.instances if site.built == IN_MASTER else set())


def shown(path: Path, cwd: Path) -> str:
    """A file as a leak report's site shows it: relative to the working directory when
    under it, else as Python names it (telemetry.stacks)."""
    relative = os.path.relpath(path, cwd)
    return str(path) if relative.startswith("..") else relative


@pytest.mark.slow
@pytest.mark.parametrize("built", [IN_WORKERS, IN_MASTER], indirect=True)
def test_a_leak_is_reported_with_the_views_line(site: Site, scraper: str) -> None:
    """A request whose background work keeps its connection: the worker that served it logs
    the leak with the line that took the connection, and counts it on its own metrics."""
    line = next(n for n, text in enumerate(VIEWS.read_text().splitlines(), start=1)
                if text.rstrip().endswith("# LEAK: the audit thread's connection"))
    site_field = f"site='{shown(VIEWS, site.log.parent)}:{line} in record_visit'"
    visit = fetch(site.url("/visit/"))
    assert visit.error is None and visit.worker is not None
    port = worker_ports(site.log)[visit.worker]
    reports: list[str] = []
    leaks: list[Any] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (reports and leaks):
        time.sleep(0.25)
        reports = [line for line in site.log.read_text().splitlines()
                   if "connection_leak_suspected" in line]
        leaks = query(scraper, 'psycopg2_pool_connection_leaks_total{job="web"} == 1')
    assert len(reports) == 1, reports
    assert site_field in reports[0] and "thread=audit_0" in reports[0], reports[0]
    assert re.search(rf"held_s=\d\S* .*threshold_s={LEAK_THRESHOLD}\b", reports[0])
    assert [r["metric"]["instance"] for r in leaks] == [f"127.0.0.1:{port}"]


@pytest.mark.slow
@pytest.mark.parametrize("built", [IN_MASTER], indirect=True)  # either: once is enough
def test_a_server_restart_costs_only_the_requests_in_flight(site: Site) -> None:
    """``pg_ctl restart -m fast`` under load from as many clients as gunicorn has threads:
    the requests that fail are among those in flight while the server restarted, at most
    one per thread; every request after it succeeds, in the same two workers."""
    workers = set(worker_ports(site.log))
    with Load(site) as load:
        time.sleep(1)
        began = time.monotonic()
        site.server.restart()
        back = time.monotonic()
        time.sleep(2)
    requests = load.requests
    failed = [r for r in requests if r.error]
    overlapping = [r for r in requests if r.started < back and r.ended > began]
    in_flight = [r for r in requests if r.started <= began < r.ended]
    after = [r for r in requests if r.started >= back]
    assert all(r.started < back and r.ended > began for r in failed), failed
    assert len(failed) <= THREADS, failed
    assert after and not [r for r in after if r.error]
    assert {r.worker for r in after} == workers  # served by the same workers: none restarted
    assert worker_ports(site.log).keys() == workers
    print(f"\nrestart under {THREADS} clients: {len(requests)} requests, restart took "
          f"{back - began:.2f} s, {len(in_flight)} in flight when it began, "
          f"{len(overlapping)} overlapping it, {len(failed)} failed "
          f"({sorted({r.error or '' for r in failed})}), {len(after)} after, none failed")
