"""GET /api/v1/account/usage — JSON, or CSV with `Accept: text/csv` (CONTRACT §6)."""

from __future__ import annotations

import csv
import io

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from modelport.accounts.schema import DATE_OR_DATE_TIME, responses
from modelport.billing import selectors
from modelport.common.problems import Problem
from modelport.common.when import parse_when

PAGE = 500


def _when(request: Request, name: str):
    raw = request.query_params.get(name)
    if not raw:
        return None
    return parse_when(raw, name=name)


def _filter(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name) or None
    if raw is not None and "\x00" in raw:  # PostgreSQL refuses NUL in a query; nothing can match it
        raise Problem(400, f"{name} must not contain NUL characters", errors={name: ["NUL character"]})
    return raw


class UsageRowSerializer(serializers.Serializer):
    id = serializers.CharField()
    created_at = serializers.DateTimeField()
    model = serializers.CharField(help_text="owner/name")
    version = serializers.IntegerField()
    key = serializers.CharField(allow_blank=True, help_text="prefix of the API key that made the call")
    status = serializers.CharField()
    hardware = serializers.CharField(allow_blank=True)
    compute_ms = serializers.FloatField(allow_null=True)
    total_ms = serializers.FloatField(allow_null=True)
    charged = serializers.FloatField(help_text="credits")
    royalty = serializers.FloatField(help_text="credits")


class UsageDaySerializer(serializers.Serializer):
    date = serializers.DateField()
    calls = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    credits = serializers.FloatField()


class EarningSerializer(serializers.Serializer):
    model = serializers.CharField(help_text="owner/name")
    calls = serializers.IntegerField()
    royalty = serializers.FloatField(help_text="credits")


class UsageSerializer(serializers.Serializer):
    results = UsageRowSerializer(many=True)
    truncated = serializers.BooleanField(help_text=f"true when more than {PAGE} rows matched (CSV has them all)")
    daily = UsageDaySerializer(many=True)
    earnings = EarningSerializer(many=True)


_WHEN_HELP = "ISO date (UTC midnight) or datetime with a timezone"


class UsageView(APIView):
    def perform_content_negotiation(self, request: Request, force: bool = False):
        # CSV is rendered by hand below; DRF must not answer `Accept: text/csv` with a 406.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        operation_id="account_usage", tags=["account"], summary="The caller's calls, daily totals and royalties",
        parameters=[
            OpenApiParameter("model", str, description="owner/name"),
            OpenApiParameter("key", str, description="API key prefix"),
            OpenApiParameter("since", DATE_OR_DATE_TIME, description=_WHEN_HELP),
            OpenApiParameter("until", DATE_OR_DATE_TIME, description=_WHEN_HELP),
            OpenApiParameter("format", str, enum=["csv"], description="csv: the same as `Accept: text/csv`"),
        ],
        responses=responses({(200, "application/json"): UsageSerializer, (200, "text/csv"): OpenApiTypes.STR}, 400),
    )
    def get(self, request: Request) -> Response | HttpResponse:
        qs = selectors.usage_predictions(
            user=request.user, model=_filter(request, "model"), key_prefix=_filter(request, "key"),
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
