"""Frameworks, side by side (issue 25): requests per second and server sessions opened.

- Django: the site in benchmarks/djangosite (a view reading a product and its five latest
  orders; one request in ``--write-every`` also places an order in a transaction), served by
  gunicorn (``--workers`` x ``--threads``, gthread, a new server per variant per round, the
  same settings but ``DATABASES``), driven by ``--clients`` client threads over keep-alive
  HTTP for ``--seconds`` after a ``--warmup``. Variants: ``psycopg2_pool.django``; Django's
  stock backend with ``CONN_MAX_AGE = 0`` and ``= 60``; django-db-connection-pool
  (SQLAlchemy's ``QueuePool`` under Django); each pool sized ``--threads`` per worker, health
  checks off; then the same with each one's per-checkout check on (``CONN_HEALTH_CHECKS``,
  ``PRE_PING``). Every variant runs on psycopg2 (djangosite/settings.py says how).
- SQLAlchemy: the same two tables mapped with the ORM, a ``Session`` per request (the same
  reads, the same write), ``--clients`` threads in this process: the recipe of
  docs/frameworks.md (``creator=pool.getconn``, ``NullPool``, a ``ConnectionPool`` with
  ``close_returns=True``) against SQLAlchemy's own ``QueuePool``, both of ``--threads`` x
  ``--workers`` connections on psycopg2; bare, and with a check per checkout
  (``check_idle_after=0`` against ``pool_pre_ping=True``).

Sessions opened: ``pg_stat_database.sessions`` of the benchmark's own database
(``psycopg2_pool_frameworks``, made on the server; PostgreSQL 14 or later), read before a
variant's server (or engine) starts and after it has stopped and every one of its server
processes has exited (a backend counts its session in the statistics at latest as it
exits), so the figure covers the variant's whole run, warm-up included, and is exact:
nothing else connects to that database meanwhile. Read beside the requests the run served:
Django's stock backend with ``CONN_MAX_AGE = 0`` opens one per request.

CPU per request, from ``/proc`` over the measured window (a server on this machine): the
application's (gunicorn's master and workers; for SQLAlchemy, this process) and the
server's (the postmaster, its live children and those it has reaped).

Each round runs every variant once, in a new shuffled order; the tables give medians over
rounds and ratios of the same run (absolute figures on a shared 2-core VM are noise).

    python3 benchmarks/frameworks.py                 # ~9 minutes; writes results/frameworks.md
    python3 benchmarks/frameworks.py --quick         # a smoke run, ~30 s
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import http.client
import importlib.util
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, TypeVar

from common import ROOT, server
from sqlalchemy import ForeignKey, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

BENCHMARKS = ROOT / "benchmarks"
PRODUCTS = 1000

OURS = "psycopg2_pool.django"
STOCK0 = "stock, CONN_MAX_AGE=0"
STOCK60 = "stock, CONN_MAX_AGE=60"
DJ_DB = "django-db-connection-pool"
CHECKED = " + health checks"
SA_OURS = "recipe: ConnectionPool + NullPool"
SA_QUEUE = "QueuePool"
SA_CHECKED = " + check per checkout"

SCHEMA = f"""
DROP TABLE IF EXISTS bench_order, bench_product;
CREATE TABLE bench_product (
    id bigserial PRIMARY KEY,
    name varchar(100) NOT NULL,
    price numeric(10, 2) NOT NULL,
    stock integer NOT NULL);
CREATE TABLE bench_order (
    id bigserial PRIMARY KEY,
    product_id bigint NOT NULL REFERENCES bench_product (id),
    quantity integer NOT NULL,
    created timestamptz NOT NULL);
CREATE INDEX bench_order_product ON bench_order (product_id, id);
INSERT INTO bench_product (name, price, stock)
    SELECT 'product ' || i, (i % 100) + 0.99, 1000000 FROM generate_series(1, {PRODUCTS}) i;
INSERT INTO bench_order (product_id, quantity, created)
    SELECT 1 + i % {PRODUCTS}, 1, now() FROM generate_series(1, {PRODUCTS * 5}) i;
ANALYZE;
"""


# -- the server's books ---------------------------------------------------------------------

class Monitor:
    """One connection of its own, open for the whole run: sessions opened so far in the
    database, and the other client sessions now."""

    def __init__(self, dsn: str) -> None:
        import psycopg2

        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True  # each read its own transaction: fresh statistics
        self.sessions()
        self.ignored: list[int] = []
        self.ignored = self.others()  # already open (a test suite's): not the variants'
        # A backend adds its own session to the statistics when it first reports them
        # (going idle, at most once a second) or as it exits: let this one report its own
        # now, so that it is never counted in a variant's difference.
        time.sleep(1.2)
        with self.conn.cursor() as cur:
            cur.execute("SELECT 1")
        time.sleep(0.1)

    def sessions(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = "
                        "current_database()")
            row = cur.fetchone()
        assert row is not None and row[0] is not None, "PostgreSQL 14 or later is needed"
        return int(row[0])

    def others(self) -> list[int]:
        """Every other client backend's pid in this database, but those open at the start."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = "
                        "'client backend' AND datname = current_database() AND "
                        "pid <> pg_backend_pid() AND NOT pid = ANY(%s)", [self.ignored])
            return [row[0] for row in cur.fetchall()]

    def settled(self, timeout: float = 20.0) -> int:
        """Sessions opened so far, once every other client backend has exited."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.others()
            if not pids:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server sessions still open: {pids}")
            time.sleep(0.05)
        # A backend leaves pg_stat_activity just before it writes its last statistics;
        # wait for the total to stop moving.
        last = self.sessions()
        for _ in range(100):
            time.sleep(0.1)
            now = self.sessions()
            if now == last:
                return now
            last = now
        return last

    @contextlib.contextmanager
    def peak(self, dsn: str) -> Iterator[list[int]]:
        """The most other client sessions seen at once (sampled every 20 ms) in the block, in
        the list yielded (its one item, once the block ends)."""
        import psycopg2

        most = [0]
        stop = threading.Event()
        conn = psycopg2.connect(dsn)
        conn.autocommit = True

        def sample() -> None:
            with conn.cursor() as cur:
                while not stop.wait(0.02):
                    cur.execute("SELECT count(*) - 1 FROM pg_stat_activity WHERE "
                                "backend_type = 'client backend' AND datname = "
                                "current_database() AND NOT pid = ANY(%s)",
                                [[self.conn.info.backend_pid, *self.ignored]])
                    row = cur.fetchone()
                    most[0] = max(most[0], row[0] if row else 0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield most
        finally:
            stop.set()
            sampler.join()
            conn.close()


DATABASE = "psycopg2_pool_frameworks"


def own_database(dsn: str) -> str:
    """A DSN for a database of the benchmark's own on the server (made if missing), so that
    its session count holds nothing but the variants' sessions; the DSN itself where the
    role may not create one."""
    import psycopg2
    import psycopg2.extensions

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE])
            if cur.fetchone() is None:
                cur.execute(f"CREATE DATABASE {DATABASE}")
    except psycopg2.Error as exc:
        print(f"using the DSN's own database: cannot create {DATABASE}: {exc}".strip())
        return dsn
    finally:
        conn.close()
    return psycopg2.extensions.make_dsn(dsn, dbname=DATABASE)


def prepare(dsn: str) -> None:
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(SCHEMA)
    conn.close()


# -- load ------------------------------------------------------------------------------------

@dataclass
class Tally:
    """One variant's run: requests completed in the measured window, errors (an exception
    or a status other than 200) there, and the whole run's requests (warm-up included)."""

    requests: int = 0
    errors: int = 0
    total: int = 0
    seconds: float = 0.0
    app_cpu: float | None = None  #: CPU seconds in the window: the application's processes
    server_cpu: float | None = None  #: and the server's (postmaster, backends, workers)
    latencies: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def add(self, other: Tally) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.total += other.total
        self.latencies += other.latencies
        self.error_samples += other.error_samples[:3]


def load(request: Callable[[random.Random, bool], None], clients: int, warmup: float,
         seconds: float, write_every: int, cpu: Callable[[], tuple[float, float]] | None = None
         ) -> Tally:
    """``clients`` threads calling ``request(rng, write)`` back to back for ``warmup`` then
    ``seconds`` seconds; the window's completions and latencies are counted, and every
    error. ``cpu()``, read as the window opens and as it closes, gives (the application's,
    the server's) CPU seconds so far."""
    tallies = [Tally() for _ in range(clients)]
    barrier = threading.Barrier(clients + 2)
    window: list[float] = []
    used: list[tuple[float, float]] = []

    def client(index: int, tally: Tally) -> None:
        rng = random.Random(index)
        done = 0
        clock = time.perf_counter
        barrier.wait()
        start, end = window
        while True:
            began = clock()
            if began >= end:
                break
            failure = None
            try:
                request(rng, write_every > 0 and done % write_every == write_every - 1)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                failure = f"{type(exc).__name__}: {exc}"[:300]
            finished = clock()
            done += 1
            tally.total += 1
            if failure is not None:
                tally.errors += 1
                if len(tally.error_samples) < 3:
                    tally.error_samples.append(failure)
            if began >= start and finished <= end:
                tally.requests += 1
                tally.latencies.append(finished - began)

    def meter() -> None:
        barrier.wait()
        for moment in window:
            time.sleep(max(0.0, moment - time.perf_counter()))
            if cpu is not None:
                used.append(cpu())

    threads = [threading.Thread(target=client, args=(i, t), daemon=True)
               for i, t in enumerate(tallies)]
    threads.append(threading.Thread(target=meter, daemon=True))
    for thread in threads:
        thread.start()
    now = time.perf_counter()
    window[:] = [now + warmup, now + warmup + seconds]
    barrier.wait()
    for thread in threads:
        thread.join()
    result = Tally(seconds=seconds)
    for tally in tallies:
        result.add(tally)
    if len(used) == 2:
        (app0, server0), (app1, server1) = used
        result.app_cpu, result.server_cpu = app1 - app0, server1 - server0
    return result


# -- CPU, from /proc (Linux; a server on this machine) -----------------------------------------

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields from the state on (index 0: state, 1: ppid, 11-14: utime,
    stime, cutime, cstime)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid``, of its live descendants, and of those it has reaped (a
    PostgreSQL backend that exited is counted in the postmaster's children's time)."""
    total = 0
    for child in children(pid):
        with contextlib.suppress(OSError):  # exited meanwhile: in the parent's reaped time
            fields = _stat(child)
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    fields = _stat(pid)
    total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / TICKS


def postmaster(monitor: Monitor) -> int | None:
    """The server's postmaster pid when the server runs here (the monitor's backend is a
    local postgres process), else None."""
    backend = monitor.conn.info.backend_pid
    try:
        if Path(f"/proc/{backend}/comm").read_text().strip() != "postgres":
            return None
        return int(_stat(backend)[1])
    except (OSError, ValueError, IndexError):
        return None


class HTTPClient:
    """A keep-alive connection per client thread to the site (reopened after an error)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.pid = 0
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.local.conn = conn
        return conn

    def get(self, method: str, path: str) -> bytes:
        conn = self._conn()
        try:
            conn.request(method, path)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self.local.conn = None
            raise
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
        return body

    def request(self, rng: random.Random, write: bool) -> None:
        product = rng.randint(1, PRODUCTS)
        if write:
            self.get("POST", f"/product/{product}/order/")
        else:
            self.get("GET", f"/product/{product}/")


# -- Django ----------------------------------------------------------------------------------

@dataclass
class Variant:
    name: str
    database: dict[str, Any]


def django_variants(dsn: str, threads: int) -> list[Variant]:
    import psycopg2.extensions

    params = psycopg2.extensions.parse_dsn(dsn)
    base: dict[str, Any] = {
        "NAME": params.get("dbname", ""), "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""), "HOST": params.get("host", ""),
        "PORT": params.get("port", ""), "CONN_MAX_AGE": 0, "CONN_HEALTH_CHECKS": False,
    }
    stock = {**base, "ENGINE": "django.db.backends.postgresql"}
    ours = {**base, "ENGINE": "psycopg2_pool.django",
            "OPTIONS": {"pool": {"maxconn": threads}}}
    dj_db = {**base, "ENGINE": "dj_db_conn_pool.backends.postgresql",
             "POOL_OPTIONS": {"POOL_SIZE": threads, "MAX_OVERFLOW": 0, "PRE_PING": False}}
    found = [
        Variant(OURS, ours),
        Variant(STOCK0, stock),
        Variant(STOCK60, {**stock, "CONN_MAX_AGE": 60}),
        Variant(DJ_DB, dj_db),
        Variant(OURS + CHECKED, {**ours, "CONN_HEALTH_CHECKS": True}),
        Variant(STOCK60 + CHECKED, {**stock, "CONN_MAX_AGE": 60, "CONN_HEALTH_CHECKS": True}),
        Variant(DJ_DB + CHECKED, {**dj_db, "POOL_OPTIONS": {
            **dj_db["POOL_OPTIONS"], "PRE_PING": True}}),
    ]
    if importlib.util.find_spec("dj_db_conn_pool") is None:
        print(f"skipping {DJ_DB}: not installed (the `bench` extra has it)")
        found = [variant for variant in found if not variant.name.startswith(DJ_DB)]
    return found


def dj_db_version() -> str:
    try:
        return metadata.version("django-db-connection-pool")
    except metadata.PackageNotFoundError:
        return "not installed"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def site(variant: Variant, workers: int, threads: int) -> Iterator[HTTPClient]:
    """The site under gunicorn for ``variant``, ready (its driver checked) until the block
    ends; then stopped (SIGTERM, a graceful shutdown) and waited for."""
    port = free_port()
    env = {**os.environ, "FRAMEWORKS_BENCH_DATABASE": json.dumps(variant.database),
           "PYTHONPATH": os.pathsep.join(
               [str(ROOT), str(BENCHMARKS), *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--threads",
               str(threads), "--worker-class", "gthread", "--bind", f"127.0.0.1:{port}",
               "--keep-alive", "30", "--graceful-timeout", "10", "--log-level", "warning",
               "djangosite.wsgi"]
    process = subprocess.Popen(command, env=env, cwd=BENCHMARKS)
    try:
        client = HTTPClient(port)
        client.pid = process.pid  # gunicorn's master; its workers are its children
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited ({process.returncode}) for {variant.name}")
            try:
                report = json.loads(client.get("GET", "/driver/"))
                break
            except (OSError, http.client.HTTPException, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        if report["driver"] != "psycopg2" or report["psycopg3_loaded"]:
            raise RuntimeError(f"{variant.name} is not on psycopg2 alone: {report}")
        if not report["psycopg2_pool"].startswith(str(ROOT)):
            raise RuntimeError(f"psycopg2_pool not from this checkout: {report}")
        client.local = threading.local()  # the client threads open their own connections
        yield client
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- SQLAlchemy ------------------------------------------------------------------------------

class Base(DeclarativeBase):
    pass


class Product(Base):
    """The Django site's ``djangosite.models.Product``, mapped by SQLAlchemy's ORM."""

    __tablename__ = "bench_product"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    price: Mapped[Decimal]
    stock: Mapped[int]


class Order(Base):
    __tablename__ = "bench_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("bench_product.id"))
    quantity: Mapped[int]
    created: Mapped[datetime.datetime]


def orm_request(engine: Any, rng: random.Random, write: bool) -> None:
    """As the Django views: the product and its five latest orders; with ``write``, an order
    placed and the stock updated in the session's transaction, committed."""
    product_id = rng.randint(1, PRODUCTS)
    with Session(engine) as session:
        product = session.get(Product, product_id)
        assert product is not None
        recent = session.execute(
            select(Order.id, Order.quantity, Order.created)
            .where(Order.product_id == product_id).order_by(Order.id.desc()).limit(5)
        ).all()
        page = {"id": product.id, "name": product.name, "price": str(product.price),
                "stock": product.stock,
                "recent": [{"id": r.id, "quantity": r.quantity,
                            "created": r.created.isoformat()} for r in recent]}
        if write:
            session.add(Order(product_id=product_id, quantity=1,
                              created=datetime.datetime.now(datetime.UTC)))
            product.stock -= 1
            session.commit()
        json.dumps(page)


@dataclass
class Engine:
    name: str
    make: Callable[[str, int], tuple[Any, Callable[[], None]]]  #: (engine, close)


def sqlalchemy_variants() -> list[Engine]:
    import psycopg2
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from psycopg2_pool import ConnectionPool

    def recipe(check: bool) -> Callable[[str, int], tuple[Any, Callable[[], None]]]:
        def make(dsn: str, size: int) -> tuple[Any, Callable[[], None]]:
            pool = ConnectionPool(1, size, dsn=dsn, timeout=10, close_returns=True,
                                  check_idle_after=0 if check else None)
            engine = create_engine("postgresql+psycopg2://", creator=pool.getconn,
                                   poolclass=NullPool)

            def close() -> None:
                engine.dispose()
                pool.close()

            return engine, close
        return make

    def queue(pre_ping: bool) -> Callable[[str, int], tuple[Any, Callable[[], None]]]:
        def make(dsn: str, size: int) -> tuple[Any, Callable[[], None]]:
            engine = create_engine("postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn),
                                   pool_size=size, max_overflow=0, pool_timeout=10,
                                   pool_pre_ping=pre_ping)
            return engine, engine.dispose
        return make

    return [Engine(SA_OURS, recipe(False)), Engine(SA_QUEUE, queue(False)),
            Engine(SA_OURS + SA_CHECKED, recipe(True)),
            Engine(SA_QUEUE + SA_CHECKED, queue(True))]


# -- the run ---------------------------------------------------------------------------------

@dataclass
class Result:
    """One variant's runs, one per round."""

    rps: list[float] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)
    sessions: list[int] = field(default_factory=list)
    served: list[int] = field(default_factory=list)
    peak: list[int] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    app_cpu: list[float] = field(default_factory=list)  #: ms per request, per round
    server_cpu: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def record(self, tally: Tally, sessions: int, peak: int) -> None:
        self.rps.append(tally.rps)
        self.errors.append(tally.errors)
        self.sessions.append(sessions)
        self.served.append(tally.total)
        self.peak.append(peak)
        ordered = sorted(tally.latencies) or [0.0]
        self.p50.append(ordered[len(ordered) // 2] * 1000)
        self.p99.append(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000)
        self.error_samples += tally.error_samples[:2]
        if tally.app_cpu is not None and tally.server_cpu is not None and tally.requests:
            self.app_cpu.append(tally.app_cpu / tally.requests * 1000)
            self.server_cpu.append(tally.server_cpu / tally.requests * 1000)


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "n/a"


def measure(monitor: Monitor, dsn: str, run: Callable[[], Tally]) -> tuple[Tally, int, int]:
    """``run()`` with the server sessions it opened (and the most open at once) counted."""
    before = monitor.settled()
    with monitor.peak(dsn) as peak:
        tally = run()
    # The sampler's own session (closed above) is opened and closed inside the difference.
    return tally, monitor.settled() - before - 1, peak[0]


class Named(Protocol):
    name: str


N = TypeVar("N", bound=Named)


def in_rounds(variants: list[N], run: Callable[[N], Tally], match: list[str] | None,
              rounds: int, monitor: Monitor, dsn: str, seed: int) -> dict[str, Result]:
    """Each variant (those whose name contains a ``match``, if any) once per round, in an
    order shuffled each round (so that drift spreads over all), measured by :func:`measure`."""
    chosen = [v for v in variants if not match or any(text in v.name for text in match)]
    results = {v.name: Result() for v in chosen}
    for round_ in range(rounds):
        order = chosen[:]
        random.Random(seed + round_).shuffle(order)
        for variant in order:
            tally, opened, peak = measure(monitor, dsn, functools.partial(run, variant))
            results[variant.name].record(tally, opened, peak)
            print(f"  round {round_ + 1} {variant.name}: {tally.rps:,.0f} req/s, "
                  f"{tally.errors} errors, {opened} sessions for {tally.total} requests, "
                  f"at most {peak} at once", flush=True)
    return results


def table(results: dict[str, Result], names: list[str], baseline: str, peers: list[str],
          title: str) -> list[str]:
    names = [name for name in names if name in results]
    if not names:
        return []
    peers = [peer for peer in [baseline, *peers] if peer in results]
    lines = [f"### {title}", ""]
    header = ["variant", "requests/s"]
    header += [f"vs {peer}" for peer in peers]
    header += ["errors", "sessions opened", "requests served", "requests per session",
               "most sessions at once", "app CPU ms/request", "server CPU ms/request",
               "p50 ms", "p99 ms"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    median = {name: statistics.median(results[name].rps) for name in names}
    for name in names:
        result = results[name]
        cells = [name, f"{median[name]:,.0f}"]
        cells += [f"{median[name] / statistics.median(results[peer].rps):.2f}x"
                  for peer in peers]
        cells += [f"{sum(result.errors)}", _span(result.sessions), _span(result.served),
                  f"{sum(result.served) / max(1, sum(result.sessions)):,.2f}",
                  f"{max(result.peak)}", _ms(result.app_cpu), _ms(result.server_cpu),
                  f"{statistics.median(result.p50):.1f}", f"{statistics.median(result.p99):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    rounds = len(next(iter(results.values())).rps)
    lines.append(f"Requests/s, CPU and latencies: medians of {rounds} rounds (the measured "
                 f"window); ratios of those medians. Sessions opened and requests served: the "
                 f"fewest and most of a round, warm-up included; requests per session over "
                 f"all rounds. Errors: all rounds'.")
    for name in names:
        if results[name].error_samples:
            lines.append(f"- {name}, errors such as: `{results[name].error_samples[0]}`")
    lines.append("")
    return lines


def paired(results: dict[str, Result], mine: str, peer: str) -> str:
    if mine not in results or peer not in results:
        return f"{mine} / {peer}: not both run"
    ratios = sorted(a / b for a, b in zip(results[mine].rps, results[peer].rps, strict=True))
    return f"{mine} / {peer} per round: " + ", ".join(f"{r:.2f}" for r in ratios)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dsn", default=os.environ.get("PSYCOPG2_POOL_BENCH_DSN"),
                        help="a libpq DSN (default: an embedded PostgreSQL via pgserver); the "
                             f"run makes the database {DATABASE} there (or, if it may not, "
                             "uses the DSN's) with the tables bench_product and bench_order")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds: each runs every variant once, in a shuffled order")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="measured seconds per variant per round")
    parser.add_argument("--warmup", type=float, default=1.5,
                        help="seconds of load before measuring")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4,
                        help="gunicorn threads per worker, and each pool's size per worker")
    parser.add_argument("--clients", type=int, default=8,
                        help="client threads (Django: HTTP; SQLAlchemy: request threads)")
    parser.add_argument("--write-every", type=int, default=10,
                        help="one request in N places an order (0: reads only)")
    parser.add_argument("--only", choices=["django", "sqlalchemy"], default=None,
                        help="run one half (default: both)")
    parser.add_argument("--match", action="append", default=[], metavar="TEXT",
                        help="run only the variants whose name contains TEXT (repeatable)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 1 s")
    parser.add_argument("--output", type=Path,
                        default=BENCHMARKS / "results" / "frameworks.md",
                        help="the Markdown report ('-': print only)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 1.0, 0.5

    report: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        report.append(line)

    size = args.threads * args.workers
    with server(args.dsn) as server_dsn:
        dsn = own_database(server_dsn)
        prepare(dsn)
        monitor = Monitor(dsn)
        server_pid = postmaster(monitor)
        if server_pid is None:
            print("the server is not on this machine: no server CPU figures")

        def cpu(app: Callable[[], float]) -> Callable[[], tuple[float, float]] | None:
            if server_pid is None:
                return None
            pid = server_pid
            return lambda: (app(), tree_cpu(pid))
        import django
        import psycopg2
        import sqlalchemy

        say(f"# Frameworks ({datetime.date.today().isoformat()})")
        say()
        say(f"`python3 benchmarks/frameworks.py --rounds {args.rounds} --seconds {args.seconds} "
            f"--warmup {args.warmup} --workers {args.workers} --threads {args.threads} "
            f"--clients {args.clients} --write-every {args.write_every}`")
        say()
        version = monitor.conn.info.server_version
        say(f"{platform.platform()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, Django {django.get_version()}, gunicorn "
            f"{metadata.version('gunicorn')}, SQLAlchemy {sqlalchemy.__version__}, psycopg2 "
            f"{vars(psycopg2)['__version__'].split()[0]}, django-db-connection-pool "
            f"{dj_db_version()}, PostgreSQL "
            f"{version // 10000}.{version % 100}; server, gunicorn and clients on one "
            f"machine.")
        say()

        if args.only in (None, "django"):
            def run_site(variant: Variant) -> Tally:
                with site(variant, args.workers, args.threads) as client:
                    return load(client.request, args.clients, args.warmup, args.seconds,
                                args.write_every, cpu(lambda: tree_cpu(client.pid)))

            results = in_rounds(django_variants(dsn, args.threads), run_site, args.match,
                                args.rounds, monitor, dsn, seed=0)
            say(f"## Django: gunicorn {args.workers} workers x {args.threads} threads "
                f"(gthread), {args.clients} HTTP clients")
            say()
            say(f"Each pool holds up to {args.threads} connections per worker ({size} in "
                f"all): `OPTIONS['pool'] = {{'maxconn': {args.threads}}}`; "
                f"`POOL_OPTIONS = {{'POOL_SIZE': {args.threads}, 'MAX_OVERFLOW': 0}}`. One "
                f"request in {args.write_every} places an order (a transaction: INSERT, "
                f"UPDATE); the others read (two SELECTs).")
            say()
            plain = [OURS, STOCK0, STOCK60, DJ_DB]
            for line in table(results, plain, STOCK0, [STOCK60, DJ_DB],
                              "Health checks off (each backend's default but "
                              "django-db-connection-pool's, whose PRE_PING is on by default)"):
                say(line)
            checked = [OURS + CHECKED, STOCK60 + CHECKED, DJ_DB + CHECKED]
            for line in table(results, checked, STOCK60 + CHECKED, [DJ_DB + CHECKED],
                              "A check per checkout: CONN_HEALTH_CHECKS = True (ours, "
                              "stock), PRE_PING = True (django-db-connection-pool)"):
                say(line)
            for peer in (STOCK0, STOCK60, DJ_DB):
                say(f"- {paired(results, OURS, peer)}")
            say(f"- {paired(results, OURS + CHECKED, STOCK60 + CHECKED)}")
            say(f"- {paired(results, OURS + CHECKED, DJ_DB + CHECKED)}")
            say()

        if args.only in (None, "sqlalchemy"):
            def run_engine(variant: Engine) -> Tally:
                engine, close = variant.make(dsn, size)
                try:
                    return load(lambda rng, write: orm_request(engine, rng, write),
                                args.clients, args.warmup, args.seconds, args.write_every,
                                cpu(time.process_time))
                finally:
                    close()

            sa_results = in_rounds(sqlalchemy_variants(), run_engine, args.match, args.rounds,
                                   monitor, dsn, seed=100)
            say(f"## SQLAlchemy: ORM, a Session per request, {args.clients} threads in one "
                f"process, {size} connections")
            say()
            for line in table(sa_results, [SA_OURS, SA_QUEUE], SA_QUEUE, [],
                              "Bare (SQLAlchemy's defaults otherwise)"):
                say(line)
            for line in table(sa_results, [SA_OURS + SA_CHECKED, SA_QUEUE + SA_CHECKED],
                              SA_QUEUE + SA_CHECKED, [],
                              "A check per checkout: check_idle_after=0 against "
                              "pool_pre_ping=True"):
                say(line)
            say(f"- {paired(sa_results, SA_OURS, SA_QUEUE)}")
            say(f"- {paired(sa_results, SA_OURS + SA_CHECKED, SA_QUEUE + SA_CHECKED)}")
            say()
        monitor.conn.close()

    if str(args.output) != "-":
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(report) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
