"""docs/telemetry.md tells the truth: its tables match what the code emits."""

from __future__ import annotations

import re
from pathlib import Path

from telemetry import names

DOC = Path(__file__).resolve().parents[2] / "docs" / "telemetry.md"


def table_rows(heading: str) -> list[list[str]]:
    """The body rows of the first table under ``## heading``, cells without backticks."""
    text = DOC.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows: list[list[str]] = []
    in_table = False
    for line in section.splitlines():
        if line.startswith("|"):
            in_table = True
            if line.startswith("| `"):
                rows.append([cell.strip().replace("`", "") for cell in line.strip("|").split("|")])
        elif in_table:  # the first table ended (later ones explain, they do not list)
            break
    return rows


def test_metric_table_matches_the_code() -> None:
    documented = {row[0]: row for row in table_rows("Metrics")}
    assert set(documented) == {m.name for m in names.METRICS}
    for metric in names.METRICS:
        _, instrument, unit, attributes, _ = documented[metric.name]
        assert instrument == metric.instrument, metric.name
        assert unit == metric.unit, metric.name
        assert [a.strip() for a in attributes.split(",")] == list(metric.attributes), metric.name


def test_log_event_table_matches_the_code() -> None:
    documented = {row[0]: row[1] for row in table_rows("Log events")}
    assert documented == {e.name: e.level for e in names.LOG_EVENTS}


def test_span_table_matches_the_code() -> None:
    (row,) = table_rows("Spans")
    assert row[0] == names.SPAN_GETCONN
    documented = re.findall(r"(?:db|psycopg2_pool|error|server)\.[a-z_]+(?:\.[a-z_]+)*", row[2])
    assert documented == list(names.SPAN_ATTRIBUTES)


def test_bucket_boundaries_are_documented() -> None:
    text = DOC.read_text()
    for bound in ("100 µs", "250 µs", "500 µs", "1 ms", "10 s"):
        assert bound in text
    assert len(names.LATENCY_BUCKETS) == 16
