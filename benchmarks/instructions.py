"""CPU instructions per bare ``getconn``/``putconn`` cycle, counted by valgrind's callgrind.

Timings on a shared VM move by 10-30 % from run to run; instruction counts move by well under
1 %, so they compare versions of the hot path, and the peers, reliably. Each pool runs in its
own process under ``valgrind --tool=callgrind``, twice (``--cycles`` and 11 times as many);
the difference of the two totals over the difference of the cycles is the cost of one cycle,
with start-up, imports and connecting cancelled out.

The "floor" is the least a Python pool can do: two method calls, a ``deque`` pop and append.
The breakdown times (``timeit``, best of 7) the operations our cycle is made of.

    python3 benchmarks/instructions.py             # ~3 minutes; needs valgrind
    python3 benchmarks/instructions.py --only "this pool" --cycles 200   # one peer, quickly
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

from common import ROOT, server
from peers import BASELINE, THIS, Telemetry, peers

FLOOR = "floor: 2 method calls, deque pop + append"
#: The instrumented pool with the leak record made in Python, as where ``telemetry._capture``
#: could not be compiled (``PSYCOPG2_POOL_PURE_PYTHON=1`` in its process).
PURE = f"{THIS} + instrument(), pure Python"


class Floor:
    """The least work a pool's cycle can be in Python."""

    def __init__(self) -> None:
        from collections import deque

        self.idle: deque[object] = deque([object()])

    def getconn(self) -> object:
        return self.idle.pop()

    def putconn(self, conn: object) -> None:
        self.idle.append(conn)


def child(name: str, dsn: str, cycles: int) -> None:
    """Run in the measured process: set the pool up, then ``cycles`` bare cycles."""
    if name == FLOOR:
        floor = Floor()
        for _ in range(cycles):
            floor.putconn(floor.getconn())
        return
    sdk = Telemetry(collect=False)  # no timer-driven work: it would depend on valgrind's pace
    peer = next(p for p in peers(sdk) if p.name == (f"{THIS} + instrument()" if name == PURE
                                                     else name))
    pool = peer.make(dsn, 1, 5.0)
    getconn, putconn = peer.getconn, peer.putconn
    for _ in range(100):  # warm up: first-use paths and caches
        putconn(pool, getconn(pool))
    with peer.context():
        for _ in range(cycles):
            putconn(pool, getconn(pool))
    os._exit(0)  # skip teardown: it differs from run to run, and is not the cycle


def instructions(valgrind: str, name: str, dsn: str, cycles: int) -> int:
    """Total instructions (Ir) of one child process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        result = subprocess.run(
            [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, __file__, "--child", name, "--dsn", dsn, "--cycles", str(cycles)],
            capture_output=True, text=True, env=dict(
                os.environ, PYTHONHASHSEED="0",
                PSYCOPG2_POOL_PURE_PYTHON="1" if name == PURE else "0"))
        if result.returncode:
            raise SystemExit(f"valgrind failed for {name}: {result.stderr[-2000:]}")
        match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
        if match is None:
            raise SystemExit(f"no instruction total in callgrind's output for {name}")
        return int(match.group(1))


def breakdown() -> list[tuple[str, float]]:
    """ns per operation of those our cycle is made of (best of 7, timeit)."""
    import itertools
    from collections import deque
    from time import monotonic

    setup_objects = {"deque": deque, "itertools": itertools, "monotonic": monotonic}
    snippets = [
        ("a Python method call (getconn, putconn: 2 per cycle)", "f()",
         "class A:\n def m(self): pass\nf = A().m"),
        ("monotonic() (2 per cycle)", "monotonic()", ""),
        ("deque pop + append", "d.append(d.pop())", "d = deque([1])"),
        ("dict set + pop (checked-out table, return times)", "t[1] = 2; t.pop(1)", "t = {}"),
        ("next(itertools.count()) (request and return counters)", "next(c)",
         "c = itertools.count()"),
        ("attribute tests of listeners, waiters, closed (about 8 per cycle)", "a.x",
         "class A: pass\na = A(); a.x = ()"),
    ]
    results = []
    for label, statement, setup in snippets:
        timer = timeit.Timer(statement, setup, globals=setup_objects)
        number = 1_000_000
        best = min(timer.repeat(7, number)) / number * 1e9
        results.append((label, best))
    return results


def connection_calls(dsn: str) -> list[tuple[str, float]]:
    """ns per call of the psycopg2 connection methods the cycle uses (2 per cycle)."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        timer = timeit.Timer("status()", globals={"status": conn.get_transaction_status})
        best = min(timer.repeat(7, 1_000_000)) / 1_000_000 * 1e9
    finally:
        conn.close()
    return [("conn.get_transaction_status() (libpq; once at checkout, once at return)", best)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("PSYCOPG2_POOL_BENCH_DSN"))
    parser.add_argument("--cycles", type=int, default=2_000,
                        help="cycles of the short run (the long one runs 11 times as many)")
    parser.add_argument("--only", default="", help="measure the pools whose name contains this")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "instructions.md")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dsn, args.cycles)
        return
    valgrind = next((p for p in ("/usr/bin/valgrind", "/usr/local/bin/valgrind")
                     if os.path.exists(p)), None)
    if valgrind is None:
        raise SystemExit("valgrind is not installed (Debian package `valgrind`)")
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    sdk = Telemetry(collect=False)
    names = [p.name for p in peers(sdk) if not p.traced] + [PURE, FLOOR]
    sdk.shutdown()
    names = [n for n in names if args.only in n]
    long_cycles = args.cycles * 11
    per_cycle: dict[str, float] = {}
    with server(args.dsn) as dsn:
        for name in names:
            short = instructions(valgrind, name, dsn, args.cycles)
            long = instructions(valgrind, name, dsn, long_cycles)
            per_cycle[name] = (long - short) / (long_cycles - args.cycles)
            print(f"  {name}: {per_cycle[name]:,.0f} instructions per cycle", flush=True)
        parts = breakdown() + connection_calls(dsn)
    say(f"# Instructions per bare cycle ({time.strftime('%Y-%m-%d %H:%M')})")
    say()
    say(f"callgrind, Python {sys.version.split()[0]}; ({args.cycles * 11:,} - {args.cycles:,}) "
        f"cycles' difference. `python3 benchmarks/instructions.py "
        f"{' '.join(sys.argv[1:])}`".rstrip() + ".")
    say()
    say(f"| pool | instructions per cycle | vs {BASELINE} | vs {THIS} |")
    say("|---|---|---|---|")
    for name, count in per_cycle.items():
        base = f"{count / per_cycle[BASELINE]:.2f}x" if BASELINE in per_cycle else ""
        mine = f"{count / per_cycle[THIS]:.2f}x" if THIS in per_cycle else ""
        say(f"| {name} | {count:,.0f} | {base} | {mine} |")
    say()
    say("## What a cycle is made of (ns per operation, best of 7 timeit runs)")
    say()
    say("| operation | ns |")
    say("|---|---|")
    for label, ns in parts:
        say(f"| {label} | {ns:.0f} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
