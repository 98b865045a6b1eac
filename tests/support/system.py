"""What a test needs of the machine: the environment variables the suite reads, a free port,
a system binary or a package of the test extra (skipped when absent, failed under .ci/run)."""

from __future__ import annotations

import importlib
import os
import shutil
import socket
from typing import Any

import pytest

#: A libpq connection string: run the suite against that server instead of an embedded one.
DSN_ENV = "PSYCOPG2_POOL_TEST_DSN"

REQUIRE_BINARIES_ENV = "PSYCOPG2_POOL_REQUIRE_BINARIES"


def require_binary(name: str, package: str | None = None) -> str:
    """The path of a system binary a test needs; skip (or fail, under .ci/run) when absent.
    ``package``: the Debian package that has it, when not named after it."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)
    if path:
        return path
    package = package or name
    message = (f"`{name}` is not installed (Debian package `{package}`; "
               f"`apt-get install -y {package}`, as .ci/run does)")
    if os.environ.get(REQUIRE_BINARIES_ENV) == "1":
        pytest.fail(f"{message}, and {REQUIRE_BINARIES_ENV}=1 forbids skipping")
    pytest.skip(message)


def require_package(module: str, name: str) -> Any:
    """A Python package of the ``test`` extra a test needs (imported); skip (or fail, under
    .ci/run) when absent. ``name``: what the message calls it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        message = (f"{name} is not installed (the `test` extra has it: "
                   f"python3 -m pip install -e '.[test]', as .ci/run does)")
        if os.environ.get(REQUIRE_BINARIES_ENV) == "1":
            pytest.fail(f"{message}, and {REQUIRE_BINARIES_ENV}=1 forbids skipping")
        pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
