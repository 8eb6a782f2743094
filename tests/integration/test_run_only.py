"""A newcomer's first `make run`, on a fresh copy of the repository with only what `make install`
(requirements-run.txt) installs: no dev requirements, no DATABASE_URL/REDIS_URL, no built files.

The copy holds the files git would commit from this working tree (`git ls-files --cached --others
--exclude-standard`: in CI, exactly a fresh clone; here, uncommitted edits are tested too). Its
virtualenv is created by `make install` with the system's `python3`, as the README's first command
does; pip's own wheel cache is reused (it adds no package to the environment). What `make run`
printed and how long each step took go to test-artifacts/make-run-fresh-clone.log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.integration.launcher import DEMO_BODY, alive, children_of, dashboard_login, launch
from tests.stack import REPO, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

ARTIFACT = REPO / "test-artifacts" / "make-run-fresh-clone.log"
INSTALL_TIMEOUT_S = 900
# Direct dev requirements that no run requirement pulls in: their presence would mean the
# environment is not run-only, and the checks below would prove nothing.
DEV_ONLY = ("pytest", "pytest_django", "pytest_timeout", "hypothesis", "playwright", "schemathesis", "tritonclient",
            "modelport_client", "ruff")

IMPORT_ALL = r"""
import importlib, os, sys
from pathlib import Path

repo = Path.cwd()
sys.path[:0] = [str(repo / "platform"), str(repo)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "modelport.config.settings")
import django

django.setup()
names = []
for root, package in ((repo / "platform", "modelport"), (repo, "workers")):
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
failed = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {exc!r}")
print("\n".join(failed))
print(f"imported {len(names) - len(failed)} of {len(names)}")
sys.exit(1 if failed else 0)
"""


def newcomer_env(**extra: str) -> dict[str, str]:
    """This machine's environment less everything the suite or a virtualenv set: a new shell."""
    dropped = {"DATABASE_URL", "REDIS_URL", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "DJANGO_SETTINGS_MODULE",
               "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    env = {k: v for k, v in os.environ.items()
           if k not in dropped and not k.startswith(("MODELPORT_", "PYTEST_", "COV_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not (Path(p).parent / "pyvenv.cfg").exists())
    env.update(extra)
    return env


def record(text: str) -> None:
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    with ARTIFACT.open("a") as out:
        out.write(text if text.endswith("\n") else text + "\n")


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ARTIFACT.unlink(missing_ok=True)
    root = tmp_path_factory.mktemp("newcomer") / "modelport"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file() and not src.is_symlink():  # deleted files are listed by --cached until committed
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / name)
    assert not (root / ".venv").exists() and (root / "Makefile").exists()
    started = time.monotonic()
    install = subprocess.run(["make", "install"], cwd=root, env=newcomer_env(), capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=INSTALL_TIMEOUT_S)
    record(f"make install: {time.monotonic() - started:.1f} s, exit {install.returncode}")
    assert install.returncode == 0, install.stdout + install.stderr
    # The copy (~1 GB with its virtualenv) stays under pytest's basetemp, which keeps the last three
    # runs' only: removing it here took over a minute on this loaded 2-core machine.
    return root


def test_run_only_environment_imports_every_module(fresh_clone):
    py = fresh_clone / ".venv" / "bin" / "python"
    probe = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m)))"
    present = subprocess.run([py, "-c", probe, *DEV_ONLY], capture_output=True, text=True, check=True,
                             env=newcomer_env()).stdout.split()
    assert present == [], f"the run-only environment has dev packages: {present}"

    started = time.monotonic()
    result = subprocess.run([py, "-c", IMPORT_ALL], cwd=fresh_clone, env=newcomer_env(), capture_output=True,
                            text=True, timeout=300)
    record(f"import check: {time.monotonic() - started:.1f} s\n{result.stdout}")
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(list((fresh_clone / "platform" / "modelport").rglob("*.py"))) + \
        len(list((fresh_clone / "workers").rglob("*.py")))
    assert result.stdout.strip().splitlines()[-1] == f"imported {count} of {count}"


def test_make_run_on_fresh_clone_serves_demo_and_login_shows_uploads(fresh_clone):
    port = free_port()
    started = time.monotonic()
    run = launch(["make", "run"], cwd=fresh_clone, env=newcomer_env(PORT=str(port)))
    try:
        run.read_until_key(timeout=300)
        record(f"make run printed its key after {time.monotonic() - started:.1f} s")
        assert run.printed.get("Dashboard") == f"http://127.0.0.1:{port}/", run.output
        assert run.printed.get("Username") == "demo", run.output
        assert len(run.printed.get("Password", "")) >= 12, run.output
        assert run.key.startswith("mp_"), run.output
        assert (fresh_clone / "var" / "modelport.sqlite3").exists()

        # make run prints the key once the demo is ready: the very first call answers 200.
        answer = httpx.post(f"{run.base_url}/api/v1/models/demo/mlp-demo/predictions", json=DEMO_BODY,
                            headers={"Authorization": f"Bearer {run.key}", "Prefer": "wait"}, timeout=60)
        assert answer.status_code == 200, answer.text
        record(f"demo model answered 200 after {time.monotonic() - started:.1f} s")
        body = answer.json()
        assert body["status"] == "succeeded" and body["model"] == "demo/mlp-demo"
        assert len(body["output"]["y"]) == 1 and len(body["output"]["y"][0]) == 10

        # What a newcomer uploads with the key is the demo account's, and the printed login sees it.
        auth = {"Authorization": f"Bearer {run.key}"}
        client, signed_in = dashboard_login(run.base_url, "demo", run.printed["Password"])
        try:
            assert signed_in.status_code == 302 and signed_in.headers["location"] == "/", signed_in.text
            assert "first-upload" not in client.get("/").text
            resp = httpx.post(f"{run.base_url}/api/v1/models", json={"name": "first-upload", "visibility": "private"},
                              headers=auth, timeout=30)
            assert resp.status_code == 201, resp.text
            assert resp.json()["owner"] == "demo"
            home = client.get("/")
            assert home.status_code == 200 and "first-upload" in home.text

            # The README's upload: build the examples with the run-only Python, upload one, follow it.
            built = subprocess.run([fresh_clone / ".venv" / "bin" / "python", "examples/build_examples.py",
                                    "out/examples"], cwd=fresh_clone, env=newcomer_env(), capture_output=True,
                                   text=True, timeout=300)
            assert built.returncode == 0, built.stdout + built.stderr
            with (fresh_clone / "out" / "examples" / "mlp.onnx").open("rb") as artifact:
                resp = httpx.post(f"{run.base_url}/api/v1/models/demo/first-upload/versions", headers=auth,
                                  data={"format": "onnx"}, files={"artifact": ("mlp.onnx", artifact)}, timeout=60)
            assert resp.status_code == 202 and resp.json()["status"] == "queued", resp.text
            deadline = time.monotonic() + 180
            status = "queued"
            while status not in ("ready", "failed") and time.monotonic() < deadline:
                time.sleep(0.5)
                status = httpx.get(f"{run.base_url}/api/v1/models/demo/first-upload/versions/1", headers=auth,
                                   timeout=30).json()["status"]
            assert status == "ready"
            page = client.get("/models/demo/first-upload/")
            assert page.status_code == 200 and "ready" in page.text and "logits" in page.text
            # What a newcomer generates is ignored by git (a clone's `git status` stays clean).
            made = [str(p.relative_to(fresh_clone)) for p in (fresh_clone / "out").rglob("*") if p.is_file()]
            ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, text=True,
                                     input="\n".join([*made, "var/modelport.sqlite3"]), capture_output=True)
            assert sorted(ignored.stdout.split()) == sorted([*made, "var/modelport.sqlite3"])
        finally:
            client.close()
        wrong, refused = dashboard_login(run.base_url, "demo", run.printed["Password"] + "x")
        try:
            assert refused.status_code == 200 and "correct username and password" in refused.text, refused.text
            assert wrong.get("/").status_code == 200 and "first-upload" not in wrong.get("/").text
        finally:
            wrong.close()

        # The same login in a real browser.
        with sync_playwright() as pw:
            chromium = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                          args=["--headless", "--no-sandbox", "--disable-gpu",
                                                "--disable-background-networking"])
            try:
                page = chromium.new_page(base_url=run.base_url)
                page.set_default_timeout(30_000)
                page.goto("/login/")
                page.fill("#id_username", run.printed["Username"])
                page.fill("#id_password", run.printed["Password"])
                page.click("main button:text('Log in')")
                page.wait_for_url(f"{run.base_url}/")
                expect(page.locator(".nav-user")).to_contain_text("demo")
                expect(page.locator(".model-grid").first).to_contain_text("first-upload")
            finally:
                chromium.close()
        children = children_of(run.proc.pid)
        assert len(children) >= 6  # run_local.py, redis, web, two workers, beat
    finally:
        rest = run.stop()
        record(f"make run printed:\n{run.output}")
    assert "stopped" in rest, run.output
    leftovers = [pid for pid in children if alive(pid)]
    assert leftovers == [], f"processes still running after Ctrl-C: {leftovers}"
