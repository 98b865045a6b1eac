"""A real Patroni cluster on loopback: one etcd (3.4, the ``etcd3:`` API) and two Patroni
nodes (3.0.2, the Debian packages) running pgserver's PostgreSQL binaries, each in a temporary
directory of its own, with a small ttl/loop_wait so that a failover takes seconds.

Patroni (and so PostgreSQL, which refuses root) runs as the system user pgserver made
(``pgserver``) when the tests run as root; etcd runs as the current user. Every wait is
bounded, and a failed one says what the logs of Patroni, PostgreSQL and etcd ended with.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2

from tests.support.cluster import ask
from tests.support.system import free_port

#: Patroni's timing: the leader key lives ``TTL`` s unless renewed, which the leader does
#: every ``LOOP_WAIT`` s; a dead leader's key expires TTL s after its last renewal (so between
#: TTL - LOOP_WAIT and TTL s after the death, plus etcd's lease expiry check, every 0.5 s), and
#: the replica, which watches the key, acts at once. Patroni's rule of thumb,
#: loop_wait + 2 * retry_timeout <= ttl, holds (1 + 2 * 2 <= 5).
TTL, LOOP_WAIT, RETRY_TIMEOUT = 5, 1, 2

#: Whom Patroni and PostgreSQL run as, when we are root (pgserver's own user).
SYSTEM_USER = "pgserver"


def pg_bin_dir() -> Path:
    import pgserver

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


@dataclass
class PatroniNode:
    name: str
    dir: Path
    pg_port: int
    api_port: int
    config: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def pgdata(self) -> Path:
        return self.dir / "pgdata"

    @property
    def log(self) -> Path:
        return self.dir / "patroni.log"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.pg_port} user=postgres dbname=postgres"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def admin(self) -> Any:
        conn = psycopg2.connect(self.dsn, connect_timeout=3)
        conn.autocommit = True
        return conn

    def in_recovery(self) -> bool:
        return bool(ask(self, "SELECT pg_is_in_recovery()"))

    def postmaster_pid(self) -> int | None:
        """The postmaster's pid from ``postmaster.pid``, if that process is alive."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None


@dataclass
class PatroniCluster:
    """etcd and two Patroni nodes, ``nodes[0]`` bootstrapped first so that it is the first
    leader. Use :meth:`start` (returns once there is a leader and a streaming replica), then
    :meth:`close`."""

    scope: str = field(default_factory=lambda: f"pool-{uuid.uuid4().hex[:8]}")
    root: Path = field(default_factory=lambda: Path(
        tempfile.mkdtemp(prefix="psycopg2-pool-patroni-")))
    nodes: list[PatroniNode] = field(default_factory=list)
    etcd: subprocess.Popen[bytes] | None = None
    etcd_port: int = 0

    def __post_init__(self) -> None:
        self.user = SYSTEM_USER if os.geteuid() == 0 else None
        if self.user:
            from pgserver.utils import ensure_user_exists

            ensure_user_exists(self.user)  # what pgserver itself does (useradd) when root
        self.patroni_bin = shutil.which("patroni") or "/usr/bin/patroni"
        self.patronictl_bin = shutil.which("patronictl") or "/usr/bin/patronictl"
        self.etcd_bin = shutil.which("etcd") or "/usr/bin/etcd"
        self._chown(self.root)
        for i in range(2):
            node_dir = self.root / f"node{i}"
            node_dir.mkdir()
            self._chown(node_dir)
            node = PatroniNode(f"node{i}", node_dir, free_port(), free_port(),
                               node_dir / "patroni.yml")
            self.nodes.append(node)

    # -- the DSN's pieces --------------------------------------------------------------------

    @property
    def hosts(self) -> list[str]:
        return ["127.0.0.1" for _ in self.nodes]

    @property
    def ports(self) -> list[int]:
        return [n.pg_port for n in self.nodes]

    def dsn(self, **options: Any) -> str:
        """``host=127.0.0.1,127.0.0.1 port=P1,P2 user=postgres dbname=postgres ...``"""
        extra = " ".join(f"{k}={v}" for k, v in options.items())
        return (f"host={','.join(self.hosts)} port={','.join(map(str, self.ports))} "
                f"user=postgres dbname=postgres {extra}").strip()

    def node(self, name: str) -> PatroniNode:
        return next(n for n in self.nodes if n.name == name)

    # -- starting ----------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        self._start_etcd(timeout=15)
        first, second = self.nodes
        for node in self.nodes:
            self._write_config(node)
        self.start_node(first)
        # The second node bootstraps from the first by pg_basebackup: start it once the first
        # is the leader, so that the race for the initialize key is not part of every run.
        self.wait(lambda c: self._leader_of(c) == first.name, timeout, f"{first.name} to lead")
        self.start_node(second)
        self.wait_healthy(timeout)

    def _start_etcd(self, timeout: float) -> None:
        data = self.root / "etcd"
        self.etcd_port, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{peer}"
        command = [self.etcd_bin, "--name", "etcd0", "--data-dir", str(data),
                   "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                   "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                   "--initial-cluster", f"etcd0={peer_url}",
                   "--initial-cluster-state", "new", "--initial-cluster-token", self.scope]
        with open(self.root / "etcd.log", "wb") as log:
            self.etcd = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{client_url}/health", timeout=1) as r:
                    return bool(json.load(r).get("health") == "true")
            except (OSError, ValueError):
                return False

        self.wait_until(healthy, timeout, "etcd to be healthy")

    def _write_config(self, node: PatroniNode) -> None:
        trust = ["local all all trust", "host all all 127.0.0.1/32 trust",
                 "local replication all trust", "host replication all 127.0.0.1/32 trust"]
        config = {
            "scope": self.scope,
            "namespace": "/psycopg2-pool/",
            "name": node.name,
            "log": {"level": "INFO"},
            "restapi": {"listen": f"127.0.0.1:{node.api_port}",
                        "connect_address": f"127.0.0.1:{node.api_port}"},
            "etcd3": {"hosts": [f"127.0.0.1:{self.etcd_port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL, "loop_wait": LOOP_WAIT, "retry_timeout": RETRY_TIMEOUT,
                    "maximum_lag_on_failover": 1024 * 1024 * 1024,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {"wal_level": "replica", "hot_standby": "on",
                                       "wal_log_hints": "on", "max_wal_senders": 10,
                                       "max_replication_slots": 10,
                                       "wal_keep_size": "128MB"},
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "no-sync"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.pg_port}",
                "connect_address": f"127.0.0.1:{node.pg_port}",
                "data_dir": str(node.pgdata),
                "bin_dir": str(pg_bin_dir()),
                "pgpass": str(node.dir / "pgpass"),
                "authentication": {"superuser": {"username": "postgres"},
                                   "replication": {"username": "postgres"},
                                   "rewind": {"username": "postgres"}},
                "pg_hba": trust,
                "parameters": {
                    "unix_socket_directories": str(node.dir),
                    # A process crash (all this test makes) loses nothing without fsync.
                    "fsync": "off",
                    "logging_collector": "on",
                    "log_directory": str(node.dir / "pglog"),
                    "log_filename": "postgresql.log",
                    # What accepting_since() reads: millisecond times, in UTC.
                    "log_line_prefix": "%m [%p] ",
                    "log_timezone": "UTC",
                    "max_connections": 50,
                    "shared_buffers": "16MB",
                },
            },
            # No watchdog device here, and none wanted. safety_margin -1 (ttl / 2) only keeps
            # Patroni from warning every loop that ttl 5 leaves no room for one.
            "watchdog": {"mode": "off", "safety_margin": -1},
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
        }
        # YAML is a superset of JSON: no YAML writer needed.
        node.config.write_text(json.dumps(config, indent=2))
        self._chown(node.config)

    def start_node(self, node: PatroniNode) -> None:
        """Start (or start again) ``node``'s Patroni; it starts its PostgreSQL itself, as a
        replica of the current leader if there is one (after pg_rewind if need be)."""
        assert node.process is None or node.process.poll() is not None, f"{node.name} runs"
        node.starts += 1
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(node.dir),
               "PYTHONDONTWRITEBYTECODE": "1"}
        kwargs: dict[str, Any] = {}
        if self.user:
            entry = pwd.getpwnam(self.user)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        log = open(node.log, "ab")  # noqa: SIM115 - the child keeps it
        try:
            log.write(f"--- start {node.starts} ---\n".encode())
            log.flush()
            node.process = subprocess.Popen([self.patroni_bin, str(node.config)], stdout=log,
                                            stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, cwd=node.dir,
                                            start_new_session=True, **kwargs)
        finally:
            log.close()

    # -- looking -----------------------------------------------------------------------------

    def cluster(self) -> dict[str, Any] | None:
        """Patroni's ``GET /cluster`` from the first node whose REST API answers."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                with urllib.request.urlopen(f"{node.api}/cluster", timeout=1) as response:
                    found: dict[str, Any] = json.load(response)
                    return found
            except (OSError, ValueError):
                continue
        return None

    @staticmethod
    def _leader_of(cluster: dict[str, Any]) -> str | None:
        return next((m["name"] for m in cluster.get("members", [])
                     if m.get("role") == "leader" and m.get("state") == "running"), None)

    @staticmethod
    def _streaming_replicas(cluster: dict[str, Any]) -> list[str]:
        return [m["name"] for m in cluster.get("members", [])
                if m.get("role") in ("replica", "sync_standby")
                and m.get("state") in ("streaming", "running")]

    def leader(self) -> PatroniNode | None:
        found = self.cluster()
        name = found and self._leader_of(found)
        return self.node(name) if name else None

    def replica(self) -> PatroniNode:
        leader = self.leader()
        return next(n for n in self.nodes if n is not leader)

    def streaming(self, node: PatroniNode) -> bool:
        """``node`` streams from the leader (``pg_stat_replication`` on the leader says so)."""
        leader = self.leader()
        if leader is None or leader is node:
            return False
        try:
            conn = leader.admin()
        except psycopg2.Error:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_replication "
                            "WHERE application_name = %s AND state = 'streaming'", (node.name,))
                return bool(cur.fetchone()[0])
        finally:
            conn.close()

    def wait(self, condition: Any, timeout: float, what: str) -> dict[str, Any]:
        """Wait until ``condition(GET /cluster)`` holds; the cluster it held for."""
        seen: list[dict[str, Any]] = []

        def check() -> bool:
            found = self.cluster()
            if found is None:
                return False
            seen[:] = [found]
            return bool(condition(found))

        self.wait_until(check, timeout, what, lambda: f"last GET /cluster: {seen[:1]}")
        return seen[0]

    def wait_healthy(self, timeout: float) -> PatroniNode:
        """A running leader, and every other node streaming from it; the leader."""
        def healthy(c: dict[str, Any]) -> bool:
            leader = self._leader_of(c)
            others = [n.name for n in self.nodes if n.name != leader]
            return leader is not None and sorted(self._streaming_replicas(c)) == sorted(others)

        self.wait(healthy, timeout, "a leader and a streaming replica")
        leader = self.leader()
        assert leader is not None
        replica = next(n for n in self.nodes if n is not leader)
        self.wait_until(lambda: self.streaming(replica), timeout,
                   f"{replica.name} in the leader's pg_stat_replication")
        return leader

    # -- acting ------------------------------------------------------------------------------

    def patronictl(self, *args: str, timeout: float = 60) -> str:
        node = self.nodes[0]
        result = subprocess.run([self.patronictl_bin, "-c", str(node.config), *args],
                                capture_output=True, text=True, timeout=timeout,
                                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                                     "HOME": str(self.root)})
        if result.returncode != 0:
            raise AssertionError(f"patronictl {' '.join(args)} exited {result.returncode}: "
                                 f"{result.stdout}{result.stderr}\n{self.logs()}")
        return result.stdout + result.stderr

    def switchover(self, candidate: PatroniNode, timeout: float = 60) -> str:
        """``patronictl switchover --leader L --candidate C --force``: returns once Patroni
        says the switchover is done (the candidate promoted, the old leader demoted)."""
        leader = self.leader()
        assert leader is not None, f"no leader to switch over from\n{self.logs()}"
        return self.patronictl("switchover", self.scope, "--leader", leader.name,
                               "--candidate", candidate.name, "--force", timeout=timeout)

    def kill_leader(self) -> PatroniNode:
        """SIGKILL the leader's Patroni, then its postmaster and the postmaster's children (a
        crashed node): the leader key is no longer renewed and expires after the ttl."""
        leader = self.leader()
        assert leader is not None, f"no leader to kill\n{self.logs()}"
        self.kill_node(leader)
        return leader

    def kill_node(self, node: PatroniNode) -> None:
        if node.process is not None and node.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait(10)
        postmaster = node.postmaster_pid()
        if postmaster is not None:
            children = _children(postmaster)
            for pid in (postmaster, *children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _wait_gone([postmaster, *children], 10)

    def close(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                self.kill_node(node)
        if self.etcd is not None and self.etcd.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.etcd.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.etcd.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def accepting_since(self, node: PatroniNode) -> float | None:
        """When ``node``'s PostgreSQL last became ready for read-write connections (its log's
        last "database system is ready to accept connections", at a promotion or a start as
        leader), as a ``time.monotonic()`` value; None if it never did."""
        path = node.dir / "pglog" / "postgresql.log"
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return None
        ready = [line for line in lines
                 if line.endswith("database system is ready to accept connections")]
        if not ready:
            return None
        stamp = datetime.strptime(ready[-1][:23], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
        return stamp.timestamp() - (time.time() - time.monotonic())

    def rewound(self, node: PatroniNode) -> bool:
        """Patroni ran pg_rewind on ``node`` successfully since it was started last."""
        text = node.log.read_text(errors="replace")
        return "pg_rewind exit code=0" in text.rsplit(f"--- start {node.starts} ---", 1)[-1]

    # -- diagnostics -------------------------------------------------------------------------

    def logs(self, lines: int = 25) -> str:
        parts = []
        for node in self.nodes:
            parts.append(_tail(node.log, f"{node.name} patroni", lines))
            parts.append(_tail(node.dir / "pglog" / "postgresql.log", f"{node.name} postgres",
                               lines))
        parts.append(_tail(self.root / "etcd.log", "etcd", lines // 2))
        return "\n".join(parts)

    def wait_until(self, condition: Any, timeout: float, what: str, detail: Any = None) -> None:
        """Wait until ``condition()``; past ``timeout`` s fail, with the logs' tails."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                extra = f"{detail()}\n" if detail else ""
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n"
                                     f"{extra}{self.logs()}")
            time.sleep(0.05)

    def _chown(self, path: Path) -> None:
        if self.user:
            shutil.chown(path, user=self.user, group=self.user)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)


def _tail(path: Path, title: str, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"--- {title}: {exc}"
    return f"--- {title} ({path}):\n" + "\n".join(text)
