"""A throwaway PostgreSQL from the system's packaged binaries (Debian's ``postgresql``), for
tests that need more than pgserver's embedded build has: its contrib extensions (hstore,
citext, btree_gist...) and ICU collations. pgserver ships neither (``CREATE EXTENSION hstore``
fails there, and so does ``CREATE COLLATION ... (provider = icu)``).

The server listens on a unix socket in a temporary directory only, with durability off
(``fsync``, ``full_page_writes``, ``synchronous_commit``): it is thrown away. Under root
(initdb refuses root) it runs as the ``postgres`` user the package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.system import require_binary

PACKAGED = Path("/usr/lib/postgresql")


def packaged_bin_dir() -> Path:
    """The newest packaged PostgreSQL's bin directory; skip (fail under .ci/run) if none."""
    versions = sorted((p for p in PACKAGED.glob("*/bin") if (p / "initdb").exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if versions:
        return versions[-1]
    return Path(require_binary("initdb", package="postgresql")).parent


@contextlib.contextmanager
def packaged_server(max_connections: int = 200) -> Iterator[str]:
    """Yield the libpq DSN of a new server (superuser ``postgres``), removed on exit."""
    bin_dir = packaged_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="psycopg2-pool-pg-"))
    pgdata, sockets = root / "data", root / "run"
    sockets.mkdir()
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")  # made by Debian's package
        except KeyError:
            shutil.rmtree(root)
            raise RuntimeError("initdb refuses to run as root, and there is no 'postgres' "
                               "user to run it as") from None
        for path in (root, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)

    def run(*command: str) -> None:
        argv = list(command)
        if user is not None:
            argv = ["runuser", "-u", user.pw_name, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "LC_ALL": "C.UTF-8"})
        if result.returncode:
            raise RuntimeError(f"{' '.join(command)} exited {result.returncode}:\n"
                               f"{result.stdout}\n{result.stderr}")

    options = (f"-h '' -k {sockets} -c max_connections={max_connections} -c fsync=off "
               f"-c full_page_writes=off -c synchronous_commit=off")
    try:
        run(str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        run(str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-w", "-t", "60", "-o", options,
            "-l", str(root / "log"), "start")
        try:
            yield f"host={sockets} user=postgres dbname=postgres"
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "immediate", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
