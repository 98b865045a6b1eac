"""Every Python example in the README and docs/ runs, against the test server.

Each document's examples run in order, in one fresh interpreter, as its prose assumes: libpq's
PG* variables point at the test server, a database ``app`` exists, and ``pool`` is a
ConnectionPool on it (the examples that say ``instrument(pool)`` use it).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from psycopg2.extensions import parse_dsn

ROOT = Path(__file__).resolve().parents[2]
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
            "production.md", "leaks.md", "telemetry.md", "dashboards.md"} <= set(with_code)


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


# -- install lines: this project is not on PyPI, whose `psycopg2-pool` is the older 1.2 -------

INSTALL = re.compile(r"(?:\bpip3?|\buv pip|\buv|\bpoetry)\s+(?:install|add)\s+([^`\n]*)")
BARE_NAME = re.compile(r"psycopg2[-_]pool(\[[^\]]*\])?\s*([<>=!~].*)?", re.I)
INSTALL_SOURCES = [ROOT / "README.md", *sorted(ROOT.glob("docs/**/*.md")),
                   *sorted(ROOT.glob("docs/examples/*.py")), *sorted(ROOT.glob("benchmarks/*")),
                   *sorted(ROOT.glob("dashboards/*.md")), *sorted(ROOT.glob("telemetry/*.py"))]


def pypi_installs(text: str) -> list[str]:
    """The install commands and requirement lines of ``text`` that name the bare project name
    (which pip resolves on PyPI, to psycopg2-pool 1.2) rather than a checkout, wheel or URL."""
    bad = []
    for match in INSTALL.finditer(text):
        command = re.split(r"&&|;|\|| #", match.group(1))[0]
        try:
            tokens = shlex.split(command)
        except ValueError:  # an unbalanced quote: inline code cut by the line
            tokens = command.replace("'", " ").replace('"', " ").split()
        if any(BARE_NAME.fullmatch(token) for token in tokens):
            bad.append(match.group(0))
    bad += [line for line in text.splitlines() if BARE_NAME.fullmatch(line.strip())]
    return bad


def test_the_install_checker_catches_the_pypi_name() -> None:
    for line in ("pip install 'psycopg2-pool[binary,telemetry]'    # + OpenTelemetry",
                 "`pip install psycopg2-pool psycopg2`", "python3 -m pip install -U psycopg2_pool",
                 "uv add 'psycopg2-pool>=2'", "psycopg2-pool[binary]>=2.0"):
        assert pypi_installs(line), line
    for line in ("python3 -m pip install '.[binary,telemetry]'", "pip install psycopg2",
                 "pip install 'psycopg2-pool[binary] @ git+REPO_URL'",
                 "pip install 'dist/psycopg2_pool-2.0.0.dev0-py3-none-any.whl[binary]'",
                 "python3 -m pip install -e '.[demo]' && python3 -m telemetry.demo"):
        assert not pypi_installs(line), line


@pytest.mark.parametrize("path", [p for p in INSTALL_SOURCES if p.is_file()],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_install_line_fetches_the_pypi_name(path: Path) -> None:
    assert pypi_installs(path.read_text()) == [], (
        f"{path.relative_to(ROOT)}: pip resolves the bare name on PyPI, to psycopg2-pool 1.2; "
        f"install from a checkout ('.[extra]'), a built wheel or a git URL instead")


def test_install_docs_say_how_to_install_this_project() -> None:
    quickstart = (ROOT / "docs" / "quickstart.md").read_text()
    for fragment in ("python3 -m pip install '.[binary,telemetry]'", "pip wheel --no-deps",
                     "@ file:///", "psycopg2-pool 1.2"):
        assert fragment in quickstart, fragment
    for page in ("api.md", "troubleshooting.md"):
        assert "python3 -m pip install '.[binary]'" in (ROOT / "docs" / page).read_text(), page


# -- getting a server: the quick start links the example that starts one ---------------------

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_example_is_linked_from_the_docs() -> None:
    linked = set()
    for document in DOCUMENTS:
        for target in LINK.findall(document.read_text()):
            if "://" not in target:
                linked.add((document.parent / target).resolve())
    for example in sorted((ROOT / "docs" / "examples").glob("*.py")):
        assert example.resolve() in linked, f"{example.name} is linked from no document"
    quickstart = (ROOT / "docs" / "quickstart.md").read_text()
    assert "## Get a server" in quickstart and "](examples/quickstart.py)" in quickstart


def test_quickstart_example_starts_its_own_server(tmp_path: Path) -> None:
    pytest.importorskip("pgserver")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PG"))}
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "examples" / "quickstart.py")],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Started an embedded PostgreSQL in" in result.stdout
    assert "Query result (with statement): 2" in result.stdout
    assert "Table 'test_table' ensured (explicit putconn)." in result.stdout
    assert "Connection pool closed." in result.stdout
