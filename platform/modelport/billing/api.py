"""GET /api/v1/account/usage — JSON, or CSV with `Accept: text/csv` (CONTRACT §6)."""

from __future__ import annotations

import csv
import io

from django.http import HttpResponse
from django.utils.dateparse import parse_date, parse_datetime
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from modelport.billing import selectors
from modelport.common.problems import Problem

PAGE = 500


def _when(request: Request, name: str):  # noqa: ANN202 - datetime | None
    raw = request.query_params.get(name)
    if not raw:
        return None
    value = parse_datetime(raw) if len(raw) > 10 else None
    if value is None:
        day = parse_date(raw) if len(raw) == 10 else None
        if day is None:
            raise Problem(400, f"{name} must be an ISO date or datetime", errors={name: [raw]})
        from datetime import UTC, datetime

        value = datetime(day.year, day.month, day.day, tzinfo=UTC)
    if value.tzinfo is None:
        raise Problem(400, f"{name} needs a timezone (e.g. 2026-01-01T00:00:00Z)", errors={name: [raw]})
    return value


class UsageView(APIView):
    def perform_content_negotiation(self, request: Request, force: bool = False):  # noqa: ANN201
        # CSV is rendered by hand below; DRF must not answer `Accept: text/csv` with a 406.
        return super().perform_content_negotiation(request, force=True)

    def get(self, request: Request) -> Response | HttpResponse:
        qs = selectors.usage_predictions(
            user=request.user, model=request.query_params.get("model") or None,
            key_prefix=request.query_params.get("key") or None,
            since=_when(request, "since"), until=_when(request, "until"),
        )
        if "text/csv" in request.headers.get("Accept", "") or request.query_params.get("format") == "csv":
            buffer = io.StringIO()
            fields = ["id", "created_at", "model", "version", "key", "status", "hardware", "compute_ms", "total_ms",
                      "charged", "royalty"]
            writer = csv.DictWriter(buffer, fieldnames=fields)
            writer.writeheader()
            for prediction in qs.iterator(chunk_size=1000):
                writer.writerow(selectors.usage_row(prediction))
            response = HttpResponse(buffer.getvalue(), content_type="text/csv")
            response["Content-Disposition"] = 'attachment; filename="modelport-usage.csv"'
            return response
        rows = [selectors.usage_row(p) for p in qs[:PAGE]]
        return Response({
            "results": rows,
            "truncated": len(rows) == PAGE,
            "daily": selectors.usage_daily(qs),
            "earnings": selectors.earnings(user=request.user),
        })
