"""REST interface for models and versions (CONTRACT §3)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from modelport.billing.models import MICRO
from modelport.common.problems import Problem
from modelport.registry import selectors, services
from modelport.registry.models import Model, ModelVersion


def model_data(model: Model) -> dict[str, Any]:
    default = selectors.version_default(model=model)
    return {
        "owner": model.owner.username,
        "name": model.name,
        "visibility": model.visibility,
        "description": model.description,
        "default_version": default.number if default else None,
        "royalty": model.royalty_per_call / MICRO,
        "created_at": model.created_at.isoformat(),
    }


def version_data(version: ModelVersion, *, include_log: bool = False) -> dict[str, Any]:
    data = {
        "version": version.number,
        "format": version.format,
        "status": version.status,
        "error": version.error,
        "signature": version.signature,
        "report": version.report or {},
        "disabled": version.disabled,
        "created_at": version.created_at.isoformat(),
        "ready_at": version.ready_at.isoformat() if version.ready_at else None,
    }
    if include_log:
        data["log"] = version.log
    return data


class ModelCreateSerializer(serializers.Serializer):
    name = serializers.RegexField(r"^[a-z0-9][a-z0-9._-]{0,99}$")
    visibility = serializers.ChoiceField(choices=Model.Visibility.choices, default=Model.Visibility.PRIVATE)
    description = serializers.CharField(required=False, allow_blank=True, max_length=5000, default="")


class ModelPatchSerializer(serializers.Serializer):
    default_version = serializers.IntegerField(required=False, min_value=1)
    royalty = serializers.DecimalField(required=False, max_digits=12, decimal_places=6, min_value=Decimal(0),
                                       help_text="credits per call paid by other callers to the owner")
    visibility = serializers.ChoiceField(choices=Model.Visibility.choices, required=False)
    description = serializers.CharField(required=False, allow_blank=True, max_length=5000)


class ModelListView(APIView):
    def get(self, request: Request) -> Response:
        return Response({"results": [model_data(m) for m in selectors.models_visible(user=request.user)]})

    def post(self, request: Request) -> Response:
        ser = ModelCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        model = services.model_create(owner=request.user, **ser.validated_data)
        return Response(model_data(model), status=201)


class ModelDetailView(APIView):
    def get(self, request: Request, owner: str, name: str) -> Response:
        return Response(model_data(selectors.model_access(user=request.user, owner=owner, name=name)))

    def patch(self, request: Request, owner: str, name: str) -> Response:
        model = selectors.model_access(user=request.user, owner=owner, name=name, write=True)
        ser = ModelPatchSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        data = ser.validated_data
        if "default_version" in data:
            model = services.model_set_default(model=model, number=data["default_version"])
        if "royalty" in data:
            data["royalty_per_call"] = int(data.pop("royalty") * MICRO)
        changed = [f for f in ("visibility", "description", "royalty_per_call") if f in data]
        for field in changed:
            setattr(model, field, data[field])
        if changed:
            model.save(update_fields=changed)
        return Response(model_data(model))


class UploadLimitHandler(FileUploadHandler):
    """Refuses a multipart body past MODELPORT_MAX_UPLOAD_BYTES while it streams in, so a body
    without (or lying in) Content-Length cannot fill the disk."""

    def __init__(self, request: Any = None) -> None:
        super().__init__(request)
        self.total = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.total += len(raw_data)
        if self.total > settings.MODELPORT_MAX_UPLOAD_BYTES:
            raise Problem(413, f"upload exceeds {settings.MODELPORT_MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


class VersionListView(APIView):
    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        length = request.META.get("CONTENT_LENGTH") or "0"
        if request.method == "POST" and length.isdigit() and int(length) > settings.MODELPORT_MAX_UPLOAD_BYTES:
            raise Problem(413, f"upload exceeds {settings.MODELPORT_MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
        request._request.upload_handlers.insert(0, UploadLimitHandler(request._request))
        super().initial(request, *args, **kwargs)

    def get(self, request: Request, owner: str, name: str) -> Response:
        model = selectors.model_access(user=request.user, owner=owner, name=name)
        return Response({"results": [version_data(v) for v in model.versions.order_by("-number")]})

    def post(self, request: Request, owner: str, name: str) -> Response:
        model = selectors.model_access(user=request.user, owner=owner, name=name, write=True)
        files, data = request.FILES, request.data
        artifact, source = files.get("artifact"), files.get("source")
        version = services.model_version_create(
            model=model,
            fmt=str(data.get("format", "")),
            artifact=services.Upload(artifact.name, artifact) if artifact else None,
            source=services.Upload(source.name, source) if source else None,
            entrypoint=str(data.get("entrypoint", "")),
            init_kwargs_raw=data.get("init_kwargs"),
            inputs_raw=data.get("inputs"),
            outputs_raw=data.get("outputs"),
        )
        return Response(version_data(version), status=202)


class VersionDetailView(APIView):
    def get(self, request: Request, owner: str, name: str, number: int) -> Response:
        model = selectors.model_access(user=request.user, owner=owner, name=name)
        version = selectors.version_get(model=model, number=number)
        is_owner = model.owner_id == request.user.pk
        return Response(version_data(version, include_log=is_owner))
