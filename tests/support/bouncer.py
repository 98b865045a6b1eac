"""A real PgBouncer on loopback, in front of the test server, for the scale-out tests.

Two pooled databases point at the same server database: ``app`` (``pool_size`` 2) and ``one``
(``pool_size`` 1, so that every client shares one server session: what transaction pooling
does to session state shows deterministically). Clients are not authenticated
(``auth_type = trust``, users ``app`` and ``admin``); PgBouncer logs in to the server as the
test DSN's user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from tests.support.system import free_port

POOL_SIZES = {"app": 2, "one": 1}



def _run_as(server_host: str) -> str | None:
    """PgBouncer refuses to run as root: as root, run it as the owner of the server's socket
    directory (pgserver's own system user, the only one allowed in), else as ``nobody``."""
    if os.geteuid() != 0:
        return None
    if server_host.startswith("/") and os.path.isdir(server_host):
        owner = pwd.getpwuid(os.stat(server_host).st_uid).pw_name
        if owner != "root":
            return owner
    return "nobody"


class Bouncer:
    """``pgbouncer`` started on 127.0.0.1 with transaction pooling; :meth:`close` stops it."""

    def __init__(self, binary: str, server_dsn: str) -> None:
        server = psycopg2.extensions.parse_dsn(server_dsn)
        dbname = server.get("dbname", "postgres")
        host = server.get("host", "localhost")
        target = " ".join(f"{key}={server[key]}" for key in ("host", "port", "user", "password")
                          if key in server)
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="psycopg2-pool-pgbouncer-"))
        user = _run_as(host)
        databases = "\n".join(f"{name} = {target} dbname={dbname} pool_size={size}"
                              for name, size in POOL_SIZES.items())
        (self.workdir / "pgbouncer.ini").write_text(f"""\
[databases]
{databases}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.workdir}/users.txt
pool_mode = transaction
max_client_conn = 200
server_check_delay = 0
query_wait_timeout = 5
logfile = {self.workdir}/pgbouncer.log
pidfile = {self.workdir}/pgbouncer.pid
admin_users = admin
""")
        (self.workdir / "users.txt").write_text('"app" ""\n"admin" ""\n')
        if user is not None:
            os.chmod(self.workdir, 0o755)
            os.chown(self.workdir, pwd.getpwnam(user).pw_uid, -1)
        command = [binary, *(["-u", user] if user else []), str(self.workdir / "pgbouncer.ini")]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._wait_until_listening()

    def _wait_until_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.process.returncode}: "
                                   f"{self.output()}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen within {timeout} s: {self.output()}")

    def output(self) -> str:
        log = self.workdir / "pgbouncer.log"
        return log.read_text()[-2000:] if log.exists() else ""

    def dsn(self, database: str = "app", **options: Any) -> str:
        extra = "".join(f" {key}={value}" for key, value in options.items())
        return f"host=127.0.0.1 port={self.port} dbname={database} user=app{extra}"

    def console(self) -> Any:
        """PgBouncer's admin console (``SHOW POOLS``, ``KILL``, ``RESUME``...)."""
        conn = psycopg2.connect(self.dsn("pgbouncer").replace("user=app", "user=admin"))
        conn.autocommit = True
        return conn

    def show(self, what: str, database: str) -> list[dict[str, Any]]:
        """Rows of ``SHOW <what>`` for one pooled database, as dicts."""
        with contextlib.closing(self.console()) as conn, conn.cursor() as cur:
            cur.execute(f"SHOW {what}")
            columns = [d[0] for d in cur.description]
            rows = [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
        return [row for row in rows if row["database"] == database]

    def command(self, sql: str) -> None:
        with contextlib.closing(self.console()) as conn, conn.cursor() as cur:
            cur.execute(sql)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
