"""Dashboard pages through Django's test client (no browser, no workers): auth, keys, models,
the no-JavaScript upload and default-version paths, the status fragment, billing and CSV,
static files, charts and snippets."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from django.core import mail
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from modelport.accounts.models import ApiKey
from modelport.accounts.services import hash_key, user_create
from modelport.billing.models import MICRO, CreditAccount, LedgerEntry
from modelport.dashboard import charts, selectors, snippets
from modelport.gateway.models import Prediction
from modelport.registry.models import Model, ModelVersion

PASSWORD = "tensor-Parity-42"
SIGNATURE = {
    "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 3]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 2]}],
}


@pytest.fixture
def alice(db, client):
    user = user_create(username="alice", email="alice@example.com", password=PASSWORD)
    client.force_login(user)
    return user


def make_model(owner, name="mlp", visibility="private", versions=("ready",)):
    model = Model.objects.create(owner=owner, name=name, visibility=visibility)
    for number, status in enumerate(versions, start=1):
        ModelVersion.objects.create(
            model=model,
            number=number,
            format="onnx",
            status=status,
            upload_sha256="0" * 64,
            upload_filename="m.onnx",
            signature=SIGNATURE if status == "ready" else None,
            report={"parity_max_abs_error": None, "latency_ms_p50": 0.5, "peak_memory_mb": 1.5},
            error={"code": "not_onnx", "message": "the file is not an ONNX model"} if status == "failed" else None,
        )
    return model


def make_prediction(user, version, *, charged, total_ms=10.0, days_ago=0, status="succeeded"):
    p = Prediction.objects.create(
        user=user,
        account=CreditAccount.objects.get(user=user),
        version=version,
        status=status,
        charged=charged,
        hold_amount=charged,
        metrics={"queue_ms": 1.0, "compute_ms": 2.0, "total_ms": total_ms},
        deadline_at=timezone.now(),
    )
    Prediction.objects.filter(pk=p.pk).update(created_at=timezone.now() - timedelta(days=days_ago))
    return p


# --- accounts --------------------------------------------------------------------------------------


def test_signup_creates_the_account_with_the_grant_and_logs_in(db, client):
    resp = client.post(
        "/signup/", {"username": "bob", "email": "bob@example.com", "password1": PASSWORD, "password2": PASSWORD}
    )
    assert resp.status_code == 302 and resp["Location"] == "/"
    account = CreditAccount.objects.get(user__username="bob")
    assert account.balance == 50_000 * MICRO
    assert list(LedgerEntry.objects.filter(account=account).values_list("kind", "amount")) == [
        ("grant", 50_000 * MICRO)
    ]
    page = client.get("/billing/")
    assert page.status_code == 200
    assert b'data-micro="50000000000">50,000.000000<' in page.content


def test_signup_errors_are_shown_next_to_the_field(db, client):
    user_create(username="bob", password=PASSWORD)
    resp = client.post(
        "/signup/", {"username": "bob", "email": "b@example.com", "password1": PASSWORD, "password2": PASSWORD}
    )
    assert resp.status_code == 200
    html = resp.content.decode()
    error = html.split('data-error-for="username"', 1)[1].split("</p>", 1)[0]
    assert "already exists" in error
    assert CreditAccount.objects.filter(user__username="bob").count() == 1


@pytest.mark.parametrize("path", ["/keys/", "/billing/", "/models/new/", "/billing/usage.csv", "/password_change/"])
def test_pages_need_login(db, client, path):
    resp = client.get(path)
    assert resp.status_code == 302
    assert resp["Location"] == f"/login/?next={path}"


def test_login_logout_and_password_reset(db, client):
    user_create(username="carol", email="carol@example.com", password=PASSWORD)
    assert client.post("/login/", {"username": "carol", "password": "wrong"}).status_code == 200
    resp = client.post("/login/", {"username": "carol", "password": PASSWORD})
    assert resp.status_code == 302 and resp["Location"] == "/"
    assert client.get("/keys/").status_code == 200
    assert client.post("/logout/").status_code == 302
    assert client.get("/keys/").status_code == 302
    resp = client.post("/password_reset/", {"email": "carol@example.com"})
    assert resp.status_code == 302 and resp["Location"] == "/password_reset/done/"
    assert len(mail.outbox) == 1
    link = next(line for line in mail.outbox[0].body.splitlines() if "/reset/" in line)
    path = link.split("testserver", 1)[1]
    resp = client.get(path, follow=True)
    assert resp.status_code == 200 and b"Choose a new password" in resp.content
    new = "another-Secret-77"
    resp = client.post(resp.redirect_chain[-1][0], {"new_password1": new, "new_password2": new})
    assert resp.status_code == 302 and resp["Location"] == "/reset/done/"
    assert client.login(username="carol", password=new)


# --- API keys --------------------------------------------------------------------------------------


def test_key_is_shown_once_then_listed_by_prefix_and_revocable(alice, client):
    resp = client.post("/keys/", {"name": "ci"})
    assert resp.status_code == 302 and resp["Location"] == "/keys/"  # POST → redirect → GET
    shown = client.get("/keys/")
    assert "no-store" in shown["Cache-Control"]
    secret = shown.content.decode().split('id="new-key" class="mono" type="text" value="', 1)[1].split('"', 1)[0]
    key = ApiKey.objects.get(user=alice)
    assert key.key_hash == hash_key(secret) and key.name == "ci"
    assert secret not in str(dict(client.session))  # the session held it only until it was shown
    listing = client.get("/keys/").content.decode()  # a reload: the secret is gone, no second key
    assert secret not in listing and f"{key.prefix}…" in listing
    assert ApiKey.objects.filter(user=alice).count() == 1
    resp = client.post(f"/keys/{key.prefix}/revoke/")
    assert resp.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_cannot_revoke_someone_elses_key(alice, client):
    other = user_create(username="mallory", password=PASSWORD)
    from modelport.accounts.services import api_key_issue

    issued = api_key_issue(user=other)
    assert client.post(f"/keys/{issued.api_key.prefix}/revoke/").status_code == 404
    issued.api_key.refresh_from_db()
    assert issued.api_key.revoked_at is None


# --- models ----------------------------------------------------------------------------------------


def test_create_model_and_duplicate_name_error(alice, client):
    resp = client.post("/models/new/", {"name": "mlp", "visibility": "private", "description": ""})
    assert resp.status_code == 302 and resp["Location"] == "/models/alice/mlp/upload/"
    resp = client.post("/models/new/", {"name": "mlp", "visibility": "private", "description": ""})
    assert resp.status_code == 200
    assert "you already have a model named mlp" in resp.content.decode()
    assert Model.objects.filter(owner=alice).count() == 1


def test_home_lists_mine_and_public_with_search(alice, client):
    other = user_create(username="bob", password=PASSWORD)
    make_model(alice, "mine")
    make_model(other, "shared", visibility="public")
    make_model(other, "secret")
    html = client.get("/").content.decode()
    assert "alice/mine" in html and "bob/shared" in html and "bob/secret" not in html
    html = client.get("/?q=shar").content.decode()
    assert "bob/shared" in html and "alice/mine" not in html


def test_model_page_shows_signature_report_snippets_and_try_it(alice, client):
    make_model(alice, "mlp", versions=("ready", "failed"))
    html = client.get("/models/alice/mlp/").content.decode()
    assert "[?, 3]" in html and "[?, 2]" in html
    assert "n/a (ONNX upload: nothing was converted)" in html
    assert 'data-api="/api/v1/models/alice/mlp/predictions"' in html
    assert "[[0.0, 0.0, 0.0]]" in html  # the try-it example: zeros, dynamic axis = 1
    assert "httpclient.InferInput(&quot;x&quot;, [1, 3], &quot;FP32&quot;)" in html
    html = client.get("/models/alice/mlp/versions/2/").content.decode()
    assert "the file is not an ONNX model" in html and 'id="try-form"' not in html


def test_private_model_is_404_for_others_and_public_one_is_readable_anonymously(alice, client):
    make_model(alice, "private-one")
    make_model(alice, "public-one", visibility="public")
    client.logout()
    assert client.get("/models/alice/private-one/").status_code == 404
    assert client.get("/models/alice/private-one/versions/1/status/").status_code == 404
    resp = client.get("/models/alice/public-one/")
    assert resp.status_code == 200 and b"to try this model" in resp.content
    other = user_create(username="bob", password=PASSWORD)
    client.force_login(other)
    assert client.get("/models/alice/private-one/").status_code == 404
    assert client.get("/models/alice/public-one/upload/").status_code == 403


def test_upload_without_javascript_uses_the_same_service(alice, client):
    make_model(alice, "mlp", versions=())
    resp = client.post(
        "/models/alice/mlp/upload/",
        {
            "format": "onnx",
            "artifact": SimpleUploadedFile("m.onnx", b"\x08\x07onnx-bytes"),
        },
    )
    assert resp.status_code == 302 and resp["Location"] == "/models/alice/mlp/versions/1/"
    version = ModelVersion.objects.get(model__name="mlp")
    assert version.status == "queued" and version.upload_filename == "m.onnx"
    resp = client.post(
        "/models/alice/mlp/upload/",
        {
            "format": "state_dict",
            "artifact": SimpleUploadedFile("w.safetensors", b"x"),
            "entrypoint": "Net",
            "inputs": '[{"name": "x", "dtype": "float32", "shape": [null, 3]}]',
        },
    )
    assert resp.status_code == 400
    error = resp.content.decode().split('data-error-for="source"', 1)[1].split("</p>", 1)[0]
    assert "format state_dict needs the source file" in error
    assert ModelVersion.objects.filter(model__name="mlp").count() == 1


def test_set_default_without_javascript(alice, client):
    model = make_model(alice, "mlp", versions=("ready", "ready", "failed"))
    client.post("/models/alice/mlp/default/", {"default_version": "1"})
    model.refresh_from_db()
    assert model.default_version.number == 1
    resp = client.post("/models/alice/mlp/default/", {"default_version": "3"}, follow=True)
    assert "only a ready version can be the default" in resp.content.decode()
    model.refresh_from_db()
    assert model.default_version.number == 1


def test_status_fragment_polls_until_terminal(alice, client):
    model = make_model(alice, "mlp", versions=("validating",))
    html = client.get("/models/alice/mlp/versions/1/status/").content.decode()
    assert 'data-version-status="validating"' in html and 'hx-trigger="load delay:700ms"' in html
    model.versions.update(status="ready")
    resp = client.get("/models/alice/mlp/versions/1/status/?refresh=1", HTTP_HX_REQUEST="true")
    assert 'data-version-status="ready"' in resp.content.decode() and "hx-trigger" not in resp.content.decode()
    assert resp["HX-Refresh"] == "true"


def test_report_fields_are_labelled_for_people(alice, client):
    model = make_model(alice, "mlp")
    model.versions.update(
        report={
            "parity_max_abs_error": None,
            "latency_ms_p50": 0.5,
            "peak_memory_mb": 1.5,
            "opset": 17,
            "sandbox_wall_seconds": 1.25,
            "export_wall_ms": 3.0,
            "sample_shapes": {"x": [1, 3]},
        }
    )
    html = client.get("/models/alice/mlp/").content.decode()
    report = html.split('<dl class="report">', 1)[1].split("</dl>", 1)[0]
    labels = [part.split("</dt>", 1)[0] for part in report.split("<dt>")[1:]]
    assert labels == [
        "Parity: max abs error vs. the original",
        "Runtime latency p50 (ms, the model alone, not a whole call)",
        "Peak memory (MB)",
        "ONNX opset",
        "Sandbox wall time (s)",
        "Export wall (ms)",
    ]
    assert all("_" not in label for label in labels)
    values = [part.split("</dd>", 1)[0] for part in report.split("<dd>")[1:]]
    assert values[3] == "17" and values[5] == "3.00"
    model.versions.update(report={"parameter_count": 50890, "latency_ms_p50": 0.5})
    report = client.get("/models/alice/mlp/").content.decode().split('<dl class="report">', 1)[1]
    assert "<dt>Parameters</dt><dd>50,890</dd>" in report


def test_failed_version_shows_its_error_code_and_message_in_the_versions_table(alice, client):
    make_model(alice, "mlp", versions=("ready", "failed"))
    html = client.get("/models/alice/mlp/").content.decode()
    row = html.split('data-version-row="2"', 1)[1].split("</tr>", 1)[0]
    assert '<code class="row-error-code">not_onnx</code>' in row
    assert '<span class="row-error-message">the file is not an ONNX model</span>' in row
    assert "row-error" not in html.split('data-version-row="1"', 1)[1].split("</tr>", 1)[0]


def test_version_page_snippets_call_that_version_with_its_names(alice, client):
    make_model(alice, "mlp", versions=("ready", "ready"))
    html = client.get("/models/alice/mlp/versions/1/").content.decode()
    assert "http://testserver/api/v1/models/alice/mlp/versions/1/predictions" in html
    assert "modelport predict alice/mlp --version 1 -i x=@x.npy" in html
    assert "# writes y.npy" in html
    assert (
        "client.predict(&quot;alice/mlp&quot;, {&quot;x&quot;: np.zeros((1, 3), dtype=&quot;float32&quot;)}, version=1)"
        in html
    )
    assert "model_version=&quot;1&quot;" in html
    assert 'data-api="/api/v1/models/alice/mlp/versions/1/predictions"' in html  # try it: the same version
    assert "Calls go to version 1." in html
    default_page = client.get("/models/alice/mlp/").content.decode()
    assert "modelport predict alice/mlp -i x=@x.npy" in default_page and "--version" not in default_page
    assert "Calls go to the default version (now v2)." in default_page


def test_owner_edits_description_and_visibility_through_the_service(alice, client):
    model = make_model(alice, "mlp")
    page = client.get("/models/alice/mlp/").content.decode()
    assert 'id="model-edit-form"' in page
    resp = client.post("/models/alice/mlp/edit/", {"visibility": "public", "description": "digits, 28 by 28"})
    assert resp.status_code == 302 and resp["Location"] == "/models/alice/mlp/"
    model.refresh_from_db()
    assert (model.visibility, model.description) == ("public", "digits, 28 by 28")
    # bad input: refused, nothing changes
    resp = client.post("/models/alice/mlp/edit/", {"visibility": "secret", "description": "x"}, follow=True)
    assert "Select a valid choice" in resp.content.decode()
    resp = client.post("/models/alice/mlp/edit/", {"visibility": "private", "description": "d" * 5001}, follow=True)
    assert "at most 5000 characters" in resp.content.decode()
    model.refresh_from_db()
    assert (model.visibility, model.description) == ("public", "digits, 28 by 28")
    # someone else: the same choke point as the API (403 on a public model, 404 on a private one)
    other = user_create(username="bob", password=PASSWORD)
    client.force_login(other)
    assert 'id="model-edit-form"' not in client.get("/models/alice/mlp/").content.decode()
    assert client.post("/models/alice/mlp/edit/", {"visibility": "private", "description": ""}).status_code == 403
    make_model(alice, "hidden")
    assert client.post("/models/alice/hidden/edit/", {"visibility": "public", "description": ""}).status_code == 404
    model.refresh_from_db()
    assert (model.visibility, model.description) == ("public", "digits, 28 by 28")
    assert Model.objects.get(name="hidden").visibility == "private"


def test_favicon_ico_is_served(db, client):
    resp = client.get("/favicon.ico")
    assert resp.status_code == 200 and resp["Content-Type"] == "image/vnd.microsoft.icon"
    assert resp.content[:4] == b"\x00\x00\x01\x00"  # an ICO directory


# --- billing ---------------------------------------------------------------------------------------


def test_usage_is_paginated_filtered_and_downloadable(alice, client):
    v1 = make_model(alice, "one").versions.get()
    v2 = make_model(alice, "two").versions.get()
    for i in range(22):
        make_prediction(alice, v1, charged=100_000 + i, total_ms=float(i + 1))
    make_prediction(alice, v2, charged=5, days_ago=3)
    other = user_create(username="bob", password=PASSWORD)
    make_prediction(other, v1, charged=7)

    page1 = client.get("/billing/").content.decode()
    assert page1.count("<tr data-prediction=") == 20 and "Page 1 of 2" in page1
    page2 = client.get("/billing/?page=2").content.decode()
    assert page2.count("<tr data-prediction=") == 3
    only_two = client.get(f"/billing/?model={v2.model_id}").content.decode()
    assert only_two.count("<tr data-prediction=") == 1 and "0.000005" in only_two
    today = timezone.now().date().isoformat()
    assert client.get(f"/billing/?date_from={today}").content.decode().count("<tr data-prediction=") == 20
    # an invalid range (From after To) lists nothing and says so; its CSV is empty too
    yesterday = (timezone.now().date() - timedelta(days=1)).isoformat()
    invalid = client.get(f"/billing/?date_from={today}&date_to={yesterday}").content.decode()
    assert invalid.count("<tr data-prediction=") == 0
    assert "The date range is invalid; nothing is listed." in invalid
    assert "must be on or after the start date" in invalid
    csv_rows = client.get(f"/billing/usage.csv?date_from={today}&date_to={yesterday}").content.decode().splitlines()
    assert len(csv_rows) == 1

    resp = client.get(f"/billing/usage.csv?model={v2.model_id}")
    assert resp["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(resp.content.decode())))
    assert rows[0][:4] == ["id", "created_at", "model", "version"]
    assert len(rows) == 2 and rows[1][2] == "alice/two" and rows[1][9] == "0.000005"
    assert len(list(csv.reader(io.StringIO(client.get("/billing/usage.csv").content.decode())))) == 24


def test_chart_selectors(alice):
    version = make_model(alice, "one").versions.get()
    for ms in (1.0, 2.0, 3.0, 100.0):
        make_prediction(alice, version, charged=MICRO, total_ms=ms)
    make_prediction(alice, version, charged=MICRO // 2, days_ago=2)
    daily = selectors.usage_daily(user=alice, days=14)
    assert len(daily) == 14 and daily[-1].calls == 4 and daily[-1].charged == 4 * MICRO
    assert daily[-3].calls == 1 and daily[-3].charged == MICRO // 2 and daily[0].calls == 0
    [latency] = selectors.latency_by_model(user=alice, days=30)
    assert (latency.model, latency.calls, latency.p50_ms, latency.p99_ms) == ("alice/one", 5, 3.0, 100.0)


def test_charts_render_escaped_svg():
    assert [charts.nice_ceiling(v) for v in (0, 0.3, 1, 3, 7, 11, 240)] == [1, 0.5, 1, 5, 10, 20, 250]
    svg = charts.bar_chart(title="Calls", bars=[("<b>", 1), ("x", 3)], unit="calls", integer=True)
    assert svg.startswith('<svg class="chart"') and "&lt;b&gt;: 1 calls" in svg and "<b>" not in svg
    assert ">4</text>" in svg  # integer axis: 0, 1, 2, 3, 4
    assert "No calls yet" in charts.bar_chart(title="t", bars=[("a", 0)], unit="calls")
    assert "alice/m p99: 12.5 ms" in charts.latency_chart(title="t", rows=[("alice/m", 2.0, 12.5)])


def test_example_inputs_and_snippets():
    assert json.loads(snippets.example_json({"name": "x", "dtype": "float32", "shape": [None, 2]})) == [[0.0, 0.0]]
    assert json.loads(snippets.example_json({"name": "i", "dtype": "int64", "shape": [2]})) == [0, 0]
    assert json.loads(snippets.example_json({"name": "b", "dtype": "bool", "shape": [1]})) == [False]
    assert snippets.example_json({"name": "big", "dtype": "float32", "shape": [None, 3, 224, 224]}) == ""
    assert snippets.python_zeros_expr([1, 3, 4], "float32") == "[[[0.0] * 4] * 3]"
    code = snippets.snippets(
        base_url="http://h:8000/", model="a/m", inputs=SIGNATURE["inputs"], outputs=SIGNATURE["outputs"]
    )
    assert '-d \'{"input": {"x": [[0.0, 0.0, 0.0]]}}\'' in code["curl"]
    assert 'InferenceServerClient(url="h:8000")' in code["tritonclient"]
    assert 'print(result.as_numpy("y"))' in code["tritonclient"]


# --- static files ----------------------------------------------------------------------------------


def test_static_files_are_served_by_the_app(db, client):
    css = client.get("/static/css/app.css")
    assert css.status_code == 200 and css["Content-Type"].startswith("text/css")
    js = client.get("/static/vendor/htmx-2.0.11/htmx.min.js")
    assert js.status_code == 200 and js.content.startswith(b"var htmx=function()")
    again = client.get("/static/css/app.css", HTTP_IF_MODIFIED_SINCE=css["Last-Modified"])
    assert again.status_code == 304
    assert client.get("/static/css/missing.css").status_code == 404
    assert client.get("/static/../../platform/modelport/config/settings.py").status_code == 404
    assert client.get("/static/%2e%2e/%2e%2e/manage.py").status_code == 404
