"""OpenAPI pieces shared by the native API's views (drf-spectacular; served at /api/schema/).

- `ApiKeyAuthenticationScheme` makes `Authorization: Bearer <api key>` the schema's security
  scheme (`bearerAuth`).
- `ProblemSerializer` and `problems(...)` document the problem+json error bodies (CONTRACT §2):
  every documented error status answers `application/problem+json`.
- The gateway's DRF views (account, prediction get/list/cancel) are documented from here through
  `OpenApiViewExtension`s, so their module stays free of documentation code. The native
  prediction *create* endpoint is a plain async Django view that drf-spectacular cannot see; it is
  added by the postprocessing hook `native_prediction_paths` (enabled in SPECTACULAR_SETTINGS).

The serializers here only describe shapes; no view validates with them.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiViewExtension
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers

PROBLEM = "application/problem+json"

_PROBLEM_TEXT = {
    400: "Invalid input; `errors` names the offending fields.",
    401: "No API key, or an invalid or revoked one.",
    402: "Not enough credits for the call.",
    403: "Not allowed: someone else's (public) model cannot be changed; an ordinary API key cannot create keys.",
    404: "Unknown, or another user's private, resource (existence is not leaked).",
    409: "State conflict.",
    412: "The call's worst-case price exceeds the caller's maximum (`Modelport-Max-Price`, or the account's "
         "`max_price`); nothing was charged.",
    413: "Body too large.",
    415: "Unsupported request media type.",
    422: "The Idempotency-Key was already used with a different request.",
    429: "Rate limited or the queue is full.",
    503: "Model not ready, worker unavailable, or deadline passed in the queue.",
}


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "modelport.accounts.authentication.ApiKeyAuthentication"
    name = "bearerAuth"
    priority = 1

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`mp_…`), created with `manage.py createapikey` or POST /api/v1/keys.",
        }


class ProblemSerializer(serializers.Serializer):
    """RFC 9457 problem details; extra members (`errors`, `balance`, `required`, …) may follow."""

    type = serializers.CharField()
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField()
    errors = serializers.JSONField(required=False, help_text="per-field messages")


def problems(*codes: int) -> dict[tuple[int, str], OpenApiResponse]:
    """Responses for `extend_schema(responses=...)`: each status answered with problem+json."""
    return {(code, PROBLEM): OpenApiResponse(ProblemSerializer, description=_PROBLEM_TEXT[code]) for code in codes}


def responses(ok: dict[Any, Any], *codes: int) -> dict[Any, Any]:
    """`ok` plus problem+json for `codes` and 401 (every native endpoint needs a key)."""
    return {**ok, **problems(*sorted({401, *codes}))}


# --- shapes shared by several apps -----------------------------------------------------------
# Query values the API parses with Django's ISO parsers and refuses without a timezone.
DATE_TIME = {"type": "string", "format": "date-time"}
DATE_OR_DATE_TIME = {"anyOf": [{"type": "string", "format": "date"}, DATE_TIME]}


class TensorSpecSerializer(serializers.Serializer):
    name = serializers.CharField()
    dtype = serializers.CharField(help_text="numpy dtype name: float32, int64, bool, …")
    shape = serializers.ListField(
        child=serializers.IntegerField(allow_null=True), help_text="an int per axis, null for a dynamic axis"
    )


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


# --- gateway views (documented from here; see the module docstring) ------------------------
class AccountSerializer(serializers.Serializer):
    username = serializers.CharField()
    credits = serializers.FloatField(help_text="balance in credits")
    credits_micro = serializers.IntegerField(help_text="balance in micro-credits (1e-6 credit)")
    max_price = serializers.FloatField(allow_null=True, help_text="the most one call may cost at worst, in "
                                                                  "credits (calls that may cost more are 412); "
                                                                  "null: no limit")
    is_staff = serializers.BooleanField()


class PredictionMetricsSerializer(serializers.Serializer):
    queue_ms = serializers.FloatField(allow_null=True)
    compute_ms = serializers.FloatField(allow_null=True)
    total_ms = serializers.FloatField(allow_null=True)
    batch_size = serializers.IntegerField(allow_null=True)


class PredictionCreditsSerializer(serializers.Serializer):
    charged = serializers.FloatField()
    royalty = serializers.FloatField()
    charged_micro = serializers.IntegerField()


class PredictionUrlsSerializer(serializers.Serializer):
    get = serializers.CharField()
    cancel = serializers.CharField()


PREDICTION_STATUSES = ["starting", "processing", "succeeded", "failed", "canceled"]


class PredictionSerializer(serializers.Serializer):
    id = serializers.CharField()
    model = serializers.CharField(help_text="owner/name")
    version = serializers.IntegerField()
    status = serializers.ChoiceField(choices=PREDICTION_STATUSES)
    output = serializers.DictField(
        child=serializers.JSONField(), allow_null=True, help_text="{output name: nested list}"
    )
    error = ErrorSerializer(allow_null=True)
    metrics = PredictionMetricsSerializer()
    credits = PredictionCreditsSerializer()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    urls = PredictionUrlsSerializer()


class PredictionListSerializer(serializers.Serializer):
    results = PredictionSerializer(many=True)
    next = serializers.CharField(allow_null=True, help_text="cursor for the next page (pass as ?cursor=)")


class AccountPatchSerializer(serializers.Serializer):
    max_price = serializers.FloatField(allow_null=True, min_value=0,
                                       help_text="credits; null removes the limit (see Account.max_price)")


class AccountViewSchema(OpenApiViewExtension):
    target_class = "modelport.gateway.api.AccountView"

    def view_replacement(self) -> type:
        @extend_schema_view(
            get=extend_schema(
                operation_id="account_get",
                tags=["account"],
                summary="The caller's account and balance",
                responses=responses({200: AccountSerializer}),
            ),
            patch=extend_schema(
                operation_id="account_update",
                tags=["account"],
                summary="Set the account's default maximum price per call",
                request=AccountPatchSerializer,
                responses=responses({200: AccountSerializer}, 400, 415),
            ),
        )
        class Fixed(self.target_class):  # type: ignore[name-defined,misc]
            pass

        return Fixed


class PredictionDetailViewSchema(OpenApiViewExtension):
    target_class = "modelport.gateway.api.PredictionDetailView"

    def view_replacement(self) -> type:
        @extend_schema_view(
            get=extend_schema(
                operation_id="prediction_get",
                tags=["predictions"],
                responses=responses({200: PredictionSerializer}, 404),
            )
        )
        class Fixed(self.target_class):  # type: ignore[name-defined,misc]
            pass

        return Fixed


class PredictionCancelViewSchema(OpenApiViewExtension):
    target_class = "modelport.gateway.api.PredictionCancelView"

    def view_replacement(self) -> type:
        @extend_schema_view(
            post=extend_schema(
                operation_id="prediction_cancel",
                tags=["predictions"],
                request=None,
                summary="Cancel a prediction (no effect on a finished one)",
                responses=responses({200: PredictionSerializer}, 404),
            )
        )
        class Fixed(self.target_class):  # type: ignore[name-defined,misc]
            pass

        return Fixed


class PredictionListViewSchema(OpenApiViewExtension):
    target_class = "modelport.gateway.api.PredictionListView"

    def view_replacement(self) -> type:
        @extend_schema_view(
            get=extend_schema(
                operation_id="prediction_list",
                tags=["predictions"],
                summary="The caller's predictions, newest first",
                parameters=[
                    OpenApiParameter(
                        "cursor", DATE_TIME, description="`next` of the previous page (an ISO datetime with a timezone)"
                    )
                ],
                responses=responses({200: PredictionListSerializer}, 400),
            )
        )
        class Fixed(self.target_class):  # type: ignore[name-defined,misc]
            pass

        return Fixed


# --- the native prediction create endpoint (a plain async view) -----------------------------
# A realistic body for a model whose signature has one input `x` of shape [null, 4] (float32).
# A version's own names, dtypes and shapes are in GET …/versions/{n} (`signature`); its page in
# the dashboard shows this body filled in for it.
EXAMPLE_INPUT = {"x": [[0.25, -1.0, 3.5, 0.0]]}
EXAMPLE_SIGNATURE_TEXT = (
    "The example is for a model whose signature has one input `x`, float32, shape [null, 4]. Use your "
    "version's own input names and shapes: `signature.inputs` of GET /api/v1/models/{owner}/{name}/versions/{n}; "
    "the model's page in the dashboard shows the body filled in for it."
)

PREFER_HEADER = {
    "in": "header",
    "name": "Prefer",
    "schema": {"type": "string", "examples": ["wait", "wait=10"]},
    "description": "`wait` (up to the call's deadline) or `wait=N` (N seconds): answer when the prediction is done "
    "(200) or, after the wait, with it still running (202). Without it the call answers 201 at once; poll "
    "`urls.get`. Other preferences are ignored.",
}
DEADLINE_HEADER = {
    "in": "header",
    "name": "Modelport-Deadline-Ms",
    "schema": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "examples": [2000]},
    "description": "The call's deadline in milliseconds, from admission (at most the server's "
    "MODELPORT_CALL_DEADLINE_S). A call still queued at its deadline fails with `deadline_exceeded` and is "
    "not charged. A value that is not a positive number is refused with 400.",
}
MAX_PRICE_HEADER = {
    "in": "header",
    "name": "Modelport-Max-Price",
    "schema": {"type": "number", "minimum": 0},
    "description": "credits: refuse the call (412, nothing charged) if it may cost more at worst (base + "
                   "royalty + compute over its deadline); overrides the account's `max_price` for this call",
}


def native_prediction_paths(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Postprocessing hook: documents POST …/predictions, which drf-spectacular cannot discover
    (it is an async Django view, not a DRF view). Reuses the components generated for the DRF
    views (`Prediction`, `Problem`)."""
    problem = {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    prediction = {"application/json": {"schema": {"$ref": "#/components/schemas/Prediction"}}}
    body = {
        "type": "object",
        "required": ["input"],
        "properties": {
            "input": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {}},
                "description": "{input name: nested list}, checked against the version's signature",
                "example": EXAMPLE_INPUT,
            },
            "webhook": {"type": "string", "format": "uri"},
            "webhook_events_filter": {"type": "array", "items": {"type": "string", "enum": ["start", "completed"]}},
        },
    }
    examples = {
        "one_input": {
            "summary": "one float32 input x of shape [null, 4]",
            "description": EXAMPLE_SIGNATURE_TEXT,
            "value": {"input": EXAMPLE_INPUT},
        },
        "with_webhook": {
            "summary": "the same, with a webhook when it completes",
            "value": {
                "input": EXAMPLE_INPUT,
                "webhook": "https://example.com/hooks/modelport",
                "webhook_events_filter": ["completed"],
            },
        },
    }
    owner_name = [
        {"in": "path", "name": "owner", "required": True, "schema": {"type": "string"}},
        {"in": "path", "name": "name", "required": True, "schema": {"type": "string"}},
    ]
    headers = [
        PREFER_HEADER,
        {
            "in": "header",
            "name": "Idempotency-Key",
            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
            "description": "a retried create with the same key returns the same prediction and charges once",
        },
        DEADLINE_HEADER,
    ]

    def operation(operation_id: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
        codes = {400, 401, 402, 404, 412, 413, 422, 429, 503}
        return {
            "operationId": operation_id,
            "summary": "Run a model (native API)",
            "description": EXAMPLE_SIGNATURE_TEXT,
            "tags": ["predictions"],
            "security": [{"bearerAuth": []}],
            "parameters": parameters + headers + [MAX_PRICE_HEADER],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": body, "examples": examples}},
            },
            "responses": {
                "200": {"description": "Finished within the `Prefer: wait` time.", "content": prediction},
                "201": {"description": "Created; still running (no `Prefer: wait`).", "content": prediction},
                "202": {"description": "Still running after the wait.", "content": prediction},
                **{str(code): {"description": _PROBLEM_TEXT[code], "content": problem} for code in sorted(codes)},
            },
        }

    number = {"in": "path", "name": "number", "required": True, "schema": {"type": "integer"}}
    paths = result.setdefault("paths", {})
    paths.setdefault("/api/v1/models/{owner}/{name}/predictions", {})["post"] = operation(
        "prediction_create", owner_name
    )
    paths.setdefault("/api/v1/models/{owner}/{name}/versions/{number}/predictions", {})["post"] = operation(
        "prediction_create_version", [*owner_name, number]
    )
    return result


# --- the Open Inference Protocol (KServe V2) endpoints (plain async views at /v2) ----------------
V2_DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]
_V2_ERROR_TEXT = {
    400: "Invalid request (bad JSON, tensors that do not match the signature, a bad parameter).",
    401: "No API key, or an invalid or revoked one.",
    402: "Not enough credits for the call.",
    404: "Unknown, or another user's private, model or version.",
    413: "Body too large.",
    429: "Rate limited or the queue is full.",
    503: "Model not ready, worker unavailable, or deadline passed.",
}
V2_COMPONENTS: dict[str, Any] = {
    "V2Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
        "description": 'Every V2 error answers `{"error": "..."}` (application/json).',
    },
    "V2Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "V2Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
    "V2ModelReady": {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {"name": {"type": "string", "description": "owner/name"}, "ready": {"type": "boolean"}},
    },
    "V2ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "V2TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "enum": V2_DATATYPES},
            "shape": {"type": "array", "items": {"type": "integer"}, "description": "-1 for a dynamic axis"},
        },
    },
    "V2ModelMetadata": {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string", "description": "owner/name"},
            "versions": {"type": "array", "items": {"type": "string"}, "description": "the ready versions"},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2TensorMetadata"}},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2TensorMetadata"}},
        },
    },
    "V2RequestInput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": V2_DATATYPES},
            "parameters": {"type": "object", "description": "`binary_data_size` with the binary extension"},
            "data": {"type": "array", "items": {}, "description": "the values, flat or nested, row-major"},
        },
    },
    "V2RequestOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "parameters": {"type": "object", "description": "`binary_data: true` asks for raw bytes"},
        },
    },
    "V2InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {
                "type": "object",
                "description": "`timeout` (microseconds, Triton's per-request deadline); `binary_data_output`",
            },
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2RequestInput"}},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2RequestOutput"}},
        },
    },
    "V2ResponseOutput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string", "enum": V2_DATATYPES},
            "parameters": {"type": "object"},
            "data": {"type": "array", "items": {}},
        },
    },
    "V2InferenceResponse": {
        "type": "object",
        "required": ["model_name", "model_version", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {
                "type": "object",
                "description": "`credits_charged` (credits) and `prediction_id`",
                "properties": {"credits_charged": {"type": "number"}, "prediction_id": {"type": "string"}},
            },
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2ResponseOutput"}},
        },
    },
}
V2_EXAMPLE_REQUEST = {
    "id": "1",
    "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.25, -1.0, 3.5, 0.0]}],
}


def _v2_json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def _v2_operation(
    operation_id: str,
    summary: str,
    ok: dict[str, Any],
    codes: tuple[int, ...],
    *,
    parameters: list[dict[str, Any]],
    secured: bool = True,
) -> dict[str, Any]:
    errors = {str(code): {"description": _V2_ERROR_TEXT[code], "content": _v2_json("V2Error")} for code in codes}
    operation = {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["v2 (Open Inference Protocol)"],
        "parameters": parameters,
        "responses": {"200": ok, **errors},
    }
    operation["security"] = [{"bearerAuth": []}] if secured else []
    return operation


def v2_paths(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Postprocessing hook: documents the Open Inference Protocol endpoints (CONTRACT §5; plain
    async views in gateway/v2.py that drf-spectacular cannot discover). The model name of the
    protocol is `owner/name`, here two path parameters."""
    result.setdefault("components", {}).setdefault("schemas", {}).update(V2_COMPONENTS)
    owner_name = [
        {"in": "path", "name": "owner", "required": True, "schema": {"type": "string"}},
        {"in": "path", "name": "name", "required": True, "schema": {"type": "string"}},
    ]
    number = {"in": "path", "name": "number", "required": True, "schema": {"type": "integer"}}
    paths = result.setdefault("paths", {})
    paths["/v2/health/live"] = {
        "get": _v2_operation(
            "v2_health_live",
            "Server live",
            {"description": "Live.", "content": _v2_json("V2Live")},
            (),
            parameters=[],
            secured=False,
        )
    }
    paths["/v2/health/ready"] = {
        "get": _v2_operation(
            "v2_health_ready",
            "Server ready (database and broker reachable)",
            {"description": "Ready.", "content": _v2_json("V2Ready")},
            (503,),
            parameters=[],
            secured=False,
        )
    }
    paths["/v2"] = {
        "get": _v2_operation(
            "v2_server_metadata",
            "Server metadata",
            {"description": "Metadata.", "content": _v2_json("V2ServerMetadata")},
            (),
            parameters=[],
            secured=False,
        )
    }
    for suffix, params, tag in (("", owner_name, ""), ("/versions/{number}", [*owner_name, number], "_version")):
        base = "/v2/models/{owner}/{name}" + suffix
        paths[base] = {
            "get": _v2_operation(
                f"v2_model_metadata{tag}",
                "Model metadata (the version's signature in V2 terms)",
                {"description": "Metadata.", "content": _v2_json("V2ModelMetadata")},
                (401, 404),
                parameters=params,
            )
        }
        paths[base + "/ready"] = {
            "get": _v2_operation(
                f"v2_model_ready{tag}",
                "Model ready (200 when ready; 400 when not ready yet)",
                {"description": "Ready.", "content": _v2_json("V2ModelReady")},
                (400, 401, 404),
                parameters=params,
            )
        }
        infer = _v2_operation(
            f"v2_infer{tag}",
            "Run a model (Open Inference Protocol; tritonclient works unmodified)",
            {
                "description": "The outputs and the charge. With the binary tensor extension the body is "
                "application/octet-stream: the JSON header (`Inference-Header-Content-Length` bytes) followed by "
                "the raw outputs.",
                "content": {
                    **_v2_json("V2InferenceResponse"),
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            (400, 401, 402, 404, 413, 429, 503),
            parameters=params,
        )
        infer["description"] = (
            "JSON, or the binary tensor data extension (`Inference-Header-Content-Length`, `binary_data_size`, "
            "`binary_data`, `binary_data_output`); gzip or deflate bodies (`Content-Encoding`). Metered like native "
            "calls; the deadline is the `timeout` parameter (microseconds). " + EXAMPLE_SIGNATURE_TEXT
        )
        infer["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/V2InferenceRequest"},
                    "example": V2_EXAMPLE_REQUEST,
                }
            },
        }
        paths[base + "/infer"] = {"post": infer}
    return result


# --- webhook views (gateway) --------------------------------------------------------------------
class WebhookAttemptSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    at = serializers.DateTimeField()
    status_code = serializers.IntegerField(allow_null=True)
    latency_ms = serializers.FloatField(allow_null=True)
    ok = serializers.BooleanField()
    error = serializers.CharField(allow_null=True, allow_blank=True)
    response_excerpt = serializers.CharField(allow_null=True, allow_blank=True)


class WebhookDeliverySerializer(serializers.Serializer):
    id = serializers.CharField(help_text="the `webhook-id` header of every attempt")
    event = serializers.CharField()
    status = serializers.ChoiceField(choices=["pending", "delivered", "dead"])
    attempts = WebhookAttemptSerializer(many=True)


class WebhookDeliveryListSerializer(serializers.Serializer):
    results = WebhookDeliverySerializer(many=True)


class WebhookSecretSerializer(serializers.Serializer):
    key = serializers.CharField(help_text="HMAC-SHA256 key of the `webhook-signature` header")


def _documented(target: str, **methods: Any) -> type[OpenApiViewExtension]:
    """An OpenApiViewExtension that applies `extend_schema(**kwargs)` to each named method."""

    def view_replacement(self: OpenApiViewExtension) -> type:
        return extend_schema_view(**{m: extend_schema(**kw) for m, kw in methods.items()})(
            type("Fixed", (self.target_class,), {})
        )

    name = target.rsplit(".", 1)[1] + "Schema"
    return type(name, (OpenApiViewExtension,), {"target_class": target, "view_replacement": view_replacement})


PredictionWebhookResendViewSchema = _documented(
    "modelport.gateway.api.PredictionWebhookResendView",
    post={
        "operation_id": "prediction_webhook_resend",
        "tags": ["predictions"],
        "request": None,
        "summary": "Send the prediction's completed webhook again",
        "responses": responses({202: WebhookDeliverySerializer}, 404, 409),
    },
)
PredictionWebhooksViewSchema = _documented(
    "modelport.gateway.api.PredictionWebhooksView",
    get={
        "operation_id": "prediction_webhooks",
        "tags": ["predictions"],
        "summary": "The prediction's webhook deliveries and every attempt",
        "responses": responses({200: WebhookDeliveryListSerializer}, 404),
    },
)
WebhookSecretViewSchema = _documented(
    "modelport.gateway.api.WebhookSecretView",
    get={
        "operation_id": "account_webhook_secret",
        "tags": ["account"],
        "responses": responses({200: WebhookSecretSerializer}),
    },
)
