"""The OpenAPI schema (/api/schema/) against the live stack: a bounded schemathesis run finds no
5xx, no undocumented status codes or content types, and no response that violates the schema."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from modelport.accounts.schema import native_prediction_paths
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import make_user
from workers.demo import mlp_onnx

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 20
# A caller may ask for a deadline no call can meet (the schema documents `Modelport-Deadline-Ms`
# and V2's `timeout`, so the fuzzer sends tiny ones): that call is answered 503 "deadline", the
# documented outcome, not a server fault. Only a deadline under this many ms is excused.
OWN_DEADLINE_MS = 100


def _own_short_deadline(response: Any, case: Any) -> bool:
    if response.status_code != 503:
        return False
    raw = (case.headers or {}).get("Modelport-Deadline-Ms")
    if raw is None and isinstance(case.body, dict) and isinstance(case.body.get("parameters"), dict):
        timeout_us = case.body["parameters"].get("timeout")
        raw = timeout_us / 1000 if isinstance(timeout_us, int | float) and not isinstance(timeout_us, bool) else None
    try:
        short = raw is not None and 0 < float(raw) < OWN_DEADLINE_MS
    except ValueError:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return short and (body.get("code") == "deadline" or "deadline" in str(body.get("error", "")))


@schemathesis.check
def not_a_server_error_but_own_deadline(ctx: Any, response: Any, case: Any) -> bool | None:
    if _own_short_deadline(response, case):
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [
    not_a_server_error_but_own_deadline,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def fuzz_user(live: Any, tmp_path: Path) -> dict[str, str]:
    """A user with a key and a ready model, so generated calls can also hit existing resources."""
    _, key = make_user("fuzzer")
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=live.base_url, headers=headers, timeout=60) as http:
        assert http.post("/api/v1/models", json={"name": "mlp"}).status_code == 201
        onnx = mlp_onnx(tmp_path / "mlp.onnx", sizes=(4, 8, 2), seed=1)
        resp = http.post(
            "/api/v1/models/fuzzer/mlp/versions",
            data={"format": "onnx"},
            files={"artifact": ("mlp.onnx", onnx.read_bytes())},
        )
        assert resp.status_code == 202, resp.text
        deadline = time.monotonic() + 120
        while http.get("/api/v1/models/fuzzer/mlp/versions/1").json()["status"] != "ready":
            assert time.monotonic() < deadline, "the fuzz model did not become ready"
            time.sleep(0.1)
        resp = http.post(
            "/api/v1/models/fuzzer/mlp/predictions", json={"input": {"x": [[0.5] * 4]}}, headers={"Prefer": "wait"}
        )
        assert resp.status_code == 200, resp.text
    return {"key": key, "owner": "fuzzer", "name": "mlp", "prediction_id": resp.json()["id"]}


def _strategy(operation: Any, target: dict[str, str]) -> st.SearchStrategy:
    """Positive and negative cases, plus positive ones aimed at the fuzz user's own model and
    prediction (random names and ids are nearly always 404). Not for uploads: a queued garbage
    version would keep the shared conversion worker busy after this test."""
    strategies = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
    names = {p.name for p in operation.path_parameters}
    if {"owner", "name"} <= names and not (operation.method.upper() == "POST" and operation.path.endswith("/versions")):
        fixed = {"owner": target["owner"], "name": target["name"], **({"number": 1} if "number" in names else {})}
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed))
        if operation.path.endswith("/predictions"):
            # A valid input for the fuzz model, so successful calls (200/201/202) are checked too.
            body = {"input": {"x": [[0.5] * 4]}}
            strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed, body=body))
    if "prediction_id" in names:
        fixed = {"prediction_id": target["prediction_id"]}
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed))
    return st.one_of(strategies)


def _fuzz(strategy: st.SearchStrategy, headers: dict[str, str], seen: set[int]) -> None:
    """Calls the API with the strategy's cases; raises schemathesis' failure on the first bad answer."""

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,
    )
    def run(case: Any) -> None:
        response = case.call(headers=headers, timeout=30)
        seen.add(response.status_code)
        case.validate_response(response, checks=CHECKS)

    run()


def test_api_conforms_to_schema(live: Any, fuzz_user: dict[str, str]) -> None:
    document = httpx.get(f"{live.base_url}/api/schema/?format=json", timeout=30).json()
    if "/api/v1/models/{owner}/{name}/predictions" not in document["paths"]:
        # The native create view is not a DRF view; SPECTACULAR_SETTINGS' postprocessing hook adds
        # it. Where that hook is not configured, apply it here so the endpoint is still checked.
        document = native_prediction_paths(document, None, None, True)
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=live.base_url)
    schema.config.generation.update(allow_x00=True, database="none")
    headers = {"Authorization": f"Bearer {fuzz_user['key']}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    # The schema endpoint documents itself; it is drf-spectacular's, not ours.
    operations = [op for op in operations if op.path != "/api/schema/"]
    assert len(operations) >= 20, [op.label for op in operations]
    failures: dict[str, str] = {}
    statuses: dict[str, set[int]] = {op.label: set() for op in operations}
    for operation in operations:
        try:
            _fuzz(_strategy(operation, fuzz_user), headers, statuses[operation.label])
        except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis' failures; all reported below
            failures[operation.label] = str(exc)[:3000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items()) + f"\n{statuses}"
    # The run reached real resources, not only 404s: every read and every prediction create
    # answered 2xx at least once.
    unreached = [
        label
        for label, seen in statuses.items()
        if (label.startswith("GET") or label.endswith("/predictions")) and not any(200 <= c < 300 for c in seen)
    ]
    assert not unreached, statuses


def test_request_examples_run_against_a_model_with_their_signature(live: Any, fuzz_user: dict[str, str]) -> None:
    """The schema's example bodies are real: sent as they are to a model whose signature is the one
    the examples name (one float32 input `x` of shape [null, 4]), each is answered 200."""
    document = httpx.get(f"{live.base_url}/api/schema/?format=json", timeout=30).json()
    native = document["paths"]["/api/v1/models/{owner}/{name}/predictions"]["post"]["requestBody"]
    v2 = document["paths"]["/v2/models/{owner}/{name}/infer"]["post"]["requestBody"]
    headers = {"Authorization": f"Bearer {fuzz_user['key']}"}
    with httpx.Client(base_url=live.base_url, headers=headers, timeout=60) as http:
        body = native["content"]["application/json"]["examples"]["one_input"]["value"]
        resp = http.post("/api/v1/models/fuzzer/mlp/predictions", json=body, headers={"Prefer": "wait"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "succeeded"
        resp = http.post("/v2/models/fuzzer/mlp/infer", json=v2["content"]["application/json"]["example"])
        assert resp.status_code == 200, resp.text
        assert resp.json()["outputs"][0]["shape"] == [1, 2]
