"""A horizontal bar chart as a standalone SVG: a picture of a result without a plotting
library (the benchmarks need nothing beyond the test extra)."""

from __future__ import annotations

from html import escape
from pathlib import Path

ROW, LABEL, WIDTH = 26, 300, 360


def bar_chart(path: Path, title: str, bars: list[tuple[str, float]]) -> None:
    """Write ``bars`` (label, value), longest bar scaled to the chart's width, to ``path``."""
    top = max((value for _, value in bars), default=0.0) or 1.0
    height = 40 + ROW * len(bars)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{LABEL + WIDTH + 90}" '
        f'height="{height}" font-family="sans-serif" font-size="13">',
        f'<text x="8" y="20" font-weight="bold">{escape(title)}</text>',
    ]
    for row, (label, value) in enumerate(bars):
        y = 32 + row * ROW
        width = max(1.0, WIDTH * value / top)
        colour = "#3b7dd8" if label.startswith("this pool") else "#9aa5b1"
        parts += [
            f'<text x="{LABEL - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>',
            f'<rect x="{LABEL}" y="{y}" width="{width:.1f}" height="{ROW - 6}" '
            f'fill="{colour}"/>',
            f'<text x="{LABEL + width + 6:.1f}" y="{y + 15}">{value:,.0f}</text>',
        ]
    parts.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")
