"""What the benchmark scripts share: the repository on the import path, and a PostgreSQL to
run against (``psycopg2_pool.testing.embedded_server``, as the tests and the demo)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout, installed or not
    sys.path.insert(0, str(ROOT))

from psycopg2_pool.testing import embedded_server as server  # noqa: E402

__all__ = ["ROOT", "server"]
