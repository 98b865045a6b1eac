"""Packaging: no hard psycopg2 distribution, and a clear ImportError without one."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

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
    assert "pip install psycopg2-binary" in result.stdout
    assert "psycopg2-pool[" not in result.stdout  # not the PyPI name: that is the old 1.2
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



def test_the_embedded_server_helper_needs_pgserver_only_to_start_one() -> None:
    """psycopg2_pool.testing serves the tests, the benchmarks and the demo: importing it, or
    using it with a DSN, starts nothing and imports no pgserver."""
    code = ("import sys\n"
            "from psycopg2_pool.testing import embedded_server\n"
            "with embedded_server('dbname=elsewhere') as dsn:\n"
            "    print(dsn, 'pgserver' in sys.modules, 'telemetry' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["dbname=elsewhere", "False", "False"]

# -- the OpenTelemetry pins of the demo/bench/test extras: one release train -----------------

CORE = {"opentelemetry-api", "opentelemetry-sdk"}  # 1.N.p; every other opentelemetry-* is 0.Mbp


def otel_requirements() -> dict[str, list[str]]:
    """extra -> its opentelemetry-* requirement strings."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    return {extra: [r for r in reqs if r.startswith("opentelemetry-")]
            for extra, reqs in extras.items()}


def train(name: str, version: str) -> tuple[int, int]:
    """(minor, patch) of the release train: core 1.N.p and contrib 0.(N+21)bp ship together."""
    if name in CORE:
        match = re.fullmatch(r"1\.(\d+)(?:\.(\d+))?", version)
        assert match, (name, version)
        return int(match.group(1)), int(match.group(2) or 0)
    match = re.fullmatch(r"0\.(\d+)b(\d+)", version)
    assert match, (name, version)
    return int(match.group(1)) - 21, int(match.group(2))


def test_opentelemetry_pins_are_one_release_train() -> None:
    pins: dict[str, str] = {}
    for extra, reqs in otel_requirements().items():
        for req in reqs:
            name, _, version = req.partition("==")
            if version:
                assert pins.setdefault(name, version) == version, (extra, req)
            else:
                assert extra == "telemetry", f"[{extra}] {req}: pin it with the others"
    # The tools that resolve together: the demo's SDK and exporter, the test extra's
    # instrumentation (whose semantic-conventions pin the SDK's must equal).
    assert {"opentelemetry-sdk", "opentelemetry-exporter-prometheus",
            "opentelemetry-instrumentation-psycopg2"} <= set(pins)
    assert len({train(name, version) for name, version in pins.items()}) == 1, pins
    # The application-facing extra's lower bounds are of one train too.
    bounds = dict(r.split(">=") for r in otel_requirements()["telemetry"])
    assert train("opentelemetry-api", bounds["opentelemetry-api"]) == train(
        "opentelemetry-semantic-conventions", bounds["opentelemetry-semantic-conventions"])


def test_installed_opentelemetry_agrees_with_the_pins() -> None:
    """Where the pinned versions are installed, each one's own opentelemetry-* requirements
    (its metadata, as pip reads it) are met by the other pins: the train rule holds."""
    from importlib import metadata

    from packaging.requirements import Requirement

    pins = {r.partition("==")[0]: r.partition("==")[2]
            for reqs in otel_requirements().values() for r in reqs if "==" in r}
    checked = 0
    for name, version in pins.items():
        try:
            if metadata.version(name) != version:
                continue
        except metadata.PackageNotFoundError:
            continue
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None and req.name in pins:
                assert req.specifier.contains(pins[req.name], prereleases=True), (name, text)
                checked += 1
    if not checked:
        pytest.skip(f"none of the pinned versions is installed: {pins}")


# -- a built wheel, installed as the quick start says: the demo's summary points at real files --

FIND = """
import psycopg2_pool, telemetry.demo as demo
print(psycopg2_pool.__file__)
print(demo.where('dashboards/psycopg2-pool-overview.json'))
print(demo.where('docs/dashboards.md'))
"""


@pytest.mark.slow  # real services: .ci/run runs it
def test_built_wheel_installs_what_the_demo_points_at(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".*cache", ".cache"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("psycopg2_pool-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         f"{wheel}[binary,telemetry]"], capture_output=True, text=True, timeout=180)
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run([str(python), "-c", FIND], capture_output=True, text=True,
                           timeout=60, cwd=tmp_path, env=env)
    assert found.returncode == 0, found.stderr[-2000:]
    package, dashboard, guide = found.stdout.split("\n")[:3]
    assert package.startswith(str(venv)), package  # the wheel's copy, not the checkout's
    share = venv / "share" / "psycopg2-pool"
    assert dashboard == str(share / "dashboards" / "psycopg2-pool-overview.json")
    assert guide == str(share / "docs" / "dashboards.md")
    assert Path(dashboard).read_text() == (ROOT / "dashboards" /
                                           "psycopg2-pool-overview.json").read_text()
