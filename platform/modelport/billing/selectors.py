"""Usage reads: per-call rows, daily aggregates, earnings of public models' owners."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import TruncDate

from modelport.billing.models import MICRO, LedgerEntry
from modelport.gateway.models import Prediction


def usage_predictions(*, user: AbstractBaseUser, model: str | None = None, key_prefix: str | None = None,
                      since: datetime | None = None, until: datetime | None = None) -> QuerySet[Prediction]:
    qs = Prediction.objects.select_related("version__model__owner", "api_key").filter(user=user)
    if model:
        owner, _, name = model.partition("/")
        qs = qs.filter(version__model__owner__username=owner, version__model__name=name)
    if key_prefix:
        qs = qs.filter(api_key__prefix=key_prefix)
    if since:
        qs = qs.filter(created_at__gte=since)
    if until:
        qs = qs.filter(created_at__lt=until)
    return qs.order_by("-created_at")


def usage_row(p: Prediction) -> dict[str, Any]:
    model = p.version.model
    return {
        "id": p.id,
        "created_at": p.created_at.isoformat(),
        "model": f"{model.owner.username}/{model.name}",
        "version": p.version.number,
        "key": p.api_key.prefix if p.api_key else "",
        "status": p.status,
        "hardware": p.hardware,
        "compute_ms": (p.metrics or {}).get("compute_ms"),
        "total_ms": (p.metrics or {}).get("total_ms"),
        "charged": p.charged / MICRO,
        "royalty": p.royalty / MICRO,
    }


def usage_daily(qs: QuerySet[Prediction]) -> list[dict[str, Any]]:
    rows = (qs.order_by().annotate(day=TruncDate("created_at")).values("day")
            .annotate(calls=Count("id"), succeeded=Count("id", filter=Q(status=Prediction.Status.SUCCEEDED)),
                      charged=Sum("charged")).order_by("day"))
    return [{"date": r["day"].isoformat(), "calls": r["calls"], "succeeded": r["succeeded"],
             "credits": (r["charged"] or 0) / MICRO} for r in rows]


def earnings(*, user: AbstractBaseUser) -> list[dict[str, Any]]:
    """Royalties credited to `user` per model (from the ledger, so they match the balance)."""
    rows = (LedgerEntry.objects.filter(account__user=user, kind=LedgerEntry.Kind.ROYALTY)
            .values(owner=F("prediction__version__model__owner__username"), name=F("prediction__version__model__name"))
            .annotate(calls=Count("id"), royalty=Sum("amount")).order_by("owner", "name"))
    return [{"model": f"{r['owner']}/{r['name']}", "calls": r["calls"], "royalty": r["royalty"] / MICRO}
            for r in rows]
