"""Every Python example in the README and docs/ runs, against the test server.

Each document's examples run in order, in one fresh interpreter, as its prose assumes: libpq's
PG* variables point at the test server, a database ``app`` exists, and ``pool`` is a
ConnectionPool on it (the examples that say ``instrument(pool)`` use it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from psycopg2.extensions import parse_dsn

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^[ \t]*```python\n(.*?)^[ \t]*```", re.M | re.S)
PREAMBLE = ("from psycopg2_pool import ConnectionPool\n"
            "pool = ConnectionPool(0, 4, dsn='dbname=app')\n")


def examples(path: Path) -> list[str]:
    """The ```python blocks of a document (dedented: some sit inside list items)."""
    return [textwrap.dedent(block) for block in BLOCK.findall(path.read_text())]


def test_every_document_with_code_is_checked() -> None:
    with_code = [p.name for p in DOCUMENTS if examples(p)]
    assert {"README.md", "api.md", "quickstart.md", "migration.md", "troubleshooting.md",
            "production.md", "leaks.md", "metrics.md", "dashboards.md"} <= set(with_code)


@pytest.fixture(scope="module")
def pg_environment(dsn: str) -> dict[str, str]:
    import psycopg2

    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = 'app'")
        if cur.fetchone() is None:
            cur.execute("CREATE DATABASE app")
    admin.close()
    options = parse_dsn(dsn)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for option, variable in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"),
                             ("password", "PGPASSWORD")):
        if options.get(option):
            env[variable] = options[option]
    return env


@pytest.mark.parametrize("path", [p for p in DOCUMENTS if examples(p)],
                         ids=lambda p: p.name)
def test_examples_run(path: Path, pg_environment: dict[str, Any], tmp_path: Path) -> None:
    blocks = examples(path)
    script = PREAMBLE + "\n".join(f"# --- example {i + 1}\n{block}"
                                  for i, block in enumerate(blocks))
    (tmp_path / "examples.py").write_text(script)
    result = subprocess.run([sys.executable, str(tmp_path / "examples.py")],
                            capture_output=True, text=True, timeout=120, env=pg_environment,
                            cwd=tmp_path)
    assert result.returncode == 0, f"{path.name}:\n{result.stdout[-2000:]}\n" \
                                   f"{result.stderr[-3000:]}"
