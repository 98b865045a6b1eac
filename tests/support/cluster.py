"""Real servers in the roles a failover moves: a primary and its streaming-replication standby
(``pg_basebackup -R``, ``pg_ctl promote``, the same PostgreSQL binaries as pgserver's), a
primary fenced read-only, and writers that measure what the application sees meanwhile."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from tests.support.faults import OwnServer


def set_read_only(server: OwnServer, on: bool) -> None:
    """What a fenced primary (or an endpoint now pointing at a replica) looks like to a
    client: ``default_transaction_read_only`` set for every session, reloaded."""
    admin = server.admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f"ALTER SYSTEM SET default_transaction_read_only = {'on' if on else 'off'}")
            cur.execute("SELECT pg_reload_conf()")
    finally:
        admin.close()
    # The postmaster signals every backend; a reload is applied within milliseconds.
    time.sleep(0.05)


def socket_dir(server: OwnServer) -> str:
    return str(Path(server.socket_path).parent)


def port_of(server: OwnServer) -> str:
    return server.socket_path.rsplit(".", 1)[1]


def multi_host_dsn(servers: list[Any], **options: Any) -> str:
    """``host=a,b port=pa,pb ...``: libpq tries them in order (unix socket directories)."""
    hosts = ",".join(s.socket_dir for s in servers)
    ports = ",".join(s.port for s in servers)
    user, dbname = servers[0].user, servers[0].dbname
    extra = " ".join(f"{k}={v}" for k, v in options.items())
    return f"host={hosts} port={ports} user={user} dbname={dbname} {extra}".strip()


class Node:
    """A server of a replicated cluster: ``socket_dir``, ``port``, ``user``, ``dbname``, and
    the pg_ctl of pgserver's binaries."""

    def __init__(self, pgdata: Path, socket_dir: str, port: str, user: str, dbname: str,
                 system_user: str | None) -> None:
        import pgserver

        self._pgserver = pgserver
        self.pgdata = pgdata
        self.socket_dir = socket_dir
        self.port = port
        self.user, self.dbname = user, dbname
        self.system_user = system_user

    @property
    def dsn(self) -> str:
        return f"host={self.socket_dir} port={self.port} user={self.user} dbname={self.dbname}"

    def pg_ctl(self, *args: str) -> None:
        self._pgserver.pg_ctl(["-w", *args], pgdata=self.pgdata, user=self.system_user,
                              timeout=60)

    def start(self) -> None:
        self.pg_ctl("-o", f'-h "" -k {self.socket_dir} -p {self.port}', "-l",
                    str(self.pgdata / "log"), "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "stop")

    def promote(self) -> None:
        self.pg_ctl("promote")

    def admin(self) -> Any:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        return conn

    def in_recovery(self) -> bool:
        return bool(ask(self, "SELECT pg_is_in_recovery()"))


def ask(node: Any, sql: str, *params: Any) -> Any:
    """The first column of the first row of ``sql`` on ``node`` (anything with ``admin()``),
    on a connection of its own."""
    conn = node.admin()
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0]
    finally:
        conn.close()


def has_table(node: Any, table: str) -> bool:
    """Whether ``table`` exists on ``node`` (replicated there yet)."""
    return bool(ask(node, "SELECT to_regclass(%s) IS NOT NULL", table))


def node_of(own: OwnServer) -> Node:
    """An :class:`OwnServer` as a :class:`Node` (its socket directory and port)."""
    return Node(own.pgdata, socket_dir(own), port_of(own), own.user, own.dbname,
                own.server.system_user)


class Replicated:
    """A primary (an :class:`OwnServer`) and ``standbys`` streaming standbys made with
    ``pg_basebackup -R`` from the same binaries; each on a unix socket of its own."""

    def __init__(self, standbys: int = 1) -> None:
        self.primary_server = OwnServer()
        own = self.primary_server
        self.primary = node_of(own)
        self.root = Path(tempfile.mkdtemp(prefix="psycopg2-pool-standby-"))
        self.standbys = [self._standby(i) for i in range(standbys)]
        self.standby = self.standbys[0]

    def _standby(self, i: int) -> Node:
        own = self.primary_server
        system_user = own.server.system_user
        base = self.root / f"standby{i}"
        standby_dir, standby_socket = base / "pgdata", base / "run"
        standby_socket.mkdir(parents=True)
        if system_user:
            for path in (self.root, base, standby_socket):
                shutil.chown(path, user=system_user)
        bin_dir = Path(own._pgserver.__file__).parent / "pginstall" / "bin"
        command = [str(bin_dir / "pg_basebackup"), "-D", str(standby_dir), "-R",
                   "-X", "stream", "-c", "fast", "-h", self.primary.socket_dir,
                   "-p", self.primary.port, "-U", own.user]
        _run(command, system_user)
        standby = Node(standby_dir, str(standby_socket), str(5433 + i), own.user, own.dbname,
                       system_user)
        with open(standby_dir / "postgresql.auto.conf", "a") as conf:
            conf.write("hot_standby = on\n")
        standby.start()
        return standby

    def close(self) -> None:
        for node in (*self.standbys, self.primary):
            with contextlib.suppress(Exception):
                node.stop("immediate")
        self.primary_server.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def rejoin_as_standby(self, old: Node, new: Node) -> None:
        """The old primary, stopped cleanly before the promotion, follows the new one."""
        (old.pgdata / "standby.signal").touch()
        with open(old.pgdata / "postgresql.auto.conf", "a") as conf:
            conf.write(f"primary_conninfo = 'host={new.socket_dir} port={new.port} "
                       f"user={new.user}'\n")
        old.start()


def _run(command: list[str], system_user: str | None) -> None:
    if system_user and os.geteuid() == 0:
        command = ["su", "-s", "/bin/sh", system_user, "-c", " ".join(command)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


@dataclass
class Write:
    at: float  #: monotonic time the write ended
    ok: bool
    who: str | None  #: which server took it (the table's default), None on failure
    getconn_failed: bool = False
    error: str = ""


@dataclass
class Writers:
    """``threads`` threads each writing (INSERT ... RETURNING who; commit) through ``pool``
    until stopped; every outcome recorded with its time. ``getconn(timeout)`` and
    ``putconn(conn)`` default to the pool's own (a peer's adapter may be given instead)."""

    pool: Any
    table: str
    threads: int = 8
    timeout: float = 10.0
    getconn: Callable[[float], Any] | None = None
    putconn: Callable[[Any], None] | None = None
    writes: list[Write] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(30)

    def _record(self, write: Write) -> None:
        with self._lock:
            self.writes.append(write)

    def _run(self, i: int) -> None:
        pool = self.pool
        getconn = self.getconn or (lambda timeout: pool.getconn(timeout=timeout))
        putconn = self.putconn or pool.putconn
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                conn = getconn(self.timeout)
            except Exception as exc:  # noqa: BLE001 - measured
                self._record(Write(time.monotonic(), False, None, True, repr(exc)))
                continue
            try:
                cur = conn.cursor()
                cur.execute(f"INSERT INTO {self.table} (v) VALUES (%s) RETURNING who",
                            (f"{i}-{n}",))
                who = cur.fetchone()[0]
                cur.close()
                conn.commit()
                self._record(Write(time.monotonic(), True, who))
            except Exception as exc:  # noqa: BLE001 - psycopg2's or a peer's driver's
                code = getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)
                self._record(Write(time.monotonic(), False, None, False,
                                   f"{type(exc).__name__} {code}"))
            finally:
                try:
                    putconn(conn)
                except Exception as exc:  # noqa: BLE001 - a peer may refuse a broken one
                    self._record(Write(time.monotonic(), False, None, False,
                                       f"putconn: {type(exc).__name__}"))
            time.sleep(0.002)

    def failed(self, after: float = 0.0) -> list[Write]:
        return [w for w in self.writes if not w.ok and w.at >= after]

    def first_ok(self, after: float, who: str | None = None) -> float | None:
        times = [w.at for w in self.writes
                 if w.ok and w.at >= after and (who is None or w.who == who)]
        return min(times, default=None)


def make_table(conn: Any, table: str, who: str | None = None) -> None:
    """A table whose ``who`` column says which server took a row: ``who``, or the server's
    port (what tells the nodes of a replicated cluster apart)."""
    default = "current_setting('port')" if who is None else "%s"
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {table} (v text, who text DEFAULT {default})",
                    () if who is None else (who,))


@contextlib.contextmanager
def running(writers: Writers) -> Iterator[Writers]:
    writers.start()
    try:
        yield writers
    finally:
        writers.stop()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
