"""Issue 16 item 3: a call answered with a charge has that charge committed, whatever other
calls of its account hold meanwhile (the postpaid path answers before it records)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from workers.demo import mlp_onnx

pytestmark = pytest.mark.integration
X = {"input": {"x": [[0.5] * 16]}}
WAITING_MS = 3000  # the answered calls' deadline: each holds 0.1 + 3 s x 1 credit/s = 3.1 credits


def _ready(api, name, tmp_path, visibility="private"):
    assert api.post("/api/v1/models", json={"name": name, "visibility": visibility}).status_code == 201
    path = mlp_onnx(tmp_path / f"{name}.onnx", sizes=(16, 8, 4), seed=len(name))
    assert api.upload(api.username, name, fmt="onnx", artifact=path).status_code == 202
    assert api.wait_version(api.username, name, 1)["status"] == "ready"


def _settled(username: str, timeout: float = 60.0) -> None:
    from modelport.gateway.models import Prediction

    deadline = time.monotonic() + timeout
    while Prediction.objects.filter(user__username=username, status__in=["starting", "processing"]).exists():
        assert time.monotonic() < deadline, "calls still open"
        time.sleep(0.1)


def test_answered_charges_are_committed_while_other_holds_drain_the_account(user_api, fleet, tmp_path):
    """The race of issue 16 item 3, made deterministic: the worker has just seen the account
    with ample balance (so its next calls may run before they are recorded); two calls wait in
    its list while it is stopped, and meanwhile other calls of the account (async, held by the
    web, queued for models no worker hosts yet) hold all but 0.05 credits of the balance. Then
    the worker runs the two. Every call answered 200 must be stored with the charge it was
    answered with, in the ledger, and the ledger must sum to the balance."""
    from modelport.billing.models import CreditAccount, LedgerEntry, PostpaidReserve
    from modelport.billing.services import ledger_drift
    from modelport.gateway.models import Prediction

    api = user_api("drained", credits=420)  # >= 64 x the two calls' holds (396.8 credits): postpaid
    _ready(api, "fast", tmp_path)
    _ready(api, "other", tmp_path)
    # Large holds drain the balance in few calls (the worker's view of it lasts 2 s): a public
    # model with the highest royalty, set before anyone called it, holds 120.1 credits a call.
    owner = user_api("drainer")
    _ready(owner, "dear", tmp_path, visibility="public")
    assert owner.patch("/api/v1/models/drainer/dear", json={"royalty": 100}).json()["royalty"] == 100.0
    worker = fleet.start_worker("serve", serve=True)
    fleet.wait_for_serving(worker)
    headers = {"Authorization": api.http.headers["Authorization"]}
    url = f"{fleet.base_url}/api/v1/models/%s/predictions"

    def waiting(_: int = 0) -> httpx.Response:
        return httpx.post(url % "drained/fast", json=X, timeout=60,
                          headers={**headers, "Prefer": "wait", "Modelport-Deadline-Ms": str(WAITING_MS)})

    def drainer(deadline_ms: float, model: str = "drained/other") -> httpx.Response:
        return httpx.post(url % model, json=X, timeout=60,
                          headers={**headers, "Modelport-Deadline-Ms": str(deadline_ms)})

    answered = []
    for _ in range(3):  # the worker sees the balance (its statements return it)
        resp = waiting()
        assert resp.status_code == 200, resp.text
        answered.append(resp.json())
    worker.pause()
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            racing = [pool.submit(waiting) for _ in range(2)]
            time.sleep(0.2)  # both deferred calls are in the worker's list
            for model in ("drainer/dear", "drained/other"):  # 120.1, then 20.1 credits each
                for _ in range(5):
                    if drainer(20_000, model).status_code == 402:
                        break
            balance = CreditAccount.objects.get(user__username="drained").balance
            if balance > 150_000:  # one more hold leaving 0.05 credits: less than any call's price
                drainer((balance - 150_000) / 1000)
            worker.resume()
            racing = [f.result() for f in racing]
    finally:
        worker.resume()
    # 402 (admitted before it ran) and 503 (its deadline passed in the list) charge nothing.
    assert [r.status_code for r in racing if r.status_code not in (200, 402, 503)] == [], [r.text for r in racing]
    answered += [r.json() for r in racing if r.status_code == 200]
    _settled("drained")
    time.sleep(0.5)  # a recording after the last reply
    rows = {p.id: p for p in Prediction.objects.filter(pk__in=[a["id"] for a in answered])}
    for body in answered:
        row = rows[body["id"]]
        charged = body["credits"]["charged_micro"]
        assert charged > 0
        assert (row.status, row.charged) == ("succeeded", charged), (body["id"], row.status, row.charged, charged)
        assert sum(LedgerEntry.objects.filter(prediction_id=row.id).values_list("amount", flat=True)) == -charged
    raced = [rows[r.json()["id"]] for r in racing if r.status_code == 200]
    assert raced, "no call ran in the race"
    assert all(row.hold_amount == row.charged for row in raced)  # run before admission (postpaid)
    assert not Prediction.objects.filter(user__username="drained", status="succeeded", charged=0).exists()
    assert ledger_drift(account=CreditAccount.objects.get(user__username="drained")) == 0
    # What the worker kept of the balance for its postpaid calls goes back once it is idle.
    deadline = time.monotonic() + 40
    while CreditAccount.objects.get(user__username="drained").reserved or PostpaidReserve.objects.exists():
        assert time.monotonic() < deadline, "the reserve was not returned"
        time.sleep(0.5)
    assert ledger_drift(account=CreditAccount.objects.get(user__username="drained")) == 0


def test_holds_leave_a_workers_reserve_and_it_goes_back(user_api, live, tmp_path):
    """The reserve's rules (billing services): a reserve is taken only from what is not reserved
    already; no hold — the web's, a worker's group admission, the ORM path — takes the balance
    below the reserves (402, its `balance` what holds may take); a returned reserve (by its
    worker, or by the reaper for a worker that stopped) frees the balance again. No ledger
    entry: the balance itself never moves."""
    from modelport.accounts.models import ApiKey
    from modelport.billing.models import CreditAccount, LedgerEntry, PostpaidReserve
    from modelport.billing.services import reserve_release, reserve_top_up, reserves_release_abandoned

    api = user_api("reserving", credits=100)
    _ready(api, "fast", tmp_path)
    account = CreditAccount.objects.get(user__username="reserving")
    entries = LedgerEntry.objects.filter(account=account).count()
    assert reserve_top_up(account_id=account.pk, worker="w:1", amount=60_000_000)
    assert not reserve_top_up(account_id=account.pk, worker="w:2", amount=50_000_000)  # 40 left
    assert reserve_top_up(account_id=account.pk, worker="w:1", amount=25_000_000)
    account.refresh_from_db()
    assert (account.balance, account.reserved) == (100_000_000, 85_000_000)
    assert list(PostpaidReserve.objects.values_list("worker", "amount")) == [("w:1", 85_000_000)]

    def hold(deadline_ms: int, prefer: str | None = None):  # holds 0.1 + deadline_ms / 1000 credits
        headers = {"Modelport-Deadline-Ms": str(deadline_ms), **({"Prefer": prefer} if prefer else {})}
        return api.post("/api/v1/models/reserving/fast/predictions", json=X, headers=headers)

    refused = hold(19_950)  # 20.05 credits of the 15 that may be held: the web's admission refuses
    assert refused.status_code == 402 and refused.json()["balance"] == 15.0, refused.text
    deferred = hold(19_950, prefer="wait")  # a call the worker admits (ADMIT_MANY): refused too
    assert deferred.status_code == 402, deferred.text
    assert hold(9_000).status_code == 201  # 9.1 credits fit
    _settled("reserving")
    key = ApiKey.objects.get(user__username="reserving")
    key.daily_cap = 10**12  # a capped key's calls take the ORM path (billing.credits_hold)
    key.save()
    orm = hold(19_950)
    account.refresh_from_db()
    assert orm.status_code == 402 and orm.json()["balance"] == (account.balance - 85_000_000) / 1e6, orm.text
    assert reserve_release(account_id=account.pk, worker="w:1") == 85_000_000
    assert hold(19_950, prefer="wait").status_code == 200

    assert reserve_top_up(account_id=account.pk, worker="gone:1", amount=5_000_000)
    assert reserves_release_abandoned(live_workers={"gone:1"}, idle_s=0) == 0  # alive: kept
    assert reserves_release_abandoned(live_workers=set(), idle_s=3600) == 0  # touched recently: kept
    assert reserves_release_abandoned(live_workers=set(), idle_s=0) == 5_000_000
    _settled("reserving")
    account.refresh_from_db()
    assert account.reserved == 0 and not PostpaidReserve.objects.exists()
    spent = -sum(LedgerEntry.objects.filter(account=account, prediction__isnull=False)
                 .values_list("amount", flat=True))
    assert account.balance == 100_000_000 - spent
    assert LedgerEntry.objects.filter(account=account, prediction__isnull=True).count() == entries  # the grant
