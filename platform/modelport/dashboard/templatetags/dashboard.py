"""Template filters for the dashboard pages."""

from __future__ import annotations

import json
from typing import Any

from django import template

from modelport.billing.display import credits_display

register = template.Library()

FORMAT_LABELS = {"onnx": "ONNX", "torchscript": "TorchScript", "state_dict": "state_dict"}


@register.filter
def format_label(fmt: str) -> str:
    return FORMAT_LABELS.get(fmt, fmt)


@register.filter
def shape(dims: list[int | None] | None) -> str:
    """[null, 784] -> "[?, 784]": a dynamic axis reads as "?"."""
    if dims is None:
        return "—"
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


@register.filter
def credits(micro: int | None) -> str:
    """µc -> credits as people see them everywhere (billing.display: "50,000.000000")."""
    return credits_display(micro or 0)


@register.filter
def tojson(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


@register.filter
def report_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:,.2f}"
    return str(value)
