"""Checkout/return cycles of this pool and its peers, side by side in one run.

Peers: ``psycopg2.pool.ThreadedConnectionPool``, psycopg2-pool 1.2 (its sdist, fetched with
pip into ``benchmarks/.cache`` and loaded under the module name ``psycopg2_pool_12``, since it
shares our import name), ``psycopg_pool.ConnectionPool`` (psycopg 3), and this pool.

Scenarios: the bare ``getconn``/``putconn`` cycle and the ``SELECT 1``
checkout-execute-fetch-return cycle, with 1 and 8 threads (maxconn >= threads: nobody waits).
Each round runs every peer once per scenario in a shuffled order; the table gives medians of
the per-cycle time (wall time / total cycles) and the ratio to psycopg2.pool's median.

    python3 benchmarks/pool_cycle.py              # ~1-2 minutes on 2 cores
    python3 benchmarks/pool_cycle.py --quick      # seconds: the test suite's smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from common import server

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
sys.path.insert(0, str(ROOT))


@dataclass
class Peer:
    """A pool under test: how to make it, check out and return."""

    name: str
    make: Callable[[str, int], Any]
    getconn: Callable[[Any], Any]
    putconn: Callable[[Any, Any], None]
    close: Callable[[Any], None]


def load_psycopg2_pool_12() -> ModuleType | None:
    """psycopg2-pool 1.2 under another module name, or None (with the reason printed)."""
    target = CACHE / "psycopg2_pool_12.py"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            result = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 "-d", tmp, "psycopg2-pool==1.2"], capture_output=True, text=True)
            archives = list(Path(tmp).glob("psycopg2-pool-1.2*.tar.gz"))
            if result.returncode or not archives:
                print(f"skipping psycopg2-pool 1.2: pip download failed: "
                      f"{result.stderr.strip()[-200:]}")
                return None
            with tarfile.open(archives[0]) as archive:
                member = archive.extractfile("psycopg2-pool-1.2/psycopg2_pool/__init__.py")
                assert member is not None
                target.write_bytes(member.read())
    spec = importlib.util.spec_from_file_location("psycopg2_pool_12", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peers() -> list[Peer]:
    import psycopg2.pool
    from psycopg_pool import ConnectionPool as PsycopgPool

    from psycopg2_pool import ConnectionPool

    found = [
        Peer("psycopg2.pool", lambda dsn, n: psycopg2.pool.ThreadedConnectionPool(n, n, dsn),
             lambda p: p.getconn(), lambda p, c: p.putconn(c), lambda p: p.closeall()),
    ]
    old = load_psycopg2_pool_12()
    if old is not None:
        found.append(Peer(
            "psycopg2-pool 1.2",
            lambda dsn, n: old.ThreadSafeConnectionPool(minconn=n, maxconn=n, dsn=dsn),
            lambda p: p.getconn(), lambda p, c: p.putconn(c), lambda p: p.clear()))
    found.append(Peer(
        "psycopg_pool 3",
        lambda dsn, n: PsycopgPool(dsn, min_size=n, max_size=n, open=True, timeout=30),
        lambda p: p.getconn(), lambda p, c: p.putconn(c), lambda p: p.close()))
    found.append(Peer("psycopg2_pool (this)",
                      lambda dsn, n: ConnectionPool(n, n, dsn=dsn, timeout=30),
                      lambda p: p.getconn(), lambda p, c: p.putconn(c), lambda p: p.close()))
    return found


def bare(peer: Peer, pool: Any, cycles: int) -> None:
    getconn, putconn = peer.getconn, peer.putconn
    for _ in range(cycles):
        putconn(pool, getconn(pool))


def select1(peer: Peer, pool: Any, cycles: int) -> None:
    for _ in range(cycles):
        conn = peer.getconn(pool)
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchone()
        cur.close()
        conn.rollback()  # end the transaction as applications do (psycopg_pool warns otherwise)
        peer.putconn(pool, conn)


@dataclass
class Scenario:
    name: str
    work: Callable[[Peer, Any, int], None]
    threads: int
    cycles: int  # per thread per round
    rounds_factor: int = 1  # more, shorter rounds where the server's scheduling adds noise


def run(scenario: Scenario, peer: Peer, pool: Any) -> float:
    """µs per cycle: wall time over every thread's cycles."""
    barrier = threading.Barrier(scenario.threads + 1)

    def worker() -> None:
        barrier.wait()
        scenario.work(peer, pool, scenario.cycles)

    threads = [threading.Thread(target=worker) for _ in range(scenario.threads)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return (time.perf_counter() - started) / (scenario.cycles * scenario.threads) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("PSYCOPG2_POOL_BENCH_DSN"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cycles", type=int, default=20_000,
                        help="bare cycles per thread per round (SELECT 1: a twentieth)")
    parser.add_argument("--quick", action="store_true", help="tiny numbers: a smoke run")
    parser.add_argument("--only", default="", help="run the scenarios whose name contains this")
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "pool_cycle.md")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.cycles = 2, 200
    scenarios = [
        Scenario("bare, 1 thread", bare, 1, args.cycles),
        Scenario("bare, 8 threads", bare, 8, max(1, args.cycles // 8)),
        # A round trip to the server flips between ~25 and ~180 µs on these VMs as the
        # scheduler moves processes: many short interleaved rounds let the medians compare.
        Scenario("SELECT 1, 1 thread", select1, 1, max(1, args.cycles // 100), 4),
        Scenario("SELECT 1, 8 threads", select1, 8, max(1, args.cycles // 400), 4),
    ]
    scenarios = [s for s in scenarios if args.only in s.name]
    results: dict[tuple[str, str], list[float]] = {}
    with server(args.dsn) as dsn:
        all_peers = peers()
        for scenario in scenarios:
            pools = {p.name: p.make(dsn, scenario.threads) for p in all_peers}
            for peer in all_peers:  # warm-up
                run(Scenario(scenario.name, scenario.work, scenario.threads,
                             max(1, scenario.cycles // 10)), peer, pools[peer.name])
            for _ in range(args.rounds * scenario.rounds_factor):
                order = all_peers[:]
                random.shuffle(order)
                for peer in order:
                    results.setdefault((scenario.name, peer.name), []).append(
                        run(scenario, peer, pools[peer.name]))
            for peer in all_peers:
                peer.close(pools[peer.name])
    import psycopg2
    import psycopg_pool

    psycopg2_version = getattr(psycopg2, "__version__", "?").split()[0]

    lines = [
        f"# Pool cycle benchmark ({time.strftime('%Y-%m-%d')})", "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, psycopg2 {psycopg2_version}, "
        f"psycopg_pool {psycopg_pool.__version__}. Medians of {args.rounds} interleaved "
        f"rounds ({args.rounds * 4} shorter ones for SELECT 1); ratio = median / "
        f"psycopg2.pool's median (lower is faster).", "",
        "| scenario | pool | µs per cycle | ratio |", "|---|---|---|---|",
    ]
    for scenario in scenarios:
        base = statistics.median(results[(scenario.name, "psycopg2.pool")])
        for peer in all_peers:
            value = statistics.median(results[(scenario.name, peer.name)])
            lines.append(f"| {scenario.name} | {peer.name} | {value:.2f} | "
                         f"{value / base:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
