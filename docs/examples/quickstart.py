"""The seed document's quickstart, run against an embedded PostgreSQL.

With DB_HOST set, it uses that server as the seed shows (DB_HOST, DB_NAME, DB_USER,
DB_PASSWORD); otherwise it starts a throwaway server with ``pgserver`` and points the
same code at it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import psycopg2

from psycopg2_pool import ConnectionPool


def quickstart(connect: dict[str, str]) -> None:
    """The seed's quickstart, as written, with the connection details passed in."""
    pool = None  # Initialize pool to None for safe cleanup
    try:
        pool = ConnectionPool(minconn=1, maxconn=10, **connect)

        # Example 1: Using 'with' statement for automatic connection return
        with pool.getconn() as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 + 1 AS result;")
                result = cur.fetchone()[0]
                print(f"Query result (with statement): {result}")
            conn.commit()  # Commit if changes were made

        # Example 2: Explicitly getting and returning a connection
        conn = pool.getconn()
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE IF NOT EXISTS test_table "
                            "(id SERIAL PRIMARY KEY, name VARCHAR(50));")
            conn.commit()
            print("Table 'test_table' ensured (explicit putconn).")
        finally:
            pool.putconn(conn)  # Crucial: always return the connection!
        print(f"Pool statistics: {pool.get_stats()}")
    except psycopg2.Error as e:
        print(f"Database error: {e}")
        raise
    finally:
        # Close the pool when done (e.g., application shutdown)
        if pool:
            pool.close()
            print("Connection pool closed.")


def main() -> None:
    if os.environ.get("DB_HOST"):
        quickstart({
            "host": os.environ["DB_HOST"],
            "database": os.environ.get("DB_NAME", "testdb"),
            "user": os.environ.get("DB_USER", "user"),
            "password": os.environ.get("DB_PASSWORD", "password"),
        })
        return
    import pgserver  # the embedded server of the `demo` extra

    pgdata = tempfile.mkdtemp(prefix="psycopg2-pool-quickstart-")
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        print(f"Started an embedded PostgreSQL in {pgdata}")
        quickstart({"dsn": server.get_uri()})
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


if __name__ == "__main__":
    main()
