"""API keys over the API (list by prefix, create, revoke)."""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from modelport.accounts.models import ApiKey
from modelport.accounts.services import api_key_issue, api_key_revoke
from modelport.common.problems import Problem


def key_data(key: ApiKey) -> dict[str, Any]:
    return {
        "prefix": key.prefix,
        "name": key.name,
        "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "revoked": key.revoked_at is not None,
    }


class KeyListView(APIView):
    def get(self, request: Request) -> Response:
        return Response({"results": [key_data(k) for k in ApiKey.objects.filter(user=request.user)]})

    def post(self, request: Request) -> Response:
        name = str(request.data.get("name", ""))[:100]
        issued = api_key_issue(user=request.user, name=name)
        return Response({**key_data(issued.api_key), "key": issued.secret}, status=201)


class KeyDetailView(APIView):
    def delete(self, request: Request, prefix: str) -> Response:
        key = ApiKey.objects.filter(user=request.user, prefix=prefix).first()
        if key is None:
            raise Problem(404, f"no API key with prefix {prefix}")
        api_key_revoke(api_key=key)
        return Response(status=204)
