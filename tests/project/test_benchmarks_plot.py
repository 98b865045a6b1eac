"""benchmarks/plot.py: the contention chart, drawn by matplotlib (the `bench` extra)."""

from __future__ import annotations

import re
import sys
import tomllib
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"
BARS = [("psycopg2.pool", 5123.0), ("psycopg2-pool 1.2", 4000.0), ("psycopg_pool 3", 9000.0),
        ("this pool", 12000.0), ("this pool + instrument(), leaks on", 11000.0)]


@pytest.fixture(scope="module")
def bar_chart() -> object:
    pytest.importorskip("matplotlib", reason="matplotlib comes with the `bench` extra "
                                             "(and `test`, which includes it)")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import plot
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return plot.bar_chart


def test_chart_is_a_matplotlib_svg_with_every_bar(bar_chart: object, tmp_path: Path) -> None:
    path = tmp_path / "out" / "chart.svg"
    bar_chart(path, "Contention: checkouts per second", BARS)  # type: ignore[operator]
    text = path.read_text()
    root = ElementTree.fromstring(text)
    assert root.tag == f"{SVG}svg"
    assert re.search(r"Matplotlib v\d+\.\d+", text)  # drawn by it (the creator metadata)
    texts = ["".join(node.itertext()) for node in root.iter(f"{SVG}text")]
    assert "Contention: checkouts per second" in texts  # text stays text, not outlines
    for label, value in BARS:
        assert label in texts and f"{value:,.0f}" in texts, label
    # The bars: five rectangles whose widths keep the values' ratios, this pool's in blue.
    bars = [p for p in root.iter(f"{SVG}path")
            if "#3b7dd8" in p.get("style", "") or "#9aa5b1" in p.get("style", "")]
    assert len(bars) == len(BARS)
    assert sum("#3b7dd8" in p.get("style", "") for p in bars) == 2


def test_same_results_same_file(bar_chart: object, tmp_path: Path) -> None:
    first, second = tmp_path / "a.svg", tmp_path / "b.svg"
    bar_chart(first, "t", BARS)  # type: ignore[operator]
    bar_chart(second, "t", BARS)  # type: ignore[operator]
    assert first.read_bytes() == second.read_bytes()  # no date, fixed ids: diffs stay readable


def test_matplotlib_is_in_the_bench_extra_and_the_test_extra_takes_it() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(r.startswith("matplotlib") for r in extras["bench"])
    assert "psycopg2-pool[bench]" in extras["test"]
    assert not any(r.startswith("matplotlib") for r in extras["telemetry"] + extras["demo"])
    assert "<svg" not in (ROOT / "benchmarks" / "plot.py").read_text()  # no hand-drawn SVG
