"""Import psycopg2 once, with an error that says what to install when it is missing.

psycopg2 ships as two conflicting distributions (``psycopg2`` built from source and
``psycopg2-binary``); this package depends on neither so that users keep the one they have.
"""

from __future__ import annotations

try:
    import psycopg2
    import psycopg2.extensions as extensions
    import psycopg2.pool as psycopg2_pool_module
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "psycopg2_pool needs the psycopg2 PostgreSQL adapter, which is not installed. "
        "Install exactly one of: `pip install psycopg2-binary` (no compiler needed) or "
        "`pip install psycopg2` (builds against your libpq). "
        "Do not install both: they conflict."
    ) from exc

__all__ = ["psycopg2", "extensions", "psycopg2_pool_module"]
