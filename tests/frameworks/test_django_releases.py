"""The Django backend's tests on the Django releases that need a newer Python than this
suite's: Django 6.0 and 6.1 require Python 3.12, so CI's 3.11 cannot import them.

Each release gets a virtualenv of its own, built with a Python 3.12 or later found on the
machine (``PATH``, or pyenv's versions; ``.ci/run`` provides one through uv where none is),
kept between runs under ``~/.cache/psycopg2-pool/``, with that Django, psycopg2-binary,
pytest and the telemetry packages. tests/frameworks/test_django.py then runs there against
this session's server, on this checkout (``PYTHONPATH``; the C parts built for 3.11 do not
load under 3.12, so the pool runs its Python reference there).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.system import DSN_ENV, REQUIRE_BINARIES_ENV

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "psycopg2-pool"
#: The releases Django supports that need Python 3.12 (5.2, the LTS, runs in this suite).
RELEASES = ["6.0", "6.1"]
#: What test_django.py needs besides Django, as the `test` extra pins it (psycopg 3 too: one
#: test checks that the backend stays on psycopg2 when both are installed).
PACKAGES = ["psycopg2-binary>=2.9.9", "psycopg[binary]>=3.2", "pytest>=8",
            "opentelemetry-sdk==1.45.1", "opentelemetry-semantic-conventions==0.66b1",
            "structlog>=24.1"]


def python_312() -> str | None:
    """A Python 3.12 or later: on PATH, or one of pyenv's or uv's."""
    candidates = [shutil.which(f"python3.{minor}") for minor in range(12, 16)]
    for pattern in ("~/.pyenv/versions/3.1[2-9]*/bin/python3",
                    "~/.local/share/uv/python/cpython-3.1[2-9]*/bin/python3"):
        candidates += sorted(glob.glob(os.path.expanduser(pattern)))
    for candidate in candidates:
        if candidate and subprocess.run(
                [candidate, "-c", "import sys, venv; assert sys.version_info >= (3, 12)"],
                capture_output=True).returncode == 0:
            return candidate
    return None


def venv_for(release: str, python: str) -> Path:
    """A virtualenv with Django ``release`` and :data:`PACKAGES` (made once, then reused)."""
    where = CACHE / f"django-{release}"
    ready = where / "ready"
    wanted = "\n".join([python, f"django=={release}.*", *PACKAGES])
    if ready.exists() and ready.read_text() == wanted:
        return where
    shutil.rmtree(where, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(where)], check=True, capture_output=True)
    result = subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "-q",
                             "--disable-pip-version-check", f"django=={release}.*", *PACKAGES],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"could not install Django {release}: {result.stderr[-2000:]}")
    ready.write_text(wanted)
    return where


@pytest.mark.parametrize("release", RELEASES)
def test_the_backend_tests_pass_on(release: str, dsn: str) -> None:
    python = python_312()
    if python is None:
        message = (f"Django {release} needs Python 3.12 or later, and none was found "
                   f"(PATH, pyenv, uv); .ci/run installs one with uv")
        if os.environ.get(REQUIRE_BINARIES_ENV) == "1":
            pytest.fail(f"{message}, and {REQUIRE_BINARIES_ENV}=1 forbids skipping")
        pytest.skip(message)
    venv = venv_for(release, python)
    env = {**os.environ, DSN_ENV: dsn, "PYTHONPATH": str(ROOT),
           "PSYCOPG2_POOL_SLOW_TESTS": "1"}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-o", "addopts=", "tests/frameworks/test_django.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import django, sys; print(django.__version__, sys.version.split()[0])"],
        capture_output=True, text=True).stdout.strip()
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"Django/Python {version}: {summary}")
    assert result.returncode == 0, (f"Django/Python {version}:\n{result.stdout[-6000:]}\n"
                                    f"{result.stderr[-2000:]}")
    assert " passed" in summary and "skipped" not in summary, summary
