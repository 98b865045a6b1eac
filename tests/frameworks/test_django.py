"""The Django backend (ENGINE ``psycopg2_pool.django``) with real Django and the real server.

Django is configured once for this module (``settings.configure``), in a database of its own
created for it, with one alias per pool setting under test, all on that database; the app
``tests.frameworks.djangoapp`` has one model, created by its migration. Requests go through a
real WSGI server (wsgiref, one thread per request) to Django's WSGI handler, so that Django
ends each request as in production (``request_finished``: the test client keeps
connections open between requests instead). Subprocesses check what one process cannot:
interpreter exit, Django's driver choice, ``import psycopg2_pool`` without Django.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, NamedTuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psycopg2
import pytest
from psycopg2.extensions import ISOLATION_LEVEL_SERIALIZABLE, make_dsn, parse_dsn

pytest.importorskip("django", reason="Django is not installed (the test extra has it)")

from django.core.exceptions import ImproperlyConfigured

from psycopg2_pool import ConnectionPool
from tests.support.forking import in_child
from tests.support.otel import Otel, point

ROOT = Path(__file__).resolve().parents[2]
VIEWS = ROOT / "tests" / "frameworks" / "djangoapp" / "views.py"
MAXCONN = 4


class Site(NamedTuple):
    url: str  #: the WSGI server's base URL
    dsn: str  #: the module's database
    dbname: str
    role: str  #: the role the ``setup`` alias assumes
    app_name: str  #: the ``default`` alias's application_name
    otel: Otel  #: the SDK the ``instrumented`` alias reports to


#: (server process, TimeZone) of each connection the ``setup`` alias's ``configure`` saw.
CONFIGURED: list[tuple[int, str]] = []


def configure(conn: Any) -> None:
    """The ``setup`` alias's own ``configure``, which runs after Django's setup."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), current_setting('TimeZone')")
        CONFIGURED.append(cursor.fetchone())


def django_settings(dsn: str) -> dict[str, Any]:
    """NAME, USER, PASSWORD, HOST, PORT and OPTIONS of Django's DATABASES, from a DSN."""
    options = parse_dsn(dsn)
    out = {"ENGINE": "psycopg2_pool.django"}
    for key, option in (("NAME", "dbname"), ("USER", "user"), ("PASSWORD", "password"),
                        ("HOST", "host"), ("PORT", "port")):
        out[key] = options.pop(option, "") or ""
    return {**out, "OPTIONS": options}


@pytest.fixture(scope="module")
def site(dsn: str) -> Iterator[Site]:
    import django
    from django.conf import settings

    if settings.configured:
        pytest.skip("Django's settings were configured by another module of this process")
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    suffix = uuid.uuid4().hex[:10]
    dbname, role, app_name = f"django_{suffix}", f"django_role_{suffix}", f"django-{suffix}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {dbname}")
        cur.execute(f"CREATE ROLE {role} NOLOGIN")
        cur.execute(f"GRANT {role} TO CURRENT_USER")
    base = {**django_settings(dsn), "NAME": dbname}
    otel = Otel()

    def alias(pool: Any = True, **more: Any) -> dict[str, Any]:
        options = {**base["OPTIONS"], **more.pop("OPTIONS", {})}
        if pool is not None:
            options["pool"] = pool
        return {**base, **more, "OPTIONS": options}

    settings.configure(
        DATABASES={
            "default": alias({"maxconn": MAXCONN},
                             OPTIONS={"application_name": app_name}),
            "checked": alias(CONN_HEALTH_CHECKS=True),
            "unchecked": alias(),
            "setup": alias({"configure": configure}, TIME_ZONE="Asia/Kathmandu", OPTIONS={
                "assume_role": role, "isolation_level": ISOLATION_LEVEL_SERIALIZABLE}),
            "instrumented": alias({"maxconn": 2, "instrument": {
                "meter_provider": otel.meter_provider, "tracer_provider": otel.tracer_provider,
                "leak_threshold": 0.3}}),
            "plain": alias(None),
            "renamed": alias(),
            "aged": alias(CONN_MAX_AGE=60),
            "forever": alias(CONN_MAX_AGE=None),
            "typo": alias({"max_size": 5, "maxconn": 5, "nope": 1}),
        },
        INSTALLED_APPS=["tests.frameworks.djangoapp"],
        ROOT_URLCONF="tests.frameworks.djangoapp.urls",
        USE_TZ=True, SECRET_KEY="tests", ALLOWED_HOSTS=["*"], MIDDLEWARE=[],
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,  # Django's errors go to pytest's log capture, not stderr
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates",
                    "OPTIONS": {"loaders": [("django.template.loaders.locmem.Loader", {
                        "items.html": "{% for item in items %}{{ item.name }} {% endfor %}"})]}}],
    )
    django.setup()
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application
    from django.db import connections

    call_command("migrate", "djangoapp", database="default", verbosity=0)
    connections["default"].close()

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = make_server("127.0.0.1", 0, get_wsgi_application(), server_class=Server,
                        handler_class=Quiet)
    serving = threading.Thread(target=httpd.serve_forever, daemon=True)
    serving.start()
    yield Site(f"http://127.0.0.1:{httpd.server_port}", make_dsn(dsn, dbname=dbname), dbname,
               role, app_name, otel)
    httpd.shutdown()
    httpd.server_close()
    connections.close_all()
    for name in settings.DATABASES:
        connections[name].close_pool()
    otel.shutdown()
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))
        cur.execute(f"DROP DATABASE IF EXISTS {dbname}")
        cur.execute(f"DROP ROLE IF EXISTS {role}")
    admin.close()


def get(site: Site, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(site.url + path, timeout=20) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def pool_of(alias: str) -> ConnectionPool:
    from django.db import connections

    pool = connections[alias].pool
    assert isinstance(pool, ConnectionPool)
    return pool


def settle(pool: ConnectionPool, timeout: float = 5.0) -> dict[str, Any]:
    """The pool's stats once no connection is out: the WSGI server returns a request's
    connection just after the client has its response."""
    deadline = time.monotonic() + timeout
    while True:
        stats = pool.get_stats()
        if stats["pool_in_use"] == 0 or time.monotonic() > deadline:
            return stats
        time.sleep(0.01)


# -- connections come from the pool, and go back to it ---------------------------------------

def test_requests_share_a_few_pooled_connections(site: Site, admin: Any) -> None:
    """50 requests in 4 threads: every request's connection is back in the pool at the end of
    the request, so the server sees at most maxconn sessions, opened once."""
    with ThreadPoolExecutor(4) as workers:
        pids = list(workers.map(lambda _: get(site, "/pid/default/")["pid"], range(50)))
    stats = settle(pool_of("default"))
    assert len(set(pids)) <= MAXCONN
    assert stats["connections_num"] <= MAXCONN
    assert stats["pool_in_use"] == 0 and stats["returns"] >= 50
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (site.app_name,))
        assert cur.fetchone()[0] <= MAXCONN


def test_closing_the_connection_returns_it(site: Site) -> None:
    from django.db import connections

    connection = connections["default"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        first = cursor.fetchone()[0]
    pool = pool_of("default")
    assert pool.get_stats()["pool_in_use"] == 1
    connection.close()
    assert connection.connection is None
    assert pool.get_stats()["pool_in_use"] == 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] == first  # the same session, from the pool
    connection.close()


def test_close_pool_keeps_the_pool_when_celerys_fixup_asks(site: Site) -> None:
    """Celery's Django fix-up calls close_pool() around every task in a prefork child
    (celery/celery#10554); the pool stays. Any other caller closes it."""
    from django.db import connections

    connection = connections["unchecked"]
    pool = connection.pool
    fixup: dict[str, Any] = {"__name__": "celery.fixups.django"}
    exec("def _close_database(conn):\n    conn.close()\n    conn.close_pool()\n", fixup)
    fixup["_close_database"](connection)
    assert connection.pool is pool and not pool.closed
    connection.close_pool()
    assert pool.closed
    assert connection.pool is not pool  # the next connection builds a new one


def test_without_the_pool_option_django_connects_itself(site: Site) -> None:
    from django.db import connections

    connection = connections["plain"]
    assert connection.pool is None
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    raw = connection.connection
    connection.close()
    assert raw.closed  # closed, not pooled


def test_a_new_database_name_gets_a_new_pool(site: Site, dsn: str) -> None:
    """What Django's test runner does to an alias (NAME becomes the test database's): the
    next connection comes from a pool on the new parameters, and the old pool is closed."""
    from django.db import connections

    connection = connections["renamed"]

    def database() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_database()")
            name = str(cursor.fetchone()[0])
        connection.close()
        return name

    assert database() == site.dbname
    before = pool_of("renamed")
    other = parse_dsn(dsn).get("dbname") or "postgres"
    connection.settings_dict["NAME"] = other
    try:
        assert database() == other
        assert before.closed and pool_of("renamed") is not before
    finally:
        connection.settings_dict["NAME"] = site.dbname
        connection.close_pool()


def test_transactions_commit_and_roll_back(site: Site) -> None:
    from django.db import connections, transaction

    from tests.frameworks.djangoapp.models import Item

    kept, undone = f"kept-{uuid.uuid4().hex[:8]}", f"undone-{uuid.uuid4().hex[:8]}"
    with transaction.atomic():
        Item.objects.create(name=kept)
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        Item.objects.create(name=undone)
        1 / 0  # noqa: B018
    connections["default"].close()
    assert pool_of("default").get_stats()["pool_in_use"] == 0
    conn = psycopg2.connect(site.dsn)  # the server's view, outside Django
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM djangoapp_item WHERE name IN (%s, %s)", (kept, undone))
            assert [row[0] for row in cur.fetchall()] == [kept]
    finally:
        conn.close()


# -- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("alias, shown", [("aged", "60"), ("forever", "None")])
def test_conn_max_age_other_than_zero_is_refused(site: Site, alias: str, shown: str) -> None:
    from django.db import connections

    with pytest.raises(ImproperlyConfigured) as error:
        connections[alias].ensure_connection()
    assert str(error.value).startswith(
        f"DATABASES[{alias!r}]: OPTIONS['pool'] needs CONN_MAX_AGE = 0, got {shown}.")


def test_an_unknown_pool_key_is_refused_by_name(site: Site) -> None:
    from django.db import connections

    with pytest.raises(ImproperlyConfigured) as error:
        connections["typo"].ensure_connection()
    message = str(error.value)
    assert message.startswith("DATABASES['typo']: unknown keys in OPTIONS['pool']: 'max_size' "
                              "(psycopg_pool's name: use 'maxconn'), 'nope'. Valid keys: "
                              "minconn, maxconn, idle_timeout, timeout,")
    assert message.endswith(", name, instrument")


def test_pool_settings_defaults_and_health_checks() -> None:
    from psycopg2_pool.django.pools import pool_settings

    def settings(pool: Any, **more: Any) -> Any:
        return pool_settings("x", {"OPTIONS": {"pool": pool}, "CONN_MAX_AGE": 0, **more})

    assert settings(True).kwargs == {"minconn": 1, "maxconn": 10, "timeout": 10.0}
    assert settings(True).instrument is None
    assert settings({"minconn": 20}).kwargs["maxconn"] == 20
    assert settings(True, CONN_HEALTH_CHECKS=True).kwargs["check_idle_after"] == 0
    assert settings({"check_idle_after": 5}, CONN_HEALTH_CHECKS=True).kwargs[
        "check_idle_after"] == 5
    assert settings({"instrument": True}).instrument == {}
    with pytest.raises(ImproperlyConfigured, match=r"must be True or a dict"):
        settings(4)


def test_every_pool_argument_is_a_valid_key() -> None:
    """The backend takes every ConnectionPool argument but the connection's own (from
    Django's settings) and close_returns (it returns connections itself)."""
    from psycopg2_pool.django.pools import POOL_ARGUMENTS

    parameters = inspect.signature(ConnectionPool.__init__).parameters
    named = [name for name, p in parameters.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name != "self"]
    assert set(named) - {"close_returns"} == set(POOL_ARGUMENTS)


# -- CONN_HEALTH_CHECKS ------------------------------------------------------------------------

def kill(admin: Any, pid: int) -> None:
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            cur.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
            if cur.fetchone() is None:
                return
            time.sleep(0.01)
    raise AssertionError(f"backend {pid} still there")


def test_health_checks_skip_a_backend_killed_between_requests(site: Site, admin: Any) -> None:
    first = get(site, "/pid/checked/")["pid"]
    settle(pool_of("checked"))
    kill(admin, first)
    second = get(site, "/pid/checked/")["pid"]  # no error: the dead one was not handed out
    assert second != first
    assert settle(pool_of("checked"))["discarded_failed_check"] == 1


def test_without_health_checks_the_killed_backend_fails_one_request(site: Site,
                                                                    admin: Any) -> None:
    """The other side of the test above: CONN_HEALTH_CHECKS is what spares the request."""
    first = get(site, "/pid/unchecked/")["pid"]
    settle(pool_of("unchecked"))
    kill(admin, first)
    with pytest.raises(urllib.error.HTTPError) as error:
        get(site, "/pid/unchecked/")
    assert error.value.code == 500
    assert get(site, "/pid/unchecked/")["pid"] != first  # the broken one was discarded


# -- Django's session setup: once per new connection -----------------------------------------

def test_session_setup_runs_once_per_connection(site: Site) -> None:
    """TIME_ZONE, OPTIONS['assume_role'] and OPTIONS['isolation_level'] are set on each new
    connection, then OPTIONS['pool']['configure'] runs; a checkout of an open one sends
    nothing of them again (settings changed by the previous user stay), and Django's
    transactions still get the isolation level."""
    from django.db import connections, transaction

    connection = connections["setup"]

    def session() -> tuple[int, str, str, str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid(), current_setting('TimeZone'), current_user,"
                           " current_setting('default_transaction_isolation')")
            row = cursor.fetchone()
        return row[0], row[1], row[2], row[3]

    pid, *setup = session()
    assert setup == ["Asia/Kathmandu", site.role, "serializable"]
    with connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'UTC'")
        cursor.execute("SET default_transaction_isolation = 'read committed'")
    connection.close()
    assert session() == (pid, "UTC", site.role, "read committed")  # not set up again
    with transaction.atomic(using="setup"), connection.cursor() as cursor:
        cursor.execute("SHOW transaction_isolation")  # psycopg2's BEGIN names the level
        assert cursor.fetchone()[0] == "serializable"
    connection.close()
    pool_of("setup").clear()  # the next checkout opens a new connection
    new_pid, *setup = session()
    assert new_pid != pid and setup == ["Asia/Kathmandu", site.role, "serializable"]
    connection.close()
    # Once per connection opened (a refill after clear() may have opened one more).
    assert CONFIGURED[0] == (pid, "Asia/Kathmandu") and (new_pid, "Asia/Kathmandu") in CONFIGURED
    assert {zone for _, zone in CONFIGURED} == {"Asia/Kathmandu"}
    assert len(CONFIGURED) == len({p for p, _ in CONFIGURED}) == settle(pool_of("setup"))[
        "connections_num"]


# -- instrument() from the settings ------------------------------------------------------------

def test_instrument_from_settings_records_metrics(site: Site) -> None:
    from telemetry import instrumentation, names

    for _ in range(5):
        get(site, "/count/instrumented/")
    pool = pool_of("instrumented")
    settle(pool)
    handle = instrumentation(pool)
    assert handle is not None
    handle.flush()
    metrics = site.otel.metrics()
    assert point(metrics[names.USE_TIME], {names.POOL_NAME: pool.name}).count >= 5
    assert point(metrics[names.MAX], {names.POOL_NAME: pool.name}).value == 2


def test_instrument_from_settings_traces_checkouts_in_a_request(site: Site) -> None:
    """Inside a trace (a request's span, from the WSGI or Django instrumentation), a checkout
    worth a look, here one that waits for a new connection, has its getconn span as a child
    of the request's: no code beyond the settings."""
    from django.db import connections

    from telemetry import names

    settle(pool_of("instrumented"))
    pool_of("instrumented").drain()  # nothing idle: the checkout waits for an open
    tracer = site.otel.tracer_provider.get_tracer("tests")
    with tracer.start_as_current_span("GET /orders/") as request:
        with connections["instrumented"].cursor() as cursor:
            cursor.execute("SELECT 1")
        connections["instrumented"].close()
    spans = site.otel.spans(names.SPAN_GETCONN)
    ours = [span for span in spans
            if span.parent is not None and span.parent.span_id == request.context.span_id]
    assert len(ours) == 1, spans
    assert ours[0].attributes[names.POOL_NAME] == pool_of("instrumented").name
    assert ours[0].attributes[names.SPAN_OUTCOME] == "acquired"
    assert ours[0].attributes[names.SPAN_WAITED] is True


def line_of(marker: str) -> int:
    for number, line in enumerate(VIEWS.read_text().splitlines(), start=1):
        if line.rstrip().endswith(f"# {marker}"):
            return number
    raise AssertionError(f"no line marked {marker}")


def test_a_leak_report_names_the_view_line(site: Site) -> None:
    """A view that keeps its connection past the leak threshold (0.3 s) is reported, with
    the line of the view that took it: 20-odd frames of Django's (render(), the template,
    the queryset) above the checkout, within the leak detector's MAX_FRAMES."""
    from structlog.testing import capture_logs

    from telemetry import instrumentation
    from telemetry.stacks import MAX_FRAMES
    from tests.frameworks.djangoapp import views

    views.RELEASE.clear()
    expected = f"{os.path.relpath(VIEWS)}:{line_of('LEAK: here')} in hold"
    pool = pool_of("instrumented")
    with capture_logs() as logs, ThreadPoolExecutor(1) as worker:
        response = worker.submit(urllib.request.urlopen, site.url + "/hold/instrumented/",
                                 timeout=20)
        try:
            handle = instrumentation(pool)
            assert handle is not None
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not any(
                    leak.reported for leak in handle.leaks()):
                time.sleep(0.05)
            (leak,) = handle.leaks()
            assert leak.reported and leak.site == expected
            (checkout,) = pool.checkouts()
            codes = checkout.stack[::2]  # (code, offset, ...), from get_new_connection up
            depth = codes.index(views.hold.__code__) + 1
            assert 20 < depth <= MAX_FRAMES  # deeper than the detector's former 20 frames
        finally:
            views.RELEASE.set()
        assert response.result(timeout=10).status == 200
    reports = [e for e in logs if e["event"] == "connection_leak_suspected"]
    assert [e["site"] for e in reports] == [expected]
    assert settle(pool)["pool_in_use"] == 0


# -- fork --------------------------------------------------------------------------------------

def test_a_forked_child_forgets_the_parents_connection(site: Site) -> None:
    """As under gunicorn --preload or Celery's prefork pool: the parent holds a connection
    when it forks. The child's Django connection starts empty, gets its own session, and
    closing every connection there (Celery does it in each new worker) touches nothing of the
    parent's, which still works."""
    from django.db import connections

    def pid() -> int:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return int(cursor.fetchone()[0])

    parent = pid()

    def in_the_child() -> Any:
        inherited = connections["default"].connection is None
        mine = pid()
        for connection in connections.all():
            connection.close()
        return [inherited, mine]

    inherited, mine = in_child(in_the_child)
    assert inherited is True and mine != parent
    assert pid() == parent  # the parent's session is intact
    connections["default"].close()


# -- in other processes ------------------------------------------------------------------------

def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=env)


SETUP = """
import sys, django
from django.conf import settings
from tests.frameworks.test_django import django_settings
db = django_settings(sys.argv[1])
db["OPTIONS"]["pool"] = True
settings.configure(DATABASES={"default": db}, INSTALLED_APPS=sys.argv[2:], USE_TZ=True)
django.setup()
from django.db import connection
"""

AT_EXIT = SETUP + """
class Closed:
    def on_close(self, event):
        print("pool closed, connections out:", event.in_use, flush=True)
with connection.cursor() as cursor:
    cursor.execute("SELECT 1")
connection.pool.add_listener(Closed())
print("exiting with the connection out:", connection.pool.get_stats()["pool_in_use"])
"""


def test_the_pool_is_closed_at_exit(dsn: str) -> None:
    """At exit the exiting thread's connection goes back, then every pool is closed."""
    result = run(AT_EXIT, dsn)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["exiting with the connection out: 1",
                                          "pool closed, connections out: 0"]


NO_DJANGO = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "django" or name.startswith("django."):
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, Block())
import psycopg2_pool
print(sorted(m for m in sys.modules if m == "django" or m.startswith("django.")))
"""


def test_the_pool_needs_no_django() -> None:
    result = run(NO_DJANGO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


DRIVER = SETUP + """
with connection.cursor() as cursor:
    cursor.execute("SELECT 1")
from django.db.backends.postgresql.base import DatabaseWrapper as Stock
print(connection.Database.__name__, type(connection.connection).__module__,
      Stock.Database.__name__)
"""


@pytest.mark.slow  # two Django start-ups in subprocesses
def test_django_contrib_postgres_needs_the_app_listed_first(dsn: str) -> None:
    """With psycopg 3 installed, django.contrib.postgres loads Django's PostgreSQL backend
    on psycopg 3 as Django starts: the backend says what to do, and with
    'psycopg2_pool.django' listed first, Django's backend is on psycopg2."""
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed: Django uses psycopg2")
    refused = run(DRIVER, dsn, "django.contrib.postgres")
    assert refused.returncode == 1
    assert "Put 'psycopg2_pool.django' in INSTALLED_APPS before 'django.contrib.postgres'" \
        in refused.stderr
    works = run(DRIVER, dsn, "psycopg2_pool.django", "django.contrib.postgres")
    assert works.returncode == 0, works.stderr
    # Django's backend is on psycopg2 for the process: the stock engine's wrapper too.
    assert works.stdout.split() == ["psycopg2", "psycopg2_pool.connection", "psycopg2"]
