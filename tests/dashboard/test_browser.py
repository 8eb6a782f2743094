"""Issue 7 acceptance: the dashboard driven in a real browser (Debian's Chromium, headless)
against the live stack (uvicorn + conversion and serving workers).

sign up → create an API key and copy it → create a model → upload the ONNX example and watch it
reach ready → try it (output, charge) → balance and usage row → upload a broken state_dict and
see its error → revoke the key and see the API refuse it. Every page visited is screenshotted
into test-artifacts/screenshots/ and checked for console errors, failed requests, HTTP errors
and missing static files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from safetensors.numpy import save_file

from workers.demo import mlp_onnx

pytestmark = pytest.mark.integration

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PASSWORD = "tensor-Parity-42"
TIMEOUT_MS = 120_000

# Records every status the live status panel shows, in order, so the test can see it change.
STATUS_RECORDER = """
window.__statuses = [];
new MutationObserver(() => {
  for (const el of document.querySelectorAll('[data-version-status]')) {
    const s = el.dataset.versionStatus;
    if (window.__statuses[window.__statuses.length - 1] !== s) window.__statuses.push(s);
  }
}).observe(document, {subtree: true, childList: true, attributes: true});
"""

BROKEN_SOURCE = """
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)
"""


class PageMonitor:
    """Collects console errors, failed requests and HTTP errors of one page, and checks that
    every stylesheet, script and image a page references is served."""

    def __init__(self, page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.problems: list[str] = []
        self.static_ok: dict[str, int] = {}
        self.shots = 0
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc} @ {page.url}"))
        page.on("requestfailed", lambda req: self.problems.append(f"failed: {req.method} {req.url} {req.failure}"))
        page.on("response", self._response)

    def _console(self, msg) -> None:
        if msg.type == "error":
            self.problems.append(f"console error: {msg.text} @ {self.page.url}")

    def _response(self, resp) -> None:
        if resp.status >= 400:
            self.problems.append(f"HTTP {resp.status}: {resp.request.method} {resp.url}")

    def check(self, name: str, *, full_page: bool = True) -> None:
        """Screenshot the page and assert it is clean so far."""
        self.shots += 1
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{self.shots:02d}-{name}.png"), full_page=full_page)
        refs = self.page.eval_on_selector_all(
            "link[rel=stylesheet], link[rel=icon], script[src], img[src]", "els => els.map(e => e.href || e.src)"
        )
        assert refs, f"{name}: the page references no static files (no stylesheet?)"
        for url in refs:
            assert urlsplit(url).netloc == urlsplit(self.base_url).netloc, f"{name}: external asset {url}"
            if url not in self.static_ok:
                self.static_ok[url] = self.page.request.get(url).status
            assert self.static_ok[url] == 200, f"{name}: missing static file {url} ({self.static_ok[url]})"
        sheets = self.page.evaluate("document.styleSheets.length")
        assert sheets >= 1, f"{name}: no stylesheet applied"
        assert self.problems == [], f"{name}: {self.problems}"


@pytest.fixture
def browser(live):
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        context = chromium.new_context(
            base_url=live.base_url, viewport={"width": 1280, "height": 900}, accept_downloads=True
        )
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.base_url)
        context.set_default_timeout(20_000)
        context.add_init_script(STATUS_RECORDER)
        page = context.new_page()
        try:
            yield page, PageMonitor(page, live.base_url)
        finally:
            context.close()
            chromium.close()


def _create_model(page, monitor: PageMonitor, name: str, shot: str | None = None, owner: str = "dana") -> None:
    page.goto("/models/new/")
    page.fill("#id_name", name)
    page.click("button:text('Create model')")
    page.wait_for_url(f"**/models/{owner}/{name}/upload/")
    if shot:
        monitor.check(shot)


def test_dashboard_end_to_end(live, browser, tmp_path, request):
    page, monitor = browser
    base = live.base_url

    # --- sign up (the 50,000-credit grant comes with the account) ---------------------------------
    page.goto("/signup/")
    monitor.check("signup")
    page.fill("#id_username", "dana")
    page.fill("#id_email", "dana@example.com")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD + "x")
    page.click("button:text('Sign up')")
    expect(page.locator('[data-error-for="password2"]')).to_contain_text("password fields didn")
    monitor.check("signup-error")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("button:text('Sign up')")
    page.wait_for_url(f"{base}/")
    expect(page.locator(".messages")).to_contain_text("50,000.000000 credits")
    expect(page.locator(".nav-user")).to_contain_text("dana")
    monitor.check("models-empty")

    # --- API key: created, shown once, copied ---------------------------------------------------
    page.goto("/keys/")
    page.fill("#id_name", "laptop")
    page.click("button:text('Create key')")
    key = page.input_value("#new-key")
    assert re.fullmatch(r"mp_[0-9a-f]{8}_[\w-]{32}", key), key
    page.click("button[data-copy='#new-key']")
    expect(page.locator("button[data-copy='#new-key']")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == key
    prefix = key[: len("mp_") + 8]
    row = page.locator(f'tr[data-key-prefix="{prefix}"]')
    expect(row).to_contain_text("laptop")
    expect(row).to_contain_text("never")
    expect(row).to_contain_text("active")
    monitor.check("keys-created")
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    request.addfinalizer(api.close)
    account = api.get("/api/v1/account")
    assert account.status_code == 200
    assert account.json()["username"] == "dana"
    start_micro = account.json()["credits_micro"]
    assert start_micro == 50_000 * 1_000_000
    page.goto("/keys/")
    expect(row).not_to_contain_text("never")  # last used is shown once the key was used
    expect(page.locator("#new-key")).to_have_count(0)  # the secret is never shown again
    expect(page.locator("table.keys tbody tr")).to_have_count(1)

    # --- create a model (a bad name is refused next to the field) -------------------------------
    page.goto("/models/new/")
    page.fill("#id_name", "My Model")
    page.click("button:text('Create model')")
    expect(page.locator('[data-error-for="name"]')).to_contain_text("Lowercase letters")
    monitor.check("model-new-error")
    _create_model(page, monitor, "mlp", shot="upload-form")

    # --- upload: client-side checks stop bad input before any request -----------------------------
    uploads: list[str] = []
    page.on("request", lambda req: uploads.append(req.url) if req.method == "POST" and "/versions" in req.url else None)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    page.set_input_files("#id_artifact", str(notes))
    page.fill("#id_inputs", '[{"name": "x", "dtype": "float32", "shape": [null, 784]')
    page.click("button:text('Upload')")
    expect(page.locator('[data-error-for="artifact"]')).to_contain_text(".onnx")
    expect(page.locator('[data-error-for="inputs"]')).to_contain_text("not valid JSON")
    page.check("input[name=format][value=state_dict]")
    expect(page.locator("#id_source")).to_be_visible()
    page.click("button:text('Upload')")
    expect(page.locator('[data-error-for="source"]')).to_contain_text("source")
    expect(page.locator('[data-error-for="entrypoint"]')).to_be_visible()
    monitor.check("upload-client-errors")
    assert uploads == []

    # --- upload the ONNX example, watch it go to ready -------------------------------------------
    page.check("input[name=format][value=onnx]")
    expect(page.locator("#id_source")).to_be_hidden()
    page.fill("#id_inputs", "")
    page.set_input_files("#id_artifact", str(mlp_onnx(tmp_path / "mlp.onnx", sizes=(784, 64, 10), seed=7)))
    page.click("button:text('Upload')")
    expect(page.locator(".progress-text")).to_have_text("100%")
    expect(page.locator("#upload-status [data-version-status]")).to_have_attribute(
        "data-version-status", "ready", timeout=TIMEOUT_MS
    )
    statuses = page.evaluate("window.__statuses")
    assert statuses[-1] == "ready" and statuses[0] in ("queued", "validating"), statuses
    assert len(uploads) == 1
    monitor.check("upload-ready")

    # --- model page: signature, report, snippets, try it ----------------------------------------
    page.click("a:text('Open version 1')")
    page.wait_for_url("**/models/dana/mlp/versions/1/")
    signature = page.locator("table.signature")
    expect(signature.locator("tbody tr").nth(0)).to_contain_text("x")
    expect(signature.locator("tbody tr").nth(0)).to_contain_text("float32")
    expect(signature.locator("tbody tr").nth(0)).to_contain_text("[?, 784]")
    expect(signature.locator("tbody tr").nth(1)).to_contain_text("[?, 10]")
    expect(page.locator(".report")).to_contain_text("n/a (ONNX upload")
    expect(page.locator(".report")).to_contain_text("Runtime latency p50 (ms, the model alone")
    expect(page.locator("#snippet-curl")).to_contain_text(f"{base}/api/v1/models/dana/mlp/versions/1/predictions")
    expect(page.locator("#snippet-python")).to_contain_text('np.zeros((1, 784), dtype="float32")')
    expect(page.locator("#snippet-tritonclient")).to_contain_text('httpclient.InferInput("x", [1, 784], "FP32")')
    expect(page.locator("#snippet-tritonclient")).to_contain_text('client.infer("dana/mlp"')
    assert json.loads(page.input_value("#try-input-1")) == [[0.0] * 784]
    page.click("button:text('Run prediction')")
    result = page.locator("#try-result")
    expect(result.locator(".r-status")).to_have_text("succeeded", timeout=30_000)
    output = json.loads(result.locator(".r-output").text_content())
    assert np.asarray(output["y"]).shape == (1, 10)
    charged = int(result.locator(".r-charged").get_attribute("data-micro"))
    assert charged > 0
    expect(result.locator(".r-charged")).to_have_text(f"{charged / 1_000_000:.6f}")
    monitor.check("model-try-it")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the model page scrolls sideways on a phone"
    monitor.check("model-phone-390px")
    page.set_viewport_size({"width": 1280, "height": 900})

    # --- a second version; set the default back to v1 (PATCH through the API with the session) ---
    page.goto("/models/dana/mlp/upload/")
    page.set_input_files("#id_artifact", str(tmp_path / "mlp.onnx"))
    page.click("button:text('Upload')")
    expect(page.locator("#upload-status [data-version-status]")).to_have_attribute(
        "data-version-status", "ready", timeout=TIMEOUT_MS
    )
    page.goto("/models/dana/mlp/")
    expect(page.locator('tr[data-version-row="2"]')).to_contain_text("default")  # newest ready until set
    with page.expect_response(lambda r: r.request.method == "PATCH") as patched:
        page.locator('tr[data-version-row="1"] button:text("Make default")').click()
    assert patched.value.status == 200
    page.wait_for_load_state()
    expect(page.locator('tr[data-version-row="1"] .badge.default')).to_have_text("default")
    expect(page.locator('tr[data-version-row="2"] button:text("Make default")')).to_be_visible()
    assert api.get("/api/v1/models/dana/mlp").json()["default_version"] == 1
    monitor.check("model-default-set")

    # --- billing: balance dropped by the charge, one usage row, charts, CSV -----------------------
    page.goto("/billing/")
    assert int(page.get_attribute("#balance", "data-micro")) == start_micro - charged
    assert api.get("/api/v1/account").json()["credits_micro"] == start_micro - charged
    rows = page.locator("table.usage tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("dana/mlp")
    expect(rows.first).to_contain_text("succeeded")
    expect(rows.first).to_contain_text(f"{charged / 1_000_000:.6f}")
    expect(page.locator("svg.chart")).to_have_count(3)
    expect(page.locator("svg.chart rect.bar title").filter(has_text=": 1 calls")).to_have_count(1)
    expect(page.locator("svg.chart text.label")).to_have_text(["dana/mlp"])
    monitor.check("billing")
    with page.expect_download() as download:
        page.click("#csv-link")
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith("id,created_at,model,version")
    assert len(lines) == 2 and ",dana/mlp,1,native,succeeded," in lines[1]
    assert lines[1].endswith(f",{charged // 1_000_000}.{charged % 1_000_000:06d},0.000000")
    page.goto("/billing/?date_from=2999-01-01")
    expect(page.locator("table.usage")).to_have_count(0)
    expect(page.locator("main")).to_contain_text("No calls match these filters")

    # --- a broken state_dict: the version fails and the page shows the API's error ---------------
    _create_model(page, monitor, "broken")
    weights = tmp_path / "weights.safetensors"
    save_file({"head.weight": np.zeros((2, 4), np.float32), "head.bias": np.zeros(2, np.float32)}, str(weights))
    source = tmp_path / "net.py"
    source.write_text(BROKEN_SOURCE)
    page.check("input[name=format][value=state_dict]")
    page.set_input_files("#id_artifact", str(weights))
    page.set_input_files("#id_source", str(source))
    page.fill("#id_entrypoint", "Net")
    page.fill("#id_inputs", '[{"name": "x", "dtype": "float32", "shape": [null, 4]}]')
    page.click("button:text('Upload')")
    status = page.locator("#upload-status [data-version-status]")
    expect(status).to_have_attribute("data-version-status", "failed", timeout=TIMEOUT_MS)
    error = api.get("/api/v1/models/dana/broken/versions/1").json()["error"]
    assert error["code"] == "state_dict_mismatch"
    assert "fc.weight [2, 4]" in error["message"], error  # names the missing key with its shape
    expect(page.locator("#upload-status .error-message")).to_have_text(error["message"])
    expect(page.locator("#upload-status .version-error")).to_contain_text(error["code"])
    monitor.check("upload-failed")
    page.goto("/models/dana/broken/")
    expect(page.locator(".versions")).to_contain_text("failed")
    expect(page.locator(".error-message")).to_have_text(error["message"])
    expect(page.locator("#try-form")).to_have_count(0)
    monitor.check("model-failed")

    # --- revoke the key: the API refuses it ------------------------------------------------------
    page.goto("/keys/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f'tr[data-key-prefix="{prefix}"] button:text("Revoke")').click()
    expect(page.locator(f'tr[data-key-prefix="{prefix}"]')).to_contain_text("revoked")
    monitor.check("keys-revoked")
    denied = api.get("/api/v1/account")
    assert denied.status_code == 401
    assert denied.json()["detail"] == "invalid or revoked API key"

    # --- the other account pages -------------------------------------------------------------------
    page.goto("/")
    expect(page.locator(".model-grid").first).to_contain_text("dana/mlp")
    page.fill("#q", "brok")
    page.click("button:text('Search')")
    expect(page.locator(".model-card")).to_have_count(1)
    monitor.check("models-search")
    page.goto("/password_change/")
    monitor.check("password-change")
    page.click("button:text('Log out')")
    page.wait_for_url("**/login/")
    monitor.check("login")
    page.goto("/password_reset/")
    page.fill("#id_email", "dana@example.com")
    page.click("button:text('Send reset link')")
    page.wait_for_url("**/password_reset/done/")
    monitor.check("password-reset-done")
    page.goto("/login/")
    page.fill("#id_username", "dana")
    page.fill("#id_password", PASSWORD)
    page.click("main button:text('Log in')")
    page.wait_for_url(f"{base}/")
    expect(page.locator(".nav-user")).to_contain_text("dana")


CREDITS_TEXT = re.compile(r"-?\d{1,3}(,\d{3})*\.\d{6}")


def _credits(micro: int) -> str:
    return f"{micro // 1_000_000:,}.{micro % 1_000_000:06d}"


def _orm(fn):
    """Run a database call off Playwright's thread (its event loop makes Django refuse ORM calls there)."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    def call():
        try:
            return fn()
        finally:
            connection.close()  # this thread's connection, so the test database can be dropped

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result(timeout=30)


def _run_snippet(code: str, *, python: bool, cwd: Path, key: str, base: str) -> str:
    import os
    import subprocess
    import sys

    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "MODELPORT_API_KEY": key,
        "MODELPORT_URL": base,
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
    }
    cmd = [sys.executable, "-c", code] if python else ["bash", "-euo", "pipefail", "-c", code]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, (code, done.stdout, done.stderr)
    return done.stdout


def test_dashboard_defects_seen_in_a_browser(live, browser, tmp_path, request):
    """Issue 17 item 7, each defect asserted in Chromium: keys (reload, 390 px), the favicon, a
    double-submitted upload, the status panel in view, failed versions in the table, snippets
    that call the version they are shown for (run as shown), one credits format, an invalid
    date range, the model's edit form and the admin's labels and default version."""
    from django.contrib.auth import get_user_model
    from modelport.accounts.models import ApiKey
    from modelport.registry.models import ModelVersion

    page, monitor = browser
    base = live.base_url
    page.goto("/signup/")
    page.fill("#id_username", "erin")
    page.fill("#id_email", "erin@example.com")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("button:text('Sign up')")
    page.wait_for_url(f"{base}/")
    expect(page.locator(".messages")).to_contain_text("50,000.000000 credits")

    # --- keys: created once (POST → redirect → GET); a reload creates nothing; fits 390 px ------
    page.goto("/keys/")
    page.fill("#id_name", "a rather long key label for a small screen")
    page.click("button:text('Create key')")
    page.wait_for_url(f"{base}/keys/")
    key = page.input_value("#new-key")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the keys page scrolls sideways"
    monitor.check("keys-phone-390px")
    page.reload()
    expect(page.locator("#new-key")).to_have_count(0)
    expect(page.locator("table.keys tbody tr")).to_have_count(1)
    assert _orm(lambda: ApiKey.objects.filter(user__username="erin").count()) == 1
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the keys list scrolls sideways"

    # --- /favicon.ico: served, and Chromium decodes it as an image ------------------------------------
    icon = page.request.get("/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"] == "image/vnd.microsoft.icon"
    size = page.evaluate(
        "() => new Promise(ok => { const i = new Image(); i.onload = () => ok(i.naturalWidth); "
        "i.onerror = () => ok(0); i.src = '/favicon.ico'; })"
    )
    assert size >= 16

    # --- upload on a phone: the status panel comes into view; a double click makes one version ----
    _create_model(page, monitor, "mlp", owner="erin")
    posts: list[str] = []
    page.on("request", lambda req: posts.append(req.url) if req.method == "POST" and "/versions" in req.url else None)
    onnx = mlp_onnx(tmp_path / "mlp.onnx", sizes=(784, 64, 10), seed=7)
    page.set_input_files("#id_artifact", str(onnx))
    panel = "document.getElementById('upload-status-card').getBoundingClientRect()"
    assert page.evaluate(f"{panel}.top") > 844, "the panel starts below the form on a phone"
    page.dblclick("button:text('Upload')")
    top, bottom = page.evaluate(f"[{panel}.top, {panel}.bottom]")
    assert bottom > 0 and top < 844, f"the status panel is out of view while uploading ({top}, {bottom})"
    expect(page.locator(".progress-text")).to_have_text("100%")
    expect(page.locator("#upload-status [data-version-status]")).to_have_attribute(
        "data-version-status", "ready", timeout=TIMEOUT_MS
    )
    submit = page.locator("#upload-form button[type=submit]")
    expect(submit).to_be_disabled()
    expect(submit).to_have_text("Uploaded")
    page.evaluate("document.getElementById('upload-form').requestSubmit()")  # Enter in a field, say
    page.wait_for_timeout(500)
    assert len(posts) == 1, posts
    assert _orm(lambda: ModelVersion.objects.filter(model__name="mlp", model__owner__username="erin").count()) == 1
    monitor.check("upload-done-phone")
    page.set_viewport_size({"width": 1280, "height": 900})

    # a second ready version (the default) and a failed third one
    page.click("a.upload-another")
    page.wait_for_url("**/models/erin/mlp/upload/")
    page.set_input_files("#id_artifact", str(onnx))
    page.click("button:text('Upload')")
    expect(page.locator("#upload-status [data-version-status]")).to_have_attribute(
        "data-version-status", "ready", timeout=TIMEOUT_MS
    )
    page.goto("/models/erin/mlp/upload/")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not an onnx graph")
    page.set_input_files("#id_artifact", str(junk))
    page.click("button:text('Upload')")
    expect(page.locator("#upload-status [data-version-status]")).to_have_attribute(
        "data-version-status", "failed", timeout=TIMEOUT_MS
    )
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    request.addfinalizer(api.close)
    error = api.get("/api/v1/models/erin/mlp/versions/3").json()["error"]
    page.goto("/models/erin/mlp/")
    row = page.locator('tr[data-version-row="3"]')
    expect(row.locator(".row-error-code")).to_have_text(error["code"])
    expect(row.locator(".row-error-message")).to_have_text(error["message"])
    expect(page.locator('tr[data-version-row="2"] .badge.default')).to_have_text("default")
    monitor.check("versions-with-failed")

    # --- version 1's page: every snippet calls version 1 (not the default, v2), run as shown ------
    page.goto("/models/erin/mlp/versions/1/")
    expect(page.locator(".snippet figcaption")).to_have_count(5)
    work = tmp_path / "snippets"
    work.mkdir()
    for lang, python in (("curl", False), ("python", True), ("cli", False), ("client", True), ("tritonclient", True)):
        code = page.locator(f"#snippet-{lang}").text_content()
        assert "erin/mlp" in code, (lang, code)
        out = _run_snippet(code, python=python, cwd=work, key=key, base=base)
        if lang == "client":
            assert "(1, 10)" in out, out
    assert (work / "y.npy").is_file()  # the CLI wrote the output named in the signature
    calls = api.get("/api/v1/predictions").json()["results"]
    assert [c["version"] for c in calls] == [1] * 5, calls
    assert all(c["status"] == "succeeded" for c in calls)

    # --- credits read alike: try-it charge, balance, usage rows -----------------------------------
    page.click("button:text('Run prediction')")
    charged = page.locator("#try-result .r-charged")
    expect(charged).to_have_attribute("data-micro", re.compile(r"\d+"), timeout=30_000)
    micro = int(charged.get_attribute("data-micro"))
    expect(charged).to_have_text(_credits(micro))
    page.goto("/billing/")
    balance = page.locator("#balance")
    assert balance.text_content() == _credits(int(balance.get_attribute("data-micro")))
    assert int(balance.get_attribute("data-micro")) == api.get("/api/v1/account").json()["credits_micro"]
    assert int(balance.get_attribute("data-micro")) > 1_000 * 1_000_000  # so the grouping shows
    assert "," in balance.text_content()
    cells = page.locator("table.usage tbody td.num:last-child").all_text_contents()
    assert len(cells) == 6 and all(CREDITS_TEXT.fullmatch(c) for c in cells), cells

    # --- an invalid date range lists nothing and says so --------------------------------------------
    page.goto("/billing/?date_from=2026-02-01&date_to=2026-01-01")
    expect(page.locator("table.usage")).to_have_count(0)
    expect(page.locator("#invalid-filters")).to_contain_text("The date range is invalid")
    expect(page.locator('[data-error-for="date_to"]')).to_contain_text("on or after the start date")
    monitor.check("billing-invalid-range")

    # --- description and visibility, edited on the model's page --------------------------------------
    page.goto("/models/erin/mlp/")
    page.click("details.model-edit > summary")
    page.check("#model-edit-form input[name=visibility][value=public]")
    page.fill("#model-edit-form textarea[name=description]", "Digits classifier, 784 inputs")
    page.click("#model-edit-form button:text('Save')")
    page.wait_for_url(f"{base}/models/erin/mlp/")
    expect(page.locator(".model-title .badge")).to_have_text("public")
    expect(page.locator(".page-head p.muted")).to_have_text("Digits classifier, 784 inputs")
    model = api.get("/api/v1/models/erin/mlp").json()
    assert (model["visibility"], model["description"]) == ("public", "Digits classifier, 784 inputs")
    monitor.check("model-edited")

    # --- the admin: plural labels, and the default version calls really go to ----------------------
    # erin becomes staff (the web process hashes passwords its own way, so no second user here)
    _orm(lambda: get_user_model().objects.filter(username="erin").update(is_staff=True, is_superuser=True))
    page.goto("/admin/")
    expect(page.locator("#content-main")).to_contain_text("Ledger entries")
    expect(page.locator("#content-main")).to_contain_text("Webhook deliveries")
    assert "entrys" not in page.content() and "deliverys" not in page.content()
    page.goto("/admin/registry/model/")
    expect(page.locator("td.field-effective_default").first).to_have_text("v2 (newest ready)")


def test_swagger_ui_uploads_a_model_file(live, browser, tmp_path):
    """Issue 17 item 8: the API reference can be used. Swagger UI (/api/docs/) shows a file
    picker for the multipart `artifact` field and its Execute uploads a real version (202)."""
    page, monitor = browser
    base = live.base_url
    page.goto("/signup/")
    page.fill("#id_username", "sam")
    page.fill("#id_email", "sam@example.com")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("button:text('Sign up')")
    page.wait_for_url(f"{base}/")
    _create_model(page, monitor, "viaswagger", owner="sam")

    page.goto("/api/docs/")
    op = page.locator("#operations-models-version_create")
    op.locator(".opblock-summary").click()
    op.locator("button.try-out__btn").click()
    op.locator('tr[data-param-name="owner"] input').fill("sam")
    op.locator('tr[data-param-name="name"] input').fill("viaswagger")
    artifact = op.locator('tr[data-property-name="artifact"] input[type=file]')
    expect(artifact).to_have_count(1)  # format: binary → a file picker, not a text box
    artifact.set_input_files(str(mlp_onnx(tmp_path / "m.onnx", sizes=(4, 8, 2), seed=3)))
    op.locator('tr[data-property-name="format"] select').select_option("onnx")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/versions")) as posted:
        op.locator("button.execute").click()
    assert posted.value.status == 202, posted.value.text()
    assert posted.value.json()["version"] == 1
    expect(op.locator(".live-responses-table tbody .response-col_status").first).to_contain_text("202")
    monitor.check("swagger-upload")
    status = page.request.get("/api/v1/models/sam/viaswagger/versions/1").json()
    assert status["format"] == "onnx" and status["status"] in ("queued", "validating", "ready")
