"""docs/leaks.md shows what the code prints: its sample outputs are produced here.

The example application of the page (its ``<!-- example: app/reports.py -->`` block) is
written to a temporary directory and run against the test server; its reports go through
structlog's real ``ConsoleRenderer(colors=False)`` and ``JSONRenderer``, and each
``<!-- output: NAME -->`` block of the page must equal what was printed. Only what changes
from run to run is pinned before rendering (times, ages, backend pids, the trace ids, which
come from a fixed id generator) and the temporary directory is shown as ``/srv/shop``.

Run with ``PSYCOPG2_POOL_UPDATE_DOCS=1`` to rewrite the blocks after a deliberate change.
"""

from __future__ import annotations

import contextvars
import importlib
import io
import json
import os
import re
import sys
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from time import monotonic, sleep
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator

from psycopg2_pool import ConnectionPool, PoolExhausted
from psycopg2_pool.pytest_plugin import _describe, _Session
from telemetry import instrument

DOC = Path(__file__).resolve().parents[2] / "docs" / "leaks.md"
SHOWN_ROOT = "/srv/shop"
UPDATE = os.environ.get("PSYCOPG2_POOL_UPDATE_DOCS") == "1"

BLOCK = re.compile(r"<!-- (example|output): (\S+) -->\n```[a-z]*\n(.*?)```\n", re.S)


def blocks() -> dict[str, str]:
    return {name: body for _, name, body in BLOCK.findall(DOC.read_text())}


class FixedIds(IdGenerator):
    """Trace and span ids that read like real ones and are the same at every run."""

    def __init__(self) -> None:
        self.traces = iter([0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x0AF7651916CD43DD8448EB211C80319C,
                            0x5B8EFFF798038103D269B633813FC60C, 0x8A3C60F7D188F8FA79D48A391A778FA6])
        self.span = 0x00F067AA0BA902B7

    def generate_trace_id(self) -> int:
        return next(self.traces)

    def generate_span_id(self) -> int:
        self.span += 0x1111
        return self.span


PINNED = {"timestamp": "10:42:17", "held_s": 31.207, "backend_pid": 48213,
          "threshold_s": 30.0}


def pin(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Give what varies from run to run the values the page shows."""
    for key, value in PINNED.items():
        if key in event:
            event[key] = value
    for holder in event.get("holders", []):
        holder["oldest_s"] = 31.207
    return event


def shown(text: str, root: Path) -> str:
    return text.replace(str(root), SHOWN_ROOT)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The page's example application, importable as ``app.reports``, run from its root."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "reports.py").write_text(blocks()["app/reports.py"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("app.reports")
    for name in ("app.reports", "app"):
        sys.modules.pop(name, None)


@pytest.fixture
def rendered() -> Iterator[dict[str, io.StringIO]]:
    """structlog configured twice over: console and JSON outputs of the same events."""
    saved = structlog.get_config()
    outputs = {"console": io.StringIO(), "json": io.StringIO()}

    class Both:
        def __init__(self) -> None:
            self.console = structlog.dev.ConsoleRenderer(colors=False)
            self.json = structlog.processors.JSONRenderer()

        def __call__(self, logger: Any, name: str, event: dict[str, Any]) -> str:
            outputs["json"].write(self.json(logger, name, dict(event)) + "\n")
            return self.console(logger, name, event)

    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="%H:%M:%S"), pin, Both()],
        logger_factory=structlog.WriteLoggerFactory(file=outputs["console"]))
    yield outputs
    structlog.configure(**saved)


def summary_without_instrumentation() -> str:
    """The end of a 12-test ``--pool-leaks`` session whose one pool, 'app', has no detector,
    as pytest writes it in an 80-column terminal."""
    from _pytest._io import TerminalWriter

    session = _Session()
    session.checked = 12
    session.unchecked_pools["app"] = None
    out = io.StringIO()
    writer = TerminalWriter(out)
    writer.fullwidth = 80
    writer.sep("=", "psycopg2_pool leak check")
    for line in session.summary():
        writer.line(line)
    return out.getvalue()


def test_the_page_shows_what_the_code_prints(dsn: str, app: Any, tmp_path: Path,
                                             rendered: dict[str, io.StringIO]) -> None:
    tracer = TracerProvider(id_generator=FixedIds()).get_tracer("shop")
    pool = ConnectionPool(0, 3, dsn=dsn, name="shop")
    handle = instrument(pool, leak_threshold=0.05)
    workers = ThreadPoolExecutor(3, thread_name_prefix="worker")  # a server's threads
    try:
        def request(path: str, user: str) -> None:
            with tracer.start_as_current_span(f"GET {path}"):
                context = contextvars.copy_context()
            workers.submit(context.run, app.report_view, pool, user).result()

        started = monotonic()
        request("/reports/monthly", "ada")
        sleep(0.08)
        handle.leak_detector.scan()  # type: ignore[union-attr]
        suspected = rendered["console"].getvalue()
        json_line = rendered["json"].getvalue().splitlines()[-1]
        (leak,) = handle.leak_detector.checkouts_since(started)  # type: ignore[union-attr]
        handle.leak_detector.threshold = 3600  # type: ignore[union-attr]  # no more reports

        request("/reports/monthly", "grace")
        request("/reports/monthly", "linus")
        before = len(rendered["console"].getvalue())
        with tracer.start_as_current_span("GET /cart"), pytest.raises(PoolExhausted) as raised:
            pool.getconn(timeout=0)
        exhausted = rendered["console"].getvalue()[before:]
        note = "".join(traceback.format_exception_only(raised.value))
    finally:
        workers.shutdown()
        for cursor in app.open_reports.values():
            pool.putconn(cursor.connection)
        pool.close()
        handle.uninstrument()

    produced = {
        "console": suspected,
        "json": json.dumps(json.loads(json_line), indent=2) + "\n",
        "exhausted": exhausted,
        "exhausted-error": re.sub(r"oldest [0-9.]+ s", "oldest 31.207 s", note),
        "pytest": "the test leaked 1 pooled connection(s):\n"
                  + _describe(pool.name, leak, "checked out and never returned, taken") + "\n",
    }
    produced["pytest-summary"] = summary_without_instrumentation()
    produced = {name: shown(text, tmp_path) for name, text in produced.items()}
    if UPDATE:
        text = DOC.read_text()
        for kind, name, body in BLOCK.findall(text):
            if kind == "output":
                text = text.replace(f"<!-- output: {name} -->\n", f"\0{name}\0", 1)
                fence = text[text.index(f"\0{name}\0") + len(name) + 2:].split("\n", 1)[0]
                text = text.replace(f"\0{name}\0{fence}\n{body}```\n",
                                    f"<!-- output: {name} -->\n{fence}\n{produced[name]}```\n")
        DOC.write_text(text)
    assert blocks().keys() >= produced.keys()
    for name, text in produced.items():
        assert blocks()[name] == text, f"docs/leaks.md block {name!r} is not what is printed"
