"""Inline SVG line charts: no plotting library, no external files, readable offline."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
WIDTH, HEIGHT = 560, 320
LEFT, RIGHT, TOP, BOTTOM = 58, 16, 30, 62


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, x_label: str, y_label: str,
               markers: dict[str, float] | None = None, y_bounds: tuple[float, float] | None = None) -> str:
    """An SVG chart of named (x, y) series; ``markers`` draws labelled vertical lines (e.g. the best step).

    Non-finite points are skipped (a NaN loss breaks the line rather than the chart). ``y_bounds``: the range
    the values cannot leave (a fraction: 0 to 1); the padded axis stays inside it.
    """
    clean = {name: [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
             for name, points in series.items()}
    clean = {name: points for name, points in clean.items() if points}
    if not clean:
        return f'<p class="empty">{escape(title)}: nothing logged yet.</p>'
    frame = _Frame.around(clean, y_bounds)
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
             f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">',
             f'<title>{escape(title)}</title>',
             f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" class="chart-title">{escape(title)}</text>',
             *_axes(frame, x_label, y_label), *_markers(frame, markers or {}), *_lines(frame, clean), "</svg>"]
    return "".join(parts)


@dataclass(frozen=True)
class _Frame:
    """The plotted ranges, and data coordinates → pixels."""

    x0: float
    x1: float
    y0: float
    y1: float

    @classmethod
    def around(cls, series: dict[str, list[tuple[float, float]]],
               y_bounds: tuple[float, float] | None) -> _Frame:
        xs = [x for points in series.values() for x, _ in points]
        ys = [y for points in series.values() for _, y in points]
        x0, x1 = _span(min(xs), max(xs))
        y0, y1 = _span(min(ys), max(ys))
        if y_bounds is not None:
            y0, y1 = max(y0, y_bounds[0]), min(y1, y_bounds[1])
        return cls(x0, x1, y0, y1)

    def px(self, x: float) -> float:
        return LEFT + (x - self.x0) / (self.x1 - self.x0) * (WIDTH - LEFT - RIGHT)

    def py(self, y: float) -> float:
        return HEIGHT - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (HEIGHT - TOP - BOTTOM)


def _axes(f: _Frame, x_label: str, y_label: str) -> list[str]:
    """Grid lines, ticks, both axes and their labels."""
    parts = []
    for tick in _ticks(f.y0, f.y1):
        y = f.py(tick)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{tick:g}</text>')
    for tick in _ticks(f.x0, f.x1):
        x = f.px(tick)
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" class="tick">{tick:g}</text>')
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM}" class="axis"/>')
    parts.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" class="axis"/>')
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - BOTTOM + 32}" text-anchor="middle" class="label">'
                 f'{escape(x_label)}</text>')
    parts.append(f'<text x="14" y="{HEIGHT / 2}" text-anchor="middle" class="label" '
                 f'transform="rotate(-90 14 {HEIGHT / 2})">{escape(y_label)}</text>')
    return parts


def _markers(f: _Frame, markers: dict[str, float]) -> list[str]:
    parts = []
    for name, x in markers.items():
        if f.x0 <= x <= f.x1:
            parts.append(f'<line x1="{f.px(x):.1f}" x2="{f.px(x):.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" '
                         'class="marker"/>')
            parts.append(f'<text x="{f.px(x) + 3:.1f}" y="{TOP + 10}" class="tick">{escape(name)}</text>')
    return parts


def _lines(f: _Frame, series: dict[str, list[tuple[float, float]]]) -> list[str]:
    """One polyline per series (dots with hover values on sparse ones), and the legend."""
    parts = []
    lx = 10.0
    for k, (name, points) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        path = " ".join(f"{f.px(x):.1f},{f.py(y):.1f}" for x, y in points)
        parts.append(f'<polyline class="series" data-series="{escape(name)}" fill="none" stroke="{color}" '
                     f'stroke-width="2" points="{path}"/>')
        if len(points) <= 60:  # dots (with hover values) on sparse series such as evaluations
            for x, y in points:
                parts.append(f'<circle cx="{f.px(x):.1f}" cy="{f.py(y):.1f}" r="3" fill="{color}">'
                             f'<title>{escape(name)}: step {x:g}, {y:.4f}</title></circle>')
        parts.append(f'<rect x="{lx}" y="{HEIGHT - 14}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{lx + 14}" y="{HEIGHT - 5}" class="legend">{escape(name)}</text>')
        lx += 24 + 6.5 * len(name)  # legend: one row under the x-axis label
    return parts


def _span(low: float, high: float) -> tuple[float, float]:
    if high - low < 1e-12:
        pad = abs(low) * 0.05 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.04
    return low - pad, high + pad


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values between low and high."""
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    ticks, value = [], first
    while value <= high + 1e-12:
        ticks.append(round(value, 10))
        value += step
    return ticks
