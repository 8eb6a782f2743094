"""Server-rendered SVG charts (no JavaScript, no chart library).

Each function returns a self-contained `<svg>` that scales to its container's width (viewBox);
every bar carries a `<title>` so hovering (or a screen reader) gives the exact value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import count

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

WIDTH = 640
_ids = count(1)


def nice_ceiling(value: float) -> float:
    """The smallest 1/2/2.5/5 times 10^k that is >= value (1 for an empty or zero series)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def _n(value: float) -> str:
    """A coordinate with one decimal (format_html escapes its arguments to strings first)."""
    return f"{value:.1f}"


def fmt_number(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    if abs(value) >= 10:
        return f"{value:,.1f}"
    return f"{value:.3g}"


def _svg(title: str, height: int, body: SafeString) -> SafeString:
    ident = f"chart-{next(_ids)}"
    return format_html(
        '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-labelledby="{}" '
        'xmlns="http://www.w3.org/2000/svg"><title id="{}">{}</title>{}</svg>',
        WIDTH,
        height,
        ident,
        ident,
        title,
        body,
    )


def bar_chart(
    *, title: str, bars: Sequence[tuple[str, float]], unit: str, integer: bool = False, height: int = 220
) -> SafeString:
    """Vertical bars (e.g. one per day) with a y axis of four gridlines; `integer` keeps the
    gridlines on whole numbers (counts)."""
    left, right, top, bottom = 56, 8, 10, 28
    plot_w, plot_h = WIDTH - left - right, height - top - bottom
    highest = max((v for _, v in bars), default=0)
    top_value = 4 * math.ceil(max(highest, 1) / 4) if integer else nice_ceiling(highest)
    parts: list[SafeString] = []
    for i in range(5):
        value = top_value * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(
            format_html(
                '<line class="grid" x1="{}" x2="{}" y1="{}" y2="{}"/>'
                '<text class="tick" x="{}" y="{}" text-anchor="end">{}</text>',
                left,
                WIDTH - right,
                _n(y),
                _n(y),
                left - 6,
                _n(y + 4),
                fmt_number(value),
            )
        )
    n = max(len(bars), 1)
    slot = plot_w / n
    every = max(1, math.ceil(n / 7))
    for i, (label, value) in enumerate(bars):
        h = plot_h * value / top_value
        x = left + i * slot + slot * 0.15
        parts.append(
            format_html(
                '<rect class="bar" x="{}" y="{}" width="{}" height="{}"><title>{}: {} {}</title></rect>',
                _n(x),
                _n(top + plot_h - h),
                _n(slot * 0.7),
                _n(h),
                label,
                fmt_number(value),
                unit,
            )
        )
        if i % every == 0:
            parts.append(
                format_html(
                    '<text class="tick" x="{}" y="{}" text-anchor="middle">{}</text>',
                    _n(left + i * slot + slot / 2),
                    height - 8,
                    label,
                )
            )
    if not any(v for _, v in bars):
        parts.append(
            format_html(
                '<text class="empty" x="{}" y="{}" text-anchor="middle">No calls yet</text>',
                left + plot_w / 2,
                top + plot_h / 2,
            )
        )
    return _svg(title, height, mark_safe("".join(parts)))  # noqa: S308 - every part is format_html output


def latency_chart(*, title: str, rows: Sequence[tuple[str, float, float]]) -> SafeString:
    """Horizontal bar pairs (p50, p99) per model, in milliseconds."""
    left, right, top, row_h, axis_h = 8, 16, 26, 44, 24
    plot_w = WIDTH - left - right
    height = top + max(len(rows), 1) * row_h + axis_h
    top_value = nice_ceiling(max((p99 for _, _, p99 in rows), default=0))
    parts: list[SafeString] = [
        format_html(
            '<rect class="bar" x="{}" y="6" width="12" height="10"/><text class="tick" x="{}" y="15">p50</text>'
            '<rect class="bar bar-alt" x="{}" y="6" width="12" height="10"/>'
            '<text class="tick" x="{}" y="15">p99</text>',
            left,
            left + 16,
            left + 56,
            left + 72,
        )
    ]
    axis_y = top + max(len(rows), 1) * row_h
    for i in range(5):
        x = left + plot_w * i / 4
        parts.append(
            format_html(
                '<line class="grid" x1="{}" x2="{}" y1="{}" y2="{}"/>'
                '<text class="tick" x="{}" y="{}" text-anchor="{}">{} ms</text>',
                _n(x),
                _n(x),
                top,
                axis_y,
                _n(x),
                axis_y + 16,
                "start" if i == 0 else "end" if i == 4 else "middle",
                fmt_number(top_value * i / 4),
            )
        )
    for i, (model, p50, p99) in enumerate(rows):
        y = top + i * row_h
        parts.append(format_html('<text class="label" x="{}" y="{}">{}</text>', left, y + 12, model))
        for j, (name, value) in enumerate((("p50", p50), ("p99", p99))):
            parts.append(
                format_html(
                    '<rect class="bar{}" x="{}" y="{}" width="{}" height="10"><title>{} {}: {} ms</title></rect>',
                    " bar-alt" if j else "",
                    left,
                    y + 16 + j * 12,
                    _n(max(plot_w * value / top_value, 1)),
                    model,
                    name,
                    fmt_number(value),
                )
            )
    if not rows:
        parts.append(
            format_html(
                '<text class="empty" x="{}" y="{}" text-anchor="middle">No calls yet</text>', WIDTH / 2, top + row_h / 2
            )
        )
    return _svg(title, height, mark_safe("".join(parts)))  # noqa: S308 - every part is format_html output
