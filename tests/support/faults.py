"""Real faults for the reliability tests: a server of their own to restart, stop and fill up,
and a loopback TCP proxy that can stop forwarding (a hung network path)."""

from __future__ import annotations

import contextlib
import selectors
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest


class OwnServer:
    """An embedded PostgreSQL (pgserver) that only these tests use, so that they may restart
    and stop it for real without disturbing the rest of the suite."""

    def __init__(self) -> None:
        pgserver = pytest.importorskip(
            "pgserver", reason="restarting a server needs pgserver (an embedded PostgreSQL)")
        self._pgserver = pgserver
        self.pgdata = Path(tempfile.mkdtemp(prefix="psycopg2-pool-faults-"))
        self.server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        self.uri: str = self.server.get_uri()
        info = psycopg2.extensions.parse_dsn(self.uri)
        self.socket_path = str(Path(info["host"]) / f".s.PGSQL.{info.get('port', 5432)}")
        self.user: str = info.get("user", "postgres")
        self.dbname: str = info.get("dbname", "postgres")

    def pg_ctl(self, *args: str) -> None:
        self._pgserver.pg_ctl(["-w", *args], pgdata=self.pgdata, user=self.server.system_user,
                              timeout=60)

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session is terminated; returns once it accepts."""
        self.pg_ctl("-m", "fast", "restart")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        """Start again as pgserver did: no TCP, the same socket directory."""
        socket_dir = str(Path(self.socket_path).parent)
        self.pg_ctl("-o", f'-h "" -k {socket_dir}', "-l", str(self.pgdata / "log"), "start")

    def start_timed(self) -> tuple[float, float, float]:
        """:meth:`start`, timed: (when it began, when a probe first connected, when pg_ctl
        returned). The probe tries every 5 ms: pg_ctl -w itself polls, and returns later."""
        accepted: list[float] = []
        done = threading.Event()

        def probe() -> None:
            while not done.is_set():
                try:
                    psycopg2.connect(self.uri, connect_timeout=2).close()
                except psycopg2.OperationalError:
                    time.sleep(0.005)
                    continue
                accepted.append(time.monotonic())
                return

        thread = threading.Thread(target=probe, daemon=True)
        began = time.monotonic()
        thread.start()
        self.start()
        returned = time.monotonic()
        thread.join(5)
        done.set()
        return began, accepted[0] if accepted else returned, returned

    def admin(self) -> Any:
        conn = psycopg2.connect(self.uri)
        conn.autocommit = True
        return conn

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.server.cleanup()
        shutil.rmtree(self.pgdata, ignore_errors=True)


class Proxy:
    """Forwards 127.0.0.1:<port> to the server's unix socket, until :meth:`hang`: from then on
    it accepts connections and reads nothing, like a network path that stopped answering
    (the kernel still acknowledges, so TCP keepalives see nothing wrong)."""

    def __init__(self, server: OwnServer) -> None:
        self.socket_path = server.socket_path
        self.user, self.dbname = server.user, server.dbname
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port: int = self.listener.getsockname()[1]
        self.hung = threading.Event()
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def dsn(self, **options: Any) -> str:
        extra = " ".join(f"{k}={v}" for k, v in options.items())
        return (f"host=127.0.0.1 port={self.port} user={self.user} dbname={self.dbname} "
                f"{extra}").strip()

    def hang(self) -> None:
        self.hung.set()

    def resume(self) -> None:
        self.hung.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.05):
                if key.fileobj is self.listener:
                    client, _ = self.listener.accept()
                    if self.hung.is_set():
                        self._held.append(client)  # accepted, never answered
                        continue
                    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    try:
                        upstream.connect(self.socket_path)
                    except OSError:  # the server is down: refuse, as the server would
                        upstream.close()
                        client.close()
                        continue
                    self._selector.register(client, selectors.EVENT_READ, upstream)
                    self._selector.register(upstream, selectors.EVENT_READ, client)
                elif not self.hung.is_set():
                    self._forward(key.fileobj, key.data)  # type: ignore[arg-type]
            if self.hung.is_set():
                time.sleep(0.01)  # readable sockets stay readable: do not spin

    def _forward(self, source: socket.socket, target: socket.socket) -> None:
        try:
            data = source.recv(65536)
            if data:
                target.sendall(data)
                return
        except OSError:
            pass
        for sock in (source, target):  # one side closed: close both
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        for sock in self._held:
            sock.close()
        self._selector.close()
