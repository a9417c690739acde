"""Charts drawn on the server as inline SVG: no JavaScript library, nothing to build."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup


def bar_chart(
    points: Sequence[tuple[str, float]],
    *,
    width: int = 360,
    height: int = 80,
    unit: str = "",
    color: str = "#3b82f6",
    max_value: float | None = None,
    label: str = "",
) -> Markup:
    """Bars, one per point (label, value), oldest first; each bar's title says its value."""
    n = max(len(points), 1)
    top = max(max_value or 0.0, *(v for _, v in points), 0.0) if points else (max_value or 0.0)
    top = top or 1.0
    plot_h = height - 14
    room = plot_h - 11  # the top 11 px hold the "max" label
    bar_w = width / n
    bars = []
    for i, (name, value) in enumerate(points):
        h = 0.0 if value <= 0 else max(1.0, room * value / top)
        shown = f"{value:g}{unit}"
        bars.append(
            f'<rect x="{i * bar_w:.2f}" y="{plot_h - h:.2f}" width="{max(bar_w - 1, 0.5):.2f}"'
            f' height="{h:.2f}" fill="{color}">'
            f"<title>{escape(name)}: {escape(shown)}</title></rect>"
        )
    peak = f"{top:g}{unit}"
    first = escape(points[0][0]) if points else ""
    last = escape(points[-1][0]) if points else ""
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}"'
        f' role="img" aria-label="{escape(label)}">'
        f'<line x1="0" y1="{plot_h}" x2="{width}" y2="{plot_h}" stroke="#cbd5e1"/>'
        f"{''.join(bars)}"
        f'<text x="0" y="{height - 2}" class="axis">{first}</text>'
        f'<text x="{width}" y="{height - 2}" class="axis" text-anchor="end">{last}</text>'
        f'<text x="2" y="9" class="axis">max {escape(peak)}</text>'
        "</svg>"
    )
