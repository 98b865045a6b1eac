"""A throwaway PostgreSQL: one way for the tests, the benchmarks and the demo to get a server.

``embedded_server()`` starts an embedded PostgreSQL (``pgserver``, from the ``demo`` extra and
the extras built on it) in a temporary directory and removes it on the way out; given a DSN, it
uses that server instead and starts nothing. The test suite (tests/conftest.py), the benchmarks
(benchmarks/common.py) and ``psycopg2-pool-demo`` all get their server here, so that a pure-pool
test need not import the telemetry package for it. ``pgserver`` is imported only when a server
is started: ``psycopg2_pool`` itself still depends on psycopg2 alone.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["embedded_server"]


@contextmanager
def embedded_server(dsn: str | None = None, out: TextIO | None = None) -> Iterator[str]:
    """Yield ``dsn`` if given, else the libpq URI of an embedded PostgreSQL (pgserver) that is
    stopped and deleted when the block ends. ``out`` gets a line when the embedded server
    starts and one when it is gone (the demo prints them; the tests stay quiet)."""
    if dsn:
        yield dsn
        return
    pgdata = tempfile.mkdtemp(prefix="psycopg2-pool-")
    if out is not None:
        print(f"Starting an embedded PostgreSQL in {pgdata} ...", file=out, flush=True)
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset (a container, a cron job, ssh
        # without a login session) and falls back to /tmp/runtime-$UID: fine for a throwaway
        # server, and not worth being the first line a newcomer reads.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR", category=UserWarning)
        import pgserver

        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)
        if out is not None:
            print("Embedded PostgreSQL stopped and removed.", file=out, flush=True)
