"""The benchmark's bar chart, drawn with matplotlib (the `bench` extra) as a standalone SVG."""

from __future__ import annotations

from pathlib import Path

import matplotlib
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure

THIS, OTHER = "#3b7dd8", "#9aa5b1"  # this pool's bars stand out; the peers are grey


def bar_chart(path: Path, title: str, bars: list[tuple[str, float]]) -> None:
    """Write ``bars`` (label, value) as a horizontal bar chart, first bar on top, to ``path``.

    Text stays text in the SVG (searchable, and the file stays small); no pyplot, so no global
    state and no display is needed.
    """
    labels = [label for label, _ in bars]
    values = [value for _, value in bars]
    figure = Figure(figsize=(8.0, 0.8 + 0.32 * max(len(bars), 1)), layout="constrained")
    FigureCanvasSVG(figure)
    axes = figure.add_subplot()
    rows = range(len(bars))
    drawn = axes.barh(rows, values, height=0.7,
                      color=[THIS if label.startswith("this pool") else OTHER
                             for label in labels])
    axes.bar_label(drawn, labels=[f"{value:,.0f}" for value in values], padding=4,
                   fontsize=9)
    axes.set_yticks(list(rows), labels=labels, fontsize=9)
    axes.invert_yaxis()
    axes.set_title(title, loc="left", fontsize=11, fontweight="bold")
    axes.margins(x=0.15)
    axes.spines[["top", "right"]].set_visible(False)
    axes.tick_params(axis="x", labelsize=8)
    axes.xaxis.set_major_formatter("{x:,.0f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Text as <text>, not outlines; a fixed salt and no date: the same results, the same file.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "psycopg2-pool"}), \
            path.open("w") as out:
        figure.savefig(out, format="svg", metadata={"Title": title, "Date": None})


__all__ = ["bar_chart"]
