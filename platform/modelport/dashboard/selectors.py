"""Reads behind the billing page: a user's calls, per-day totals and latency percentiles.

Everything here is scoped to one user's own predictions (`Prediction.user`), so no other
tenant's data can appear. Amounts are micro-credits (µc).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from modelport.gateway.models import Prediction
from modelport.registry.models import Model

# Latency percentiles are computed in Python (portable across Postgres and SQLite) over at most
# this many recent calls.
LATENCY_SAMPLE = 20_000


@dataclass(frozen=True)
class DayTotal:
    day: date
    calls: int
    charged: int  # µc


@dataclass(frozen=True)
class ModelLatency:
    model: str  # "owner/name"
    calls: int
    p50_ms: float
    p99_ms: float


def usage_predictions(
    *, user: AbstractBaseUser, model_id: int | None = None, date_from: date | None = None, date_to: date | None = None
) -> QuerySet[Prediction]:
    """`user`'s calls, newest first, optionally of one model and within [date_from, date_to] (UTC days)."""
    qs = Prediction.objects.select_related("version__model__owner").filter(user=user)
    if model_id is not None:
        qs = qs.filter(version__model_id=model_id)
    if date_from is not None:
        qs = qs.filter(created_at__date__gte=date_from)
    if date_to is not None:
        qs = qs.filter(created_at__date__lte=date_to)
    return qs.order_by("-created_at")


def usage_models(*, user: AbstractBaseUser) -> list[Model]:
    """The models `user` has called (for the usage filter), by name."""
    return list(
        Model.objects.select_related("owner")
        .filter(versions__predictions__user=user)
        .distinct()
        .order_by("owner__username", "name")
    )


def usage_daily(*, user: AbstractBaseUser, days: int) -> list[DayTotal]:
    """Calls and credits charged per UTC day for the last `days` days (today included), zeros filled."""
    today = timezone.now().date()
    start = today - timedelta(days=days - 1)
    rows = (
        Prediction.objects.filter(user=user, created_at__date__gte=start)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(calls=Count("id"), charged=Sum("charged"))
        .order_by("day")
    )
    by_day = {row["day"]: row for row in rows}
    out = []
    for i in range(days):
        day = start + timedelta(days=i)
        row = by_day.get(day)
        out.append(DayTotal(day=day, calls=row["calls"] if row else 0, charged=(row["charged"] or 0) if row else 0))
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending, non-empty list."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_by_model(*, user: AbstractBaseUser, days: int) -> list[ModelLatency]:
    """p50/p99 of the end-to-end time (`metrics.total_ms`) of `user`'s succeeded calls per model."""
    since = timezone.now() - timedelta(days=days)
    rows = (
        Prediction.objects.filter(user=user, status=Prediction.Status.SUCCEEDED, created_at__gte=since)
        .order_by("-created_at")
        .values_list("version__model__owner__username", "version__model__name", "metrics")[:LATENCY_SAMPLE]
    )
    samples: dict[str, list[float]] = {}
    for owner, name, metrics in rows:
        total: Any = (metrics or {}).get("total_ms")
        if isinstance(total, int | float):
            samples.setdefault(f"{owner}/{name}", []).append(float(total))
    out = []
    for model, values in sorted(samples.items()):
        values.sort()
        out.append(
            ModelLatency(model=model, calls=len(values), p50_ms=percentile(values, 50), p99_ms=percentile(values, 99))
        )
    return out
