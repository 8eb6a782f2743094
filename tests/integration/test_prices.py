"""Issue 16 item 2: a caller's bounds on what a call costs — a royalty ceiling, a notice period
for royalty increases, and a maximum price per call (header and account default)."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import pytest

from workers.demo import mlp_onnx

pytestmark = pytest.mark.integration
MICRO = 1_000_000
X = {"input": {"x": [[1.0] * 16]}}


def _public_model(api, name, tmp_path):
    assert api.post("/api/v1/models", json={"name": name, "visibility": "public"}).status_code == 201
    path = mlp_onnx(tmp_path / f"{name}.onnx", sizes=(16, 8, 4))
    assert api.upload(api.username, name, fmt="onnx", artifact=path).status_code == 202
    assert api.wait_version(api.username, name, 1)["status"] == "ready"


def _drift(username):
    from modelport.billing.models import CreditAccount
    from modelport.billing.services import ledger_drift

    return ledger_drift(account=CreditAccount.objects.get(user__username=username))


def _call(api, model, **headers):
    return api.post(f"/api/v1/models/{model}/predictions", json=X, headers={"Prefer": "wait", **headers})


def test_royalty_is_bounded_and_an_increase_waits_out_its_notice(user_api, tmp_path):
    from django.utils import timezone
    from modelport.gateway import authcache
    from modelport.registry.models import Model

    owner, caller = user_api("seller"), user_api("buyer")
    _public_model(owner, "tiny", tmp_path)
    url = "/api/v1/models/seller/tiny"
    too_much = owner.patch(url, json={"royalty": 999_999})
    assert too_much.status_code == 400 and too_much.json()["errors"] == {"royalty": ["at most 100"]}
    assert owner.get(url).json()["royalty"] == 0.0
    # Nobody but the owner has called it yet: there is nobody to give notice to.
    set_first = owner.patch(url, json={"royalty": 0.2}).json()
    assert (set_first["royalty"], set_first["royalty_pending"]) == (0.2, None)
    first = _call(caller, "seller/tiny")
    assert first.status_code == 200 and first.json()["credits"]["royalty"] == 0.2

    raised = owner.patch(url, json={"royalty": 50}).json()
    assert raised["royalty"] == 0.2
    effective = datetime.fromisoformat(raised["royalty_pending"]["effective_at"])
    assert raised["royalty_pending"]["value"] == 50.0
    assert abs((effective - timezone.now()) - timedelta(hours=24)) < timedelta(minutes=1)
    assert caller.get(url).json()["royalty_pending"] == raised["royalty_pending"]  # callers see it coming
    owner_before, caller_before = owner.balance_micro(), caller.balance_micro()
    second = _call(caller, "seller/tiny")
    assert second.status_code == 200 and second.json()["credits"]["royalty"] == 0.2  # not yet
    assert caller.balance_micro() == caller_before - second.json()["credits"]["charged_micro"]
    assert owner.balance_micro() == owner_before + 200_000

    # The notice has run out (moved, as a day passing would): the next call pays the new royalty.
    Model.objects.filter(owner__username="seller", name="tiny").update(
        royalty_pending_at=timezone.now() - timedelta(seconds=1))
    authcache.invalidate()
    owner_before, caller_before = owner.balance_micro(), caller.balance_micro()
    third = _call(caller, "seller/tiny")
    assert third.status_code == 200 and third.json()["credits"]["royalty"] == 50.0
    assert third.json()["credits"]["charged_micro"] > 50 * MICRO
    assert caller.balance_micro() == caller_before - third.json()["credits"]["charged_micro"]
    assert owner.balance_micro() == owner_before + 50 * MICRO
    shown = caller.get(url).json()
    assert (shown["royalty"], shown["royalty_pending"]) == (50.0, None)

    # A decrease applies at once (and an increase announced later starts its own notice).
    assert owner.patch(url, json={"royalty": 1}).json()["royalty"] == 1.0
    assert _call(caller, "seller/tiny").json()["credits"]["royalty"] == 1.0
    again = owner.patch(url, json={"royalty": 2}).json()
    assert again["royalty"] == 1.0 and again["royalty_pending"]["value"] == 2.0
    assert _call(caller, "seller/tiny").json()["credits"]["royalty"] == 1.0
    assert _drift("seller") == 0 and _drift("buyer") == 0


def test_a_call_that_may_cost_more_than_the_callers_maximum_is_412_and_charges_nothing(user_api, live, tmp_path):
    """`Modelport-Max-Price` (credits) bounds a call's worst case — base + royalty + compute over
    its deadline, i.e. its hold — on native and V2 calls; an account's `max_price` does so for
    calls without the header. A call over it is refused before anything is held or run."""
    from modelport.gateway.models import Prediction

    owner, caller = user_api("maker"), user_api("careful")
    _public_model(owner, "tiny", tmp_path)
    assert owner.patch("/api/v1/models/maker/tiny", json={"royalty": 0.5}).json()["royalty"] == 0.5
    before = caller.balance_micro()

    def refused(resp, price_up_to):
        assert resp.status_code == 412, resp.text
        problem = resp.json()
        assert resp.headers["content-type"] == "application/problem+json"
        assert problem["code"] == "max_price_exceeded" and problem["price_up_to"] == price_up_to
        return problem

    # Worst case with the tests' 20 s deadline: 0.1 + 0.5 + 20 s x 1 credit/s.
    problem = refused(_call(caller, "maker/tiny", **{"Modelport-Max-Price": "5"}), 20.6)
    assert problem["max_price"] == 5.0 and "Modelport-Deadline-Ms" in problem["detail"]
    refused(caller.post("/api/v1/models/maker/tiny/predictions", json=X,  # async calls too
                        headers={"Modelport-Max-Price": "5"}), 20.6)
    assert _call(caller, "maker/tiny", **{"Modelport-Max-Price": "abc"}).status_code == 400
    assert _call(caller, "maker/tiny", **{"Modelport-Max-Price": "-1"}).status_code == 400
    v2 = httpx.post(f"{live.base_url}/v2/models/maker/tiny/infer", timeout=60,
                    headers={"Authorization": caller.http.headers["Authorization"], "Modelport-Max-Price": "5"},
                    json={"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]})
    assert v2.status_code == 412 and "above the maximum price of 5.000000" in v2.json()["error"], v2.text
    assert caller.balance_micro() == before
    assert not Prediction.objects.filter(user__username="careful").exists()

    # A shorter deadline brings the worst case under the maximum: 0.1 + 0.5 + 2 s x 1 credit/s.
    ok = _call(caller, "maker/tiny", **{"Modelport-Max-Price": "5", "Modelport-Deadline-Ms": "2000"})
    assert ok.status_code == 200, ok.text
    spent = ok.json()["credits"]["charged_micro"]
    assert 600_000 < spent <= 2_600_000

    # The account's default applies to calls without the header; the header overrides it.
    account = caller.patch("/api/v1/account", json={"max_price": 3})
    assert account.status_code == 200 and account.json()["max_price"] == 3.0
    assert caller.get("/api/v1/account").json()["max_price"] == 3.0
    refused(_call(caller, "maker/tiny"), 20.6)
    v2 = httpx.post(f"{live.base_url}/v2/models/maker/tiny/infer", timeout=60,
                    headers={"Authorization": caller.http.headers["Authorization"]},
                    json={"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]})
    assert v2.status_code == 412, v2.text
    assert caller.balance_micro() == before - spent
    overridden = _call(caller, "maker/tiny", **{"Modelport-Max-Price": "25"})
    assert overridden.status_code == 200, overridden.text
    spent += overridden.json()["credits"]["charged_micro"]
    assert caller.patch("/api/v1/account", json={"max_price": -2}).status_code == 400
    assert caller.patch("/api/v1/account", json={"max_price": None}).json()["max_price"] is None
    assert _call(caller, "maker/tiny").status_code == 200
    assert Prediction.objects.filter(user__username="careful").count() == 3
    assert _drift("careful") == 0 and _drift("maker") == 0
