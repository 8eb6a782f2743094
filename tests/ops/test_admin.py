"""The admin console through Django's test client: staff can, non-staff cannot."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from modelport.accounts.models import ApiKey
from modelport.accounts.services import api_key_issue
from modelport.billing.models import MICRO, LedgerEntry, Price
from modelport.billing.services import ledger_drift
from modelport.gateway.models import Prediction
from modelport.ops.models import AuditEntry
from modelport.registry.models import Model, ModelVersion

from tests.ops.conftest import make_staff

USERS = "/admin/auth/user/"
VERSIONS = "/admin/registry/modelversion/"


@pytest.fixture
def staff_client(client: Any, staff: Any) -> Any:
    client.force_login(staff)
    return client


def _grant(client: Any, users: list[Any], **form: str) -> Any:
    ids = [str(u.pk) for u in users]
    first = client.post(USERS, {"action": "grant_credits", "_selected_action": ids, "index": "0"})
    assert first.status_code == 200  # the intermediate form, nothing written yet
    assert b'id="credits-grant-form"' in first.content
    return client.post(USERS, {"action": "grant_credits", "_selected_action": ids, "apply": "1", **form})


def test_credit_grant_writes_a_ledger_entry_and_the_balance_follows(staff_client, staff):
    alice = make_staff("alice", staff=False)
    before = alice.credit_account.balance
    entries_before = LedgerEntry.objects.filter(account__user=alice).count()

    resp = _grant(staff_client, [alice], kind="grant", amount="12.5", reason="conference demo")

    assert resp.status_code == 302
    entry = LedgerEntry.objects.filter(account__user=alice).latest("id")
    assert (entry.kind, entry.amount, entry.memo, entry.created_by_id) == ("grant", 12_500_000, "conference demo",
                                                                           staff.pk)
    assert LedgerEntry.objects.filter(account__user=alice).count() == entries_before + 1
    alice.credit_account.refresh_from_db()
    assert alice.credit_account.balance == before + 12_500_000
    assert ledger_drift(account=alice.credit_account) == 0
    audit = AuditEntry.objects.get(action="credits.grant")
    assert (audit.actor_id, audit.actor_username, audit.object_repr) == (staff.pk, "root", "alice")
    assert audit.details == {"credits_micro": 12_500_000, "reason": "conference demo"}
    assert LogEntry.objects.filter(user=staff, object_id=str(alice.pk), change_message__contains="grant").exists()
    # The user page shows the balance and the new ledger line.
    page = staff_client.get(f"{USERS}{alice.pk}/change/").content.decode()
    assert f"{(before + 12_500_000) // MICRO:,}.500000" in page and "conference demo" in page


def test_refund_to_two_users_and_a_refused_adjustment(staff_client):
    bob, carol = make_staff("bob", staff=False), make_staff("carol", staff=False)
    resp = _grant(staff_client, [bob, carol], kind="refund", amount="0.000001", reason="bad call")
    assert resp.status_code == 302
    assert sorted(LedgerEntry.objects.filter(kind="refund").values_list("account__user__username", "amount")) == [
        ("bob", 1), ("carol", 1)]

    bob.credit_account.refresh_from_db()
    balance = bob.credit_account.balance
    resp = _grant(staff_client, [bob], kind="adjustment", amount=str(-(balance + MICRO) / MICRO), reason="too much")
    assert resp.status_code == 302
    bob.credit_account.refresh_from_db()
    assert bob.credit_account.balance == balance  # refused: would go below zero
    assert not LedgerEntry.objects.filter(kind="adjustment").exists()
    assert not AuditEntry.objects.filter(action="credits.adjustment").exists()


@pytest.mark.parametrize("amount", ["0", "-5"])
def test_grant_form_rejects_zero_and_negative_grants(staff_client, amount):
    dave = make_staff("dave", staff=False)
    count = LedgerEntry.objects.count()
    resp = _grant(staff_client, [dave], kind="grant", amount=amount, reason="oops")
    assert resp.status_code == 200  # the form again, with the error
    assert b"errorlist" in resp.content
    assert LedgerEntry.objects.count() == count


def test_non_staff_is_refused_everywhere_and_nothing_happens(client, plain_user):
    client.force_login(plain_user)
    victim = make_staff("victim", staff=False)
    count = LedgerEntry.objects.count()
    for url in ("/admin/", USERS, VERSIONS, "/admin/fleet/", "/admin/ops/auditentry/"):
        resp = client.get(url)
        assert resp.status_code == 302 and resp["Location"].startswith("/admin/login/"), url
    resp = client.post(USERS, {"action": "grant_credits", "_selected_action": [str(victim.pk)], "apply": "1",
                               "kind": "grant", "amount": "1000", "reason": "me"})
    assert resp.status_code == 302 and resp["Location"].startswith("/admin/login/")
    assert LedgerEntry.objects.count() == count
    assert not AuditEntry.objects.exists()


def test_anonymous_is_sent_to_login(client, db):
    resp = client.get("/admin/fleet/")
    assert resp.status_code == 302 and resp["Location"].startswith("/admin/login/")


def _version(owner: Any, *, status: str = "ready", name: str = "m") -> ModelVersion:
    model = Model.objects.create(owner=owner, name=name)
    return ModelVersion.objects.create(model=model, number=1, format="onnx", status=status, upload_sha256="0" * 64,
                                       upload_filename="m.onnx", report={"latency_ms_p50": 0.25},
                                       log="line one\n<b>line two</b>")


def test_api_keys_listed_by_prefix_revocable_and_the_hash_is_never_shown(staff_client, staff):
    issued = api_key_issue(user=staff, name="ci")
    key = issued.api_key
    listing = staff_client.get("/admin/accounts/apikey/", {"q": key.prefix}).content.decode()
    detail = staff_client.get(f"/admin/accounts/apikey/{key.pk}/change/").content.decode()
    for page in (listing, detail):
        assert key.prefix in page
        assert key.key_hash not in page and issued.secret not in page and "key_hash" not in page
    resp = staff_client.post("/admin/accounts/apikey/", {"action": "revoke", "_selected_action": [key.pk],
                                                         "index": "0"})
    assert resp.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert AuditEntry.objects.filter(action="api_key.revoke", object_id=str(key.pk)).count() == 1
    # Revoking again changes nothing and records nothing.
    staff_client.post("/admin/accounts/apikey/", {"action": "revoke", "_selected_action": [key.pk], "index": "0"})
    assert AuditEntry.objects.filter(action="api_key.revoke").count() == 1
    assert ApiKey.objects.get(pk=key.pk).revoked_at == key.revoked_at


def test_version_page_shows_report_and_log_and_edits_only_the_gpu_limit(staff_client, staff):
    version = _version(staff)
    page = staff_client.get(f"{VERSIONS}{version.pk}/change/").content.decode()
    assert "&quot;latency_ms_p50&quot;: 0.25" in page or '"latency_ms_p50": 0.25' in page
    assert "&lt;b&gt;line two&lt;/b&gt;" in page  # the log is escaped, not rendered
    resp = staff_client.post(f"{VERSIONS}{version.pk}/change/", {"gpu_memory_limit_mb": "2048", "disabled": "on",
                                                                   "status": "failed"})
    assert resp.status_code == 302, resp.content.decode()[-2000:]
    version.refresh_from_db()
    assert (version.gpu_memory_limit_mb, version.disabled, version.status) == (2048, False, "ready")
    audit = AuditEntry.objects.get(action="registry.modelversion.change")
    assert audit.details == {"changed": {"gpu_memory_limit_mb": {"from": None, "to": 2048}}}


def test_version_filters(staff_client, staff):
    _version(staff, name="good")
    _version(staff, name="bad", status="failed")
    page = staff_client.get(VERSIONS, {"status__exact": "failed", "format__exact": "onnx",
                                       "model__visibility__exact": "private",
                                       "model__owner__id__exact": str(staff.pk)}).content.decode()
    assert "root/bad v1" in page and "root/good v1" not in page


def test_revalidate_and_set_default_actions(staff_client, staff, django_capture_on_commit_callbacks):
    version = _version(staff, status="failed")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        resp = staff_client.post(VERSIONS, {"action": "revalidate", "_selected_action": [version.pk], "index": "0"})
    assert resp.status_code == 302
    from modelport.gateway import authcache

    assert authcache.invalidate in callbacks  # cached call resolutions go stale after commit
    assert len([c for c in callbacks if c is not authcache.invalidate]) == 1  # the validation task
    version.refresh_from_db()
    assert (version.status, version.error) == ("queued", None)
    assert AuditEntry.objects.filter(action="version.revalidate", details={"from_status": "failed"}).count() == 1

    # A queued version cannot be the default (registry rule) and is not re-queued twice.
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        staff_client.post(VERSIONS, {"action": "revalidate", "_selected_action": [version.pk], "index": "0"})
        staff_client.post(VERSIONS, {"action": "set_default", "_selected_action": [version.pk], "index": "0"})
    assert callbacks == []
    version.model.refresh_from_db()
    assert version.model.default_version_id is None

    ModelVersion.objects.filter(pk=version.pk).update(status="ready")
    staff_client.post(VERSIONS, {"action": "set_default", "_selected_action": [version.pk], "index": "0"})
    version.model.refresh_from_db()
    assert version.model.default_version_id == version.pk
    assert AuditEntry.objects.filter(action="version.set_default").count() == 1


def test_price_sheet_is_editable_and_audited(staff_client):
    # (get_or_create: a transactional test elsewhere in the run may have flushed the seeded rows)
    price, _ = Price.objects.get_or_create(hardware="cpu", defaults={"base_per_call": 100_000, "per_second": MICRO})
    old = price.per_second
    resp = staff_client.post(f"/admin/billing/price/{price.pk}/change/",
                             {"base_per_call": str(price.base_per_call), "per_second": str(old + 7)})
    assert resp.status_code == 302
    price.refresh_from_db()
    assert price.per_second == old + 7
    audit = AuditEntry.objects.get(action="billing.price.change")
    assert audit.details == {"changed": {"per_second": {"from": old, "to": old + 7}}}


def test_ledger_and_predictions_are_read_only(staff_client, staff):
    account = staff.credit_account
    entry = LedgerEntry.objects.filter(account=account).first()
    resp = staff_client.post(f"/admin/billing/ledgerentry/{entry.pk}/change/", {"amount": "1"})
    assert resp.status_code == 403
    assert staff_client.get("/admin/billing/ledgerentry/add/").status_code == 403
    assert staff_client.get("/admin/billing/creditaccount/add/").status_code == 403
    assert staff_client.get("/admin/gateway/prediction/add/").status_code == 403


def test_prediction_search_by_id_model_and_key(staff_client, staff):
    from django.utils import timezone

    version = _version(staff, name="searchme")
    key = api_key_issue(user=staff).api_key
    p = Prediction.objects.create(user=staff, account=staff.credit_account, api_key=key, version=version,
                                  deadline_at=timezone.now(), request_id="req-abc")
    other = Prediction.objects.create(user=staff, account=staff.credit_account, version=_version(staff, name="else"),
                                      deadline_at=timezone.now(), status="failed")
    for q in (p.id, "searchme", key.prefix, "req-abc"):
        page = staff_client.get("/admin/gateway/prediction/", {"q": q}).content.decode()
        assert p.id in page and other.id not in page, q
    page = staff_client.get("/admin/gateway/prediction/", {"status__exact": "failed"}).content.decode()
    assert other.id in page and p.id not in page
    detail = staff_client.get(f"/admin/gateway/prediction/{p.pk}/change/")
    assert detail.status_code == 200 and b'name="_save"' not in detail.content



def test_fleet_selector_and_page_from_heartbeats(staff_client, staff, settings):
    """Synthetic heartbeats under a private prefix: labels, queue depths, device memory, staleness."""
    import json
    import time
    import uuid

    from modelport.ops.selectors import fleet_workers
    from modelport.ops.services import redis_client

    settings.MODELPORT_REDIS_PREFIX = f"mpfleet{uuid.uuid4().hex[:8]}"
    version = _version(staff, name="gpu-model")
    ModelVersion.objects.filter(pk=version.pk).update(gpu_memory_limit_mb=1024, disabled=True)
    now = time.time()
    beats = {
        "gpu-1": {"id": "gpu-1", "host": "h1", "pid": 7, "hardware": "gpu", "device": "cuda:0",
                  "device_name": "NVIDIA H100", "device_memory_used": 3 * 2**30, "device_memory_total": 80 * 2**30,
                  "host_memory_used": 2**30, "host_memory_total": 2**34, "loaded": [version.pk, 999999],
                  "queue_depths": {f"{settings.MODELPORT_REDIS_PREFIX}:q:v{version.pk}": 3}, "served": 12,
                  "ts": now - 1},
        "old-1": {"id": "old-1", "host": "h0", "pid": 8, "loaded": [], "ts": now - 3600},
    }
    client = redis_client()
    key = f"{settings.MODELPORT_REDIS_PREFIX}:workers"
    try:
        client.hset(key, mapping={k: json.dumps(v) for k, v in beats.items()} | {"junk": "not json"})
        workers = fleet_workers(client=client, now=now)
        assert [(w.id, w.stale) for w in workers] == [("gpu-1", False), ("old-1", True)]
        gpu = workers[0]
        assert [(v.label, v.disabled, v.gpu_memory_limit_mb) for v in gpu.loaded] == [
            ("root/gpu-model v1", True, 1024), ("version #999999 (deleted)", False, None)]
        assert gpu.queue_depths == {f"q:v{version.pk}": 3}
        page = staff_client.get("/admin/fleet/").content.decode()
        assert "NVIDIA H100" in page and "3.0 GiB / 80.0 GiB" in page and "1.0 GiB / 16.0 GiB" in page
        assert f"q:v{version.pk}: 3" in page and "GPU limit 1024 MB" in page and "(disabled)" in page
        assert page.count("STALE") == 1
    finally:
        client.delete(key)


def test_webhook_deliveries_listed_with_attempts_and_resent(staff_client, staff, django_capture_on_commit_callbacks):
    from django.utils import timezone
    from modelport.gateway.models import WebhookAttempt, WebhookDelivery

    version = _version(staff, name="hooked")
    p = Prediction.objects.create(user=staff, account=staff.credit_account, version=version, status="succeeded",
                                  deadline_at=timezone.now(), webhook="https://hooks.example.com/x",
                                  webhook_events=["completed"])
    delivery = WebhookDelivery.objects.create(prediction=p, event="completed", url=p.webhook, status="dead",
                                              attempts=1)
    WebhookAttempt.objects.create(delivery=delivery, number=1, status_code=502, error="bad gateway")
    page = staff_client.get(f"/admin/gateway/webhookdelivery/{delivery.pk}/change/").content.decode()
    assert "bad gateway" in page and "502" in page
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        resp = staff_client.post("/admin/gateway/webhookdelivery/",
                                 {"action": "resend", "_selected_action": [delivery.pk], "index": "0"})
    assert resp.status_code == 302
    assert len(callbacks) == 1  # the send, after commit
    new = WebhookDelivery.objects.exclude(pk=delivery.pk).get(prediction=p)
    assert (new.event, new.status, new.url) == ("completed", "pending", p.webhook)
    assert AuditEntry.objects.get(action="webhook.resend").details == {
        "delivery_id": delivery.pk, "new_delivery_id": new.pk, "event": "completed"}


def test_model_list_shows_the_effective_default_and_plural_labels_read_right(staff_client, staff):
    owner = make_staff("owner", staff=False)
    model = Model.objects.create(owner=owner, name="mlp")
    other = Model.objects.create(owner=owner, name="empty")
    for number, status in ((1, "ready"), (2, "ready"), (3, "failed")):
        ModelVersion.objects.create(model=model, number=number, format="onnx", status=status,
                                    upload_sha256="0" * 64, upload_filename="m.onnx")
    page = staff_client.get("/admin/registry/model/").content.decode()
    row = page.split(f'/admin/registry/model/{model.pk}/change/', 1)[1].split("</tr>", 1)[0]
    # no default set: calls go to the newest ready version
    assert '<td class="field-effective_default">v2 (newest ready)</td>' in row
    empty_row = page.split(f'/admin/registry/model/{other.pk}/change/', 1)[1].split("</tr>", 1)[0]
    assert '<td class="field-effective_default">—</td>' in empty_row
    model.default_version = model.versions.get(number=1)
    model.save(update_fields=["default_version"])
    page = staff_client.get("/admin/registry/model/").content.decode()
    row = page.split(f'/admin/registry/model/{model.pk}/change/', 1)[1].split("</tr>", 1)[0]
    assert '<td class="field-effective_default">v1</td>' in row
    versions = staff_client.get(VERSIONS, {"model__owner__id__exact": str(owner.pk)}).content.decode()

    def default_icon(label: str) -> str:
        cell = versions.split(f">{label}</a>", 1)[1].split('<td class="field-is_default">', 1)[1]
        return cell.split("</td>", 1)[0]

    assert "icon-yes" in default_icon("owner/mlp v1")
    assert "icon-no" in default_icon("owner/mlp v2") and "icon-no" in default_icon("owner/mlp v3")
    model.default_version = None
    model.save(update_fields=["default_version"])
    versions = staff_client.get(VERSIONS, {"model__owner__id__exact": str(owner.pk)}).content.decode()
    assert "icon-yes" in default_icon("owner/mlp v2")  # the newest ready one, though none is set
    assert "icon-no" in default_icon("owner/mlp v1") and "icon-no" in default_icon("owner/mlp v3")
    index = staff_client.get("/admin/").content.decode()
    assert ">Ledger entries<" in index and ">Webhook deliveries<" in index
    assert "entrys" not in index and "deliverys" not in index
