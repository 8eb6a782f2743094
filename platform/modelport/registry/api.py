"""REST interface for models and versions (CONTRACT §3)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler
from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from modelport.accounts.schema import ErrorSerializer, TensorSpecSerializer, responses
from modelport.billing.models import MICRO
from modelport.common.problems import Problem
from modelport.registry import selectors, services
from modelport.registry.models import Model, ModelVersion


def model_data(model: Model) -> dict[str, Any]:
    default = selectors.version_default(model=model)
    now = timezone.now()
    royalty = selectors.royalty_at(model, now)
    pending = None
    if model.royalty_pending is not None and royalty != model.royalty_pending:  # not in force yet
        pending = {"value": model.royalty_pending / MICRO, "effective_at": model.royalty_pending_at.isoformat()}
    return {
        "owner": model.owner.username,
        "name": model.name,
        "visibility": model.visibility,
        "description": model.description,
        "default_version": default.number if default else None,
        "royalty": royalty / MICRO,
        "royalty_pending": pending,
        "created_at": model.created_at.isoformat(),
    }


def version_data(version: ModelVersion, *, include_log: bool = False) -> dict[str, Any]:
    data = {
        "version": version.number,
        "format": version.format,
        "runtime": version.runtime if version.status == ModelVersion.Status.READY else None,
        "requested_runtime": version.requested_runtime,
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
    # coerce_to_string=False: the schema declares a number (what clients send); a numeric string is accepted too.
    royalty = serializers.DecimalField(required=False, max_digits=12, decimal_places=6, min_value=Decimal(0),
                                       coerce_to_string=False,
                                       help_text="credits per call paid by other callers to the owner: a number "
                                                 "(or a numeric string) with at most six decimal places, at most "
                                                 "MODELPORT_MAX_ROYALTY_CREDITS (default 100); an increase "
                                                 "applies after MODELPORT_ROYALTY_NOTICE_S (default 24 h, "
                                                 "shown as royalty_pending), a decrease at once")
    visibility = serializers.ChoiceField(choices=Model.Visibility.choices, required=False)
    description = serializers.CharField(required=False, allow_blank=True, max_length=5000)


# --- shapes for the OpenAPI schema (the views build their answers with model_data/version_data) ---
class RoyaltyPendingSerializer(serializers.Serializer):
    value = serializers.FloatField(help_text="credits per call from effective_at on")
    effective_at = serializers.DateTimeField()


class ModelSerializer(serializers.Serializer):
    owner = serializers.CharField()
    name = serializers.CharField()
    visibility = serializers.ChoiceField(choices=Model.Visibility.choices)
    description = serializers.CharField(allow_blank=True)
    default_version = serializers.IntegerField(allow_null=True)
    royalty = serializers.FloatField(help_text="credits per call paid by other callers to the owner, now")
    royalty_pending = RoyaltyPendingSerializer(allow_null=True,
                                               help_text="an increase announced and not in force yet, else null")
    created_at = serializers.DateTimeField()


class ModelListSerializer(serializers.Serializer):
    results = ModelSerializer(many=True)


class SignatureSerializer(serializers.Serializer):
    inputs = TensorSpecSerializer(many=True)
    outputs = TensorSpecSerializer(many=True)


class VersionSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    format = serializers.ChoiceField(choices=ModelVersion.Format.choices)
    runtime = serializers.ChoiceField(
        choices=ModelVersion.Runtime.choices, allow_null=True,
        help_text="what serves the version once ready: onnx (onnxruntime) or torch (PyTorch in the sandbox)")
    requested_runtime = serializers.ChoiceField(choices=ModelVersion.RequestedRuntime.choices)
    status = serializers.ChoiceField(choices=ModelVersion.Status.choices)
    error = ErrorSerializer(allow_null=True)
    signature = SignatureSerializer(allow_null=True)
    report = serializers.DictField(help_text=(
        "parity_max_abs_error (null for ONNX uploads), latency_ms_p50 (onnxruntime's own run time on a "
        "generated sample, not an API call's), peak_memory_mb (peak resident memory the loaded model added in "
        "the validator, MiB), parameter_count, opset, …"))
    disabled = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    ready_at = serializers.DateTimeField(allow_null=True)
    log = serializers.CharField(required=False, allow_blank=True, help_text="validation/conversion log (owner only)")


class VersionListSerializer(serializers.Serializer):
    results = VersionSerializer(many=True)


@extend_schema_field({"type": "string", "format": "binary"})
class UploadedFileField(serializers.FileField):
    """A multipart file part: `format: binary`, so Swagger UI offers a file picker (drf-spectacular
    declares a plain FileField as a `uri` string unless requests and responses get split components)."""


@extend_schema_field({"type": "string", "example": ""})
class OptionalFormText(serializers.CharField):
    """An optional multipart text field whose example is empty, so Swagger UI leaves it out of a
    request instead of sending its placeholder "string" (which the upload would refuse)."""


class VersionUploadSerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=ModelVersion.Format.choices)
    artifact = UploadedFileField(
        help_text=".onnx; a TorchScript archive; state_dict weights (.safetensors, .pt, .pth); "
                  "a torch.export program (.pt2)")
    source = UploadedFileField(required=False, help_text="Python source defining the network (state_dict only)")
    entrypoint = OptionalFormText(required=False,
                                  help_text="nn.Module subclass or factory in source (state_dict only), e.g. `Net`")
    init_kwargs = OptionalFormText(required=False,
                                   help_text='JSON object passed to the entrypoint, e.g. `{"hidden": 64}`')
    inputs = OptionalFormText(
        required=False,
        help_text='JSON array [{"name", "dtype", "shape"}], e.g. `[{"name": "x", "dtype": "float32", '
                  '"shape": [null, 784]}]`; required for state_dict and torchscript (onnx and '
                  "exported_program carry their own)")
    outputs = OptionalFormText(required=False, help_text='JSON array of output names, e.g. `["y"]`')
    runtime = serializers.ChoiceField(
        choices=ModelVersion.RequestedRuntime.choices, required=False, default="auto",
        help_text="auto (default): ONNX when the conversion is faithful, else PyTorch in the sandbox, with "
                  "report.runtime_reason; onnx: refuse what does not convert; torch: skip the conversion")


def _model_access(request: Request, owner: str, name: str, *, write: bool = False) -> Model:
    # A NUL cannot be in a username or a slug (and PostgreSQL refuses it in a query): unknown model.
    if "\x00" in owner or "\x00" in name:
        raise selectors.model_not_found(owner, name)
    return selectors.model_access(user=request.user, owner=owner, name=name, write=write)


@extend_schema(tags=["models"])
class ModelListView(APIView):
    @extend_schema(operation_id="model_list", summary="Own and public models",
                   responses=responses({200: ModelListSerializer}))
    def get(self, request: Request) -> Response:
        return Response({"results": [model_data(m) for m in selectors.models_visible(user=request.user)]})

    @extend_schema(operation_id="model_create", request=ModelCreateSerializer,
                   responses=responses({201: ModelSerializer}, 400, 409, 415))
    def post(self, request: Request) -> Response:
        ser = ModelCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        model = services.model_create(owner=request.user, **ser.validated_data)
        return Response(model_data(model), status=201)


@extend_schema(tags=["models"])
class ModelDetailView(APIView):
    @extend_schema(operation_id="model_get", responses=responses({200: ModelSerializer}, 404))
    def get(self, request: Request, owner: str, name: str) -> Response:
        return Response(model_data(_model_access(request, owner, name)))

    @extend_schema(operation_id="model_update", request=ModelPatchSerializer,
                   responses=responses({200: ModelSerializer}, 400, 403, 404, 409, 415))
    def patch(self, request: Request, owner: str, name: str) -> Response:
        model = _model_access(request, owner, name, write=True)
        ser = ModelPatchSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        data = ser.validated_data
        if "default_version" in data:
            model = services.model_set_default(model=model, number=data["default_version"])
        if "royalty" in data:
            model = services.model_set_royalty(model=model, royalty=int(data.pop("royalty") * MICRO))
        if "visibility" in data or "description" in data:  # the dashboard's model page uses the same service
            model = services.model_update(model=model, visibility=data.get("visibility"),
                                          description=data.get("description"))
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


@extend_schema(tags=["models"])
class VersionListView(APIView):
    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        length = request.META.get("CONTENT_LENGTH") or "0"
        if request.method == "POST" and length.isdigit() and int(length) > settings.MODELPORT_MAX_UPLOAD_BYTES:
            raise Problem(413, f"upload exceeds {settings.MODELPORT_MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
        request._request.upload_handlers.insert(0, UploadLimitHandler(request._request))
        super().initial(request, *args, **kwargs)

    @extend_schema(operation_id="version_list", summary="Versions, newest first",
                   responses=responses({200: VersionListSerializer}, 404))
    def get(self, request: Request, owner: str, name: str) -> Response:
        model = _model_access(request, owner, name)
        return Response({"results": [version_data(v) for v in model.versions.order_by("-number")]})

    @extend_schema(operation_id="version_create", summary="Upload a version (validated and converted by workers)",
                   request={"multipart/form-data": VersionUploadSerializer},
                   responses=responses({202: VersionSerializer}, 400, 403, 404, 413, 415, 429, 503))
    def post(self, request: Request, owner: str, name: str) -> Response:
        model = _model_access(request, owner, name, write=True)
        files, data = request.FILES, request.data
        if not hasattr(data, "get"):
            raise Problem(400, "send the version as multipart/form-data fields", errors={"format": ["required"]})
        artifact, source = files.get("artifact"), files.get("source")
        for field, upload in (("artifact", artifact), ("source", source)):
            if upload is None and data.get(field) not in (None, ""):
                # The schema declares them files; a text field of that name is not one.
                raise Problem(400, f"{field} must be sent as a file (a multipart file part), not as a text field",
                              errors={field: ["expected a file"]})
        version = services.model_version_create(
            model=model,
            fmt=str(data.get("format", "")),
            artifact=services.Upload(artifact.name, artifact) if artifact else None,
            source=services.Upload(source.name, source) if source else None,
            entrypoint=str(data.get("entrypoint", "")),
            init_kwargs_raw=data.get("init_kwargs"),
            inputs_raw=data.get("inputs"),
            outputs_raw=data.get("outputs"),
            runtime=str(data.get("runtime", "") or "auto"),
        )
        return Response(version_data(version), status=202)


@extend_schema(tags=["models"])
class VersionDetailView(APIView):
    @extend_schema(operation_id="version_get", responses=responses({200: VersionSerializer}, 404))
    def get(self, request: Request, owner: str, name: str, number: int) -> Response:
        model = _model_access(request, owner, name)
        version = selectors.version_get(model=model, number=number)
        is_owner = model.owner_id == request.user.pk
        return Response(version_data(version, include_log=is_owner))
