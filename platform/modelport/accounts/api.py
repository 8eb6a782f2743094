"""API keys over the API (list by prefix, create, revoke)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from modelport.accounts.models import ApiKey
from modelport.accounts.schema import responses
from modelport.accounts.services import api_key_issue, api_key_may_manage_keys, api_key_revoke
from modelport.common.problems import Problem


def key_data(key: ApiKey) -> dict[str, Any]:
    return {
        "prefix": key.prefix,
        "name": key.name,
        "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "revoked": key.revoked_at is not None,
    }


class KeySerializer(serializers.Serializer):
    prefix = serializers.CharField()
    name = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked = serializers.BooleanField()


class KeyCreatedSerializer(KeySerializer):
    key = serializers.CharField(help_text="the secret; shown only in this response")


class KeyListSerializer(serializers.Serializer):
    results = KeySerializer(many=True)


class KeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True, help_text="a label (cut to 100 characters)")


def _key_name(data: Any) -> str:
    if not isinstance(data, dict):
        raise Problem(400, "the body must be an object", errors={"non_field_errors": ["expected an object"]})
    name = str(data.get("name", ""))[:100]
    if "\x00" in name:
        raise Problem(400, "name must not contain NUL characters", errors={"name": ["NUL character"]})
    return name


@extend_schema(tags=["keys"])
class KeyListView(APIView):
    @extend_schema(operation_id="key_list", responses=responses({200: KeyListSerializer}))
    def get(self, request: Request) -> Response:
        return Response({"results": [key_data(k) for k in ApiKey.objects.filter(user=request.user)]})

    @extend_schema(operation_id="key_create", request=KeyCreateSerializer,
                   description="Needs the dashboard's session or a key allowed to manage keys (today: a staff "
                               "user's key); any other API key is refused with 403 and nothing is created.",
                   responses=responses({201: KeyCreatedSerializer}, 400, 403, 415))
    def post(self, request: Request) -> Response:
        if request.auth is not None and not api_key_may_manage_keys(api_key=request.auth):
            raise Problem(403, "an API key cannot create keys: sign in to the dashboard, or use a key allowed to "
                               "manage keys")
        issued = api_key_issue(user=request.user, name=_key_name(request.data))
        return Response({**key_data(issued.api_key), "key": issued.secret}, status=201)


@extend_schema(tags=["keys"])
class KeyDetailView(APIView):
    @extend_schema(operation_id="key_revoke", responses=responses({204: None}, 404))
    def delete(self, request: Request, prefix: str) -> Response:
        # A NUL cannot be in a prefix (and PostgreSQL refuses it in a query): no such key.
        key = None if "\x00" in prefix else ApiKey.objects.filter(user=request.user, prefix=prefix).first()
        if key is None:
            raise Problem(404, f"no API key with prefix {prefix}")
        api_key_revoke(api_key=key)
        return Response(status=204)
