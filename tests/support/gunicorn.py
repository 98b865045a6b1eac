"""Real gunicorn and a real Prometheus for the integration tests: the docs' recipes taken from
the docs, processes started and stopped, the shipped dashboard's queries run against
Prometheus (tests/integration/test_gunicorn.py, test_django_gunicorn.py, test_dashboards.py)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.system import free_port, require_binary, require_package

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)
#: What each worker logs from the recipes' post_fork once its exporter listens.
METRICS_LINE = re.compile(r"worker (\d+): metrics on 127\.0\.0\.1:(\d+)")


def recipe(doc: str, first_line: str) -> str:
    """The code block of ``docs/<doc>`` that starts with ``first_line``."""
    blocks = [body for _, body in BLOCK.findall((ROOT / "docs" / doc).read_text())
              if body.startswith(first_line)]
    assert len(blocks) == 1, f"docs/{doc} has no single block starting {first_line!r}"
    return blocks[0]


def replaced(text: str, old: str, new: str) -> str:
    """``text`` with ``old`` replaced, which must be there: a recipe edited so that the test's
    substitution no longer applies fails loudly rather than testing something else."""
    assert old in text, f"{old!r} is no longer in the recipe"
    return text.replace(old, new)


def require_gunicorn() -> None:
    require_package("gunicorn", "gunicorn")


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


@contextmanager
def gunicorn(args: list[str], cwd: Path, env: Mapping[str, str], http: int, metrics: int,
             log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m gunicorn <args>`` in ``cwd``, ready once it serves ``/`` on ``http`` and
    both workers' exporters (``metrics``, ``metrics + 1``) answer; stopped at the end, when its
    log must show no traceback and exactly the two workers it started."""
    require_gunicorn()
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "gunicorn", *args,
                                    "--bind", f"127.0.0.1:{http}"],
                                   cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{http}/", process, "gunicorn", log)
        for port in (metrics, metrics + 1):  # both workers' exporters
            wait_ready(f"http://127.0.0.1:{port}/metrics", process, "a worker's exporter", log)
        yield process
    finally:
        stop(process)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert len(METRICS_LINE.findall(text)) == 2, text


def worker_ports(log: Path) -> dict[int, int]:
    """Each worker's pid and metrics port, from the lines post_fork logged."""
    return {int(pid): int(port) for pid, port in METRICS_LINE.findall(log.read_text())}


@contextmanager
def prometheus(scrape: str, data: Path, log: Path, interval: str = "500ms") -> Iterator[str]:
    """A real Prometheus scraping every ``interval`` with the scrape configuration ``scrape``;
    its base URL once ready."""
    binary = require_binary("prometheus")
    config = data.parent / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: {interval}\n  evaluation_interval: 1s\n"
                      + scrape)
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/-/ready", process, "prometheus", log)
        yield url
    finally:
        stop(process)
        shutil.rmtree(data, ignore_errors=True)


def production_scrape(metrics: int) -> str:
    """The production guide's prometheus.yml, pointed at ports ``metrics`` and
    ``metrics + 1``."""
    scrape = recipe("production.md", "# prometheus.yml")
    scrape = replaced(scrape, "127.0.0.1:9464", f"127.0.0.1:{metrics}")
    return replaced(scrape, "127.0.0.1:9465", f"127.0.0.1:{metrics + 1}")


def dashboard_queries() -> list[tuple[str, str]]:
    out = []
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            out += [(panel["title"], t["expr"]) for t in panel.get("targets", [])]
    return out


def substitute(expr: str) -> str:
    return (expr.replace("$__rate_interval", "3s").replace("$__range", "1m")
            .replace("$job", "web").replace("$instance", ".*").replace("$pool", "web"))


def wait_for_rates(prometheus: str, instances: int, timeout: float = 15) -> None:
    """Until every worker's wait-time series has the four samples a 3 s rate needs."""
    deadline = time.monotonic() + timeout
    rated = 'count_over_time(db_client_connection_wait_time_seconds_count{job="web"}[3s]) >= 4'
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if len(query(prometheus, rated)) == instances:
            return


def check_dashboard(prometheus: str, instances: set[str]) -> None:
    """Every panel query of the shipped dashboards returns data, for the pool ``web`` only,
    with each of ``instances`` in the per-instance row; the template variables' values too."""
    results = {(title, expr): query(prometheus, substitute(expr))
               for title, expr in dashboard_queries()}
    up = query(prometheus, 'up{job="web"} == 1')
    assert {r["metric"]["instance"] for r in up} == instances
    empty = [title for (title, _), result in results.items() if not result]
    assert not empty, f"panels with no data: {empty}"
    for (title, expr), result in results.items():
        assert {r["metric"]["db_client_connection_pool_name"] for r in result} == {"web"}, title
        if "by (instance" in expr or "le, instance" in expr:  # the per-instance row
            assert {r["metric"]["instance"] for r in result} == instances, title
    # The template variables' label_values(), through the label API.
    values = json.loads(get(f"{prometheus}/api/v1/label/instance/values?"
                            + urllib.parse.urlencode({"match[]": "db_client_connection_count"})))
    assert set(values["data"]) == instances
