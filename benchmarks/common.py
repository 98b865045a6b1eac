"""What the benchmark scripts share: a PostgreSQL to run against."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[str]:
    """``dsn`` if given, else a throwaway pgserver PostgreSQL, removed afterwards."""
    if dsn:
        yield dsn
        return
    import pgserver

    pgdata = tempfile.mkdtemp(prefix="psycopg2-pool-bench-")
    srv = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        yield srv.get_uri()
    finally:
        srv.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)
