"""The Django backend under a real Celery worker with its prefork pool (issue 25, item 2).

A worker with 2 child processes runs 40 tasks of a Django project on this backend, through
Celery's filesystem broker (no broker server needed). Celery's Django fix-up closes Django's
connections before and after each task, which returns them to the pool; its prefork children
are forked from a main process that holds a connection of the pool (taken by a
``worker_init`` handler, as a project's start-up code may do). What must hold:

- each child serves every task from one pool and at most ``maxconn`` server sessions
  (Celery 5.6+ also closes Django's pool after each task in prefork children, for Django's
  psycopg 3 pool, which is not fork safe: celery/celery#10554; this backend's pool is, and it
  stays open);
- no child ever uses the main process's session, which still works at the end;
- when the worker stops, every session it opened is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import psycopg2
import pytest

from tests.frameworks.test_django import django_settings
from tests.support.system import require_package

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TASKS = 40
CHILDREN = 2
MAXCONN = 2


SETTINGS = """\
DATABASES = {{"default": {database!r}}}
INSTALLED_APPS = []
SECRET_KEY = "tests"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
"""

TASKS_MODULE = """\
import json
import os

from celery import Celery
from celery.signals import worker_init

app = Celery("celerysite")
app.conf.update({config!r})


@worker_init.connect
def hold_a_connection_in_the_main_process(**kwargs):
    # Runs after Celery's Django fix-up has set Django up, before the children are forked:
    # the main process keeps a connection of the pool checked out while they run.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    with open({parent_file!r}, "w") as out:
        json.dump({{"process": os.getpid(), "backend": backend}}, out)


@app.task
def work():
    from django.db import connection

    pool = connection.pool
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    stats = pool.get_stats()
    return {{"process": os.getpid(), "backend": backend, "pool": id(pool),
             "opened": stats["connections_num"]}}
"""


class Worker(NamedTuple):
    app: Any  #: a Celery app on the same broker, to send tasks and read results
    process: subprocess.Popen[bytes]
    log: Path
    parent_file: Path
    app_name: str
    dsn: str


@pytest.fixture
def worker(dsn: str, tmp_path: Path) -> Iterator[Worker]:
    celery = require_package("celery", "Celery")
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    suffix = uuid.uuid4().hex[:10]
    dbname, app_name = f"celery_{suffix}", f"celery-{suffix}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {dbname}")
    database = django_settings(dsn)
    database.update(NAME=dbname, OPTIONS={**database["OPTIONS"], "application_name": app_name,
                                          "pool": {"minconn": 1, "maxconn": MAXCONN}})
    queue, results = tmp_path / "queue", tmp_path / "results"
    queue.mkdir()
    results.mkdir()
    config = {"broker_url": "filesystem://", "result_backend": f"file://{results}",
              "broker_transport_options": {"data_folder_in": str(queue),
                                           "data_folder_out": str(queue),
                                           "store_processed": False},
              "worker_prefetch_multiplier": 1, "broker_connection_retry_on_startup": True}
    parent_file = tmp_path / "parent.json"
    (tmp_path / "celerysite_settings.py").write_text(SETTINGS.format(database=database))
    (tmp_path / "celerysite_tasks.py").write_text(TASKS_MODULE.format(
        config=config, parent_file=str(parent_file)))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "celerysite_settings",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celerysite_tasks", "worker",
             "--pool=prefork", f"--concurrency={CHILDREN}", "--loglevel=INFO",
             "--without-heartbeat", "--without-mingle", "--without-gossip"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    client = celery.Celery("client")
    client.conf.update(config)
    try:
        yield Worker(client, process, log, parent_file, app_name, dsn)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s", (dbname,))
            cur.execute(f"DROP DATABASE IF EXISTS {dbname}")
        admin.close()


def sessions(admin: Any, app_name: str) -> set[int]:
    with admin.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                    (app_name,))
        return {pid for (pid,) in cur.fetchall()}


def test_prefork_children_keep_their_pool_across_tasks(worker: Worker, admin: Any) -> None:
    pending = [worker.app.send_task("celerysite_tasks.work") for _ in range(TASKS)]
    try:
        done = [result.get(timeout=60) for result in pending]
    except Exception as exc:
        raise AssertionError(f"{exc!r}; the worker's log:\n"
                             f"{worker.log.read_text()[-4000:]}") from exc
    parent = json.loads(worker.parent_file.read_text())

    by_child: dict[int, list[dict[str, Any]]] = {}
    for result in done:
        by_child.setdefault(result["process"], []).append(result)
    assert parent["process"] not in by_child
    for child, results in by_child.items():
        pools = {result["pool"] for result in results}
        backends = {result["backend"] for result in results}
        assert len(pools) == 1, (f"child {child} built {len(pools)} pools for "
                                 f"{len(results)} tasks: its pool was closed between tasks")
        assert len(backends) <= MAXCONN, (child, backends)
        assert max(result["opened"] for result in results) <= MAXCONN
    used = {result["backend"] for result in done}
    assert parent["backend"] not in used, "a child used the main process's session"
    assert len(used) <= CHILDREN * MAXCONN

    # The main process's connection, inherited by each child and forgotten there, still
    # works: its session is alive and idle, and no child's close touched it.
    live = sessions(admin, worker.app_name)
    assert parent["backend"] in live

    worker.process.send_signal(signal.SIGTERM)  # warm shutdown
    worker.process.wait(30)
    deadline = time.monotonic() + 10
    while sessions(admin, worker.app_name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sessions(admin, worker.app_name), "the stopped worker left sessions open"
