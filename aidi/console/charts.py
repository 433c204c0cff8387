"""Line charts as inline SVG, drawn on the server: no JavaScript library, no CDN, nothing to load in a cluster
without internet. The page's auto-refresh replaces them with the live part, so they follow a running job.

The console's Content-Security-Policy forbids inline styles, so colours and dashes are SVG presentation
attributes (``stroke``, ``stroke-dasharray``), never ``style=``. The legend is HTML beside the SVG, so its
labels wrap and read in either language; every point has a ``<title>`` (its value on hover).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

# Colour-blind-safe (Okabe-Ito), then two greys: 8 series before colours repeat (6 branches in the pipeline).
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#555555", "#999999")
WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 52, 14, 22, 30


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    colour: str = PALETTE[0]
    dashed: bool = False


@dataclass
class Chart:
    title: str
    series: list[Series]
    chart_id: str
    markers: list[tuple[float, str]] = field(default_factory=list)  # vertical lines: the steps' starts
    y_min: float | None = None   # e.g. 0..1 for precision, recall, mIoU
    y_max: float | None = None
    x_label: str = ""


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 2.5 or 5 × a power of ten apart)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 10) for i in range(first, last + 1)]  # the last tick at or above ``high``


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def render(chart: Chart, empty_text: str) -> str:
    """The chart as a ``<figure>``: title, SVG plot, legend."""
    e = escape
    points = [p for s in chart.series for p in s.points if math.isfinite(p[1])]
    head = f'<figure class="chart" id="{e(chart.chart_id)}"><figcaption>{e(chart.title)}</figcaption>'
    if not points:
        return head + f'<p class="empty">{e(empty_text)}</p></figure>'
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_ticks = nice_ticks(min(0.0, min(xs)), max(xs))
    y_low = chart.y_min if chart.y_min is not None else min(ys)
    y_high = chart.y_max if chart.y_max is not None else max(ys)
    if chart.y_min is None and y_low > 0 and y_low < 0.5 * y_high:
        y_low = 0.0  # a loss curve reads best from zero when it has come down that far
    y_ticks = nice_ticks(y_low, y_high, 4)
    x0, x1 = x_ticks[0], x_ticks[-1]
    y0, y1 = y_ticks[0], y_ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / ((x1 - x0) or 1) * plot_w

    def sy(y: float) -> float:
        return TOP + plot_h - (y - y0) / ((y1 - y0) or 1) * plot_h

    parts = [f'<svg class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{e(chart.title)}" '
             f'xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="sans-serif">']
    for y in y_ticks:
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#e5e7eb"/>'
                     f'<text x="{LEFT - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" fill="#4b5563">{_fmt(y)}</text>')
    for x in x_ticks:
        parts.append(f'<text x="{sx(x):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" fill="#4b5563">'
                     f'{_fmt(x)}</text>')
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" stroke="#9ca3af"/>')
    if chart.x_label:
        parts.append(f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 2}" text-anchor="end" fill="#6b7280">'
                     f'{e(chart.x_label)}</text>')
    for x, label in chart.markers:
        if x0 <= x <= x1:
            parts.append(f'<line class="marker" x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{TOP}" y2="{TOP + plot_h}" '
                         f'stroke="#9ca3af" stroke-dasharray="3 3"/><text x="{sx(x) + 3:.1f}" y="{TOP - 6}" '
                         f'fill="#6b7280">{e(label)}</text>')
    for s in chart.series:
        pts = [(x, y) for x, y in s.points if math.isfinite(y)]
        if not pts:
            continue
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline class="series" data-label="{e(s.label)}" fill="none" stroke="{s.colour}" '
                     f'stroke-width="1.8"{dash} points="{path}"/>')
        if len(pts) <= 40:  # few points (validation once per step): show each, with its value on hover
            for x, y in pts:
                parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{s.colour}">'
                             f'<title>{e(s.label)}: {_fmt(y)} @ {_fmt(x)}</title></circle>')
    parts.append("</svg>")
    dashes = ' stroke-dasharray="5 3"'
    legend = "".join(
        f'<li><svg width="22" height="8" aria-hidden="true"><line x1="0" x2="22" y1="4" y2="4" stroke="{s.colour}" '
        f'stroke-width="2.5"{dashes if s.dashed else ""}/></svg>{e(s.label)} '
        f'<b>{_fmt(s.points[-1][1]) if s.points else "-"}</b></li>' for s in chart.series)
    return head + "".join(parts) + f'<ul class="legend">{legend}</ul></figure>'


def colours(labels: Sequence[str]) -> dict[str, str]:
    """A stable colour per label (the branch keeps its colour on every chart of the page)."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}
