"""Packaging: no hard psycopg2 distribution, and a clear ImportError without one."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BLOCK_PSYCOPG2 = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "psycopg2" or name.startswith("psycopg2."):
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, Block())
try:
    import psycopg2_pool
except ImportError as exc:
    print(exc)
else:
    print("imported")
"""


def test_import_without_psycopg2_says_what_to_install() -> None:
    result = subprocess.run([sys.executable, "-c", BLOCK_PSYCOPG2], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert "psycopg2_pool needs the psycopg2 PostgreSQL adapter" in result.stdout
    assert "pip install 'psycopg2-pool[binary]'" in result.stdout
    assert "pip install psycopg2" in result.stdout


def test_no_hard_dependency_on_a_psycopg2_distribution() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("psycopg2") for d in project["dependencies"])
    assert project["optional-dependencies"]["binary"] == ["psycopg2-binary>=2.9"]


def test_the_pool_never_imports_telemetry() -> None:
    for path in (ROOT / "psycopg2_pool").glob("*.py"):
        text = path.read_text()
        assert "import telemetry" not in text and "from telemetry" not in text, path
    code = "import sys, psycopg2_pool; print('telemetry' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.stdout.strip() == "False"
