"""Dashboard pages: server-rendered, enhanced by htmx and frontend/static/js/app.js.

These are interfaces like the API views: they check form input and call the same services and
selectors (uploads, the default version, keys), so a page can never do what the API refuses.
Pages that need JavaScript to act (upload progress, try-it) talk to the JSON API themselves
with the session cookie and the CSRF token.
"""

from __future__ import annotations

import csv
import mimetypes
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.staticfiles import finders
from django.core.exceptions import PermissionDenied, SuspiciousFileOperation
from django.core.paginator import Paginator
from django.db import IntegrityError
from django.db.models import Count, Max, Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotModified
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import http_date
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST, require_safe
from django.views.static import was_modified_since

from modelport.accounts.models import ApiKey
from modelport.accounts.services import api_key_issue, api_key_revoke, user_create
from modelport.billing.display import credits_display
from modelport.billing.models import MICRO
from modelport.billing.services import account_for, format_credits
from modelport.common.problems import Problem
from modelport.dashboard import charts, selectors
from modelport.dashboard.forms import (
    KeyCreateForm,
    ModelCreateForm,
    ModelEditForm,
    SignupForm,
    UsageFilterForm,
    VersionUploadForm,
)
from modelport.dashboard.snippets import example_json, example_shape, snippets
from modelport.dashboard.templatetags.dashboard import report_value
from modelport.gateway.models import Prediction
from modelport.registry import selectors as registry
from modelport.registry import services as registry_services
from modelport.registry.api import UploadLimitHandler
from modelport.registry.models import Model, ModelVersion
from modelport.registry.selectors import REPORT_FIELDS
from workers.upload_rules import CONVERTIBLE_DTYPES

TERMINAL_VERSION = (ModelVersion.Status.READY, ModelVersion.Status.FAILED)
USAGE_PAGE_SIZE = 20
CHART_DAYS = 14
CSV_MAX_ROWS = 100_000


# --- helpers ------------------------------------------------------------------------------------


def _viewer(request: HttpRequest) -> Any:
    return request.user if request.user.is_authenticated else None


def _visible_model(request: HttpRequest, owner: str, name: str) -> Model:
    """The model if the viewer may see it; 404 alike for missing and someone else's private one."""
    try:
        return registry.model_access(user=_viewer(request), owner=owner, name=name)
    except Problem as problem:
        raise Http404(problem.detail) from None


def _writable_model(request: HttpRequest, owner: str, name: str) -> Model:
    try:
        return registry.model_access(user=_viewer(request), owner=owner, name=name, write=True)
    except Problem as problem:
        if problem.status == 403:
            raise PermissionDenied(problem.detail) from None
        raise Http404(problem.detail) from None


def _problem_to_form(form: Any, problem: Problem) -> None:
    """Show an API problem next to the field it names (else above the form)."""
    fields = [f for f in (problem.extra.get("errors") or {}) if f in form.fields]
    form.add_error(fields[0] if fields else None, problem.detail)


# --- static files -------------------------------------------------------------------------------


@require_safe
def static_file(request: HttpRequest, path: str) -> HttpResponse:
    """Serve /static/ from the configured static directories (frontend/static and apps').

    The web process (uvicorn) serves the whole app and there is no separate file server in
    development or tests; the files are small and read whole (no sync-iterator streaming under ASGI).
    """
    try:
        found = finders.find(path)
    except SuspiciousFileOperation:
        found = None
    if not isinstance(found, str) or not Path(found).is_file():
        raise Http404(f"no static file {path}")
    file = Path(found)
    mtime = file.stat().st_mtime
    if not was_modified_since(request.META.get("HTTP_IF_MODIFIED_SINCE"), int(mtime)):
        return HttpResponseNotModified()
    content_type, encoding = mimetypes.guess_type(file.name)
    response = HttpResponse(file.read_bytes(), content_type=content_type or "application/octet-stream")
    response["Last-Modified"] = http_date(mtime)
    response["Cache-Control"] = "public, max-age=300"
    if encoding:
        response["Content-Encoding"] = encoding
    return response


# --- accounts -----------------------------------------------------------------------------------


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = user_create(
                username=form.cleaned_data["username"],
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password1"],
            )
        except IntegrityError:
            form.add_error("username", "A user with that username already exists.")
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(
                request,
                f"Welcome, {user.get_username()}! Your account starts with "
                f"{credits_display(settings.MODELPORT_SIGNUP_CREDITS * MICRO)} credits.",
            )
            return redirect("home")
    return render(request, "registration/signup.html", {"form": form})


# --- models -------------------------------------------------------------------------------------


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()[:100]
    if request.user.is_authenticated:
        visible = registry.models_visible(user=request.user)
    else:
        visible = Model.objects.select_related("owner").filter(visibility=Model.Visibility.PUBLIC)
    if query:
        visible = visible.filter(Q(name__icontains=query) | Q(owner__username__icontains=query))
    visible = visible.annotate(
        ready_versions=Count("versions", filter=Q(versions__status=ModelVersion.Status.READY)),
        latest_version=Max("versions__number"),
    ).order_by("owner__username", "name")
    mine = [m for m in visible if m.owner_id == request.user.pk]
    public = [m for m in visible if m.owner_id != request.user.pk][:100]
    return render(request, "dashboard/home.html", {"my_models": mine, "public_models": public, "query": query})


@login_required
def model_new(request: HttpRequest) -> HttpResponse:
    form = ModelCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            model = registry_services.model_create(owner=request.user, **form.cleaned_data)
        except Problem as problem:
            form.add_error("name", problem.detail)
        else:
            messages.success(request, f"Created {model}. Now upload its first version.")
            return redirect("version_upload", owner=request.user.get_username(), name=model.name)
    return render(request, "dashboard/model_new.html", {"form": form})


def _report_rows(report: dict[str, Any], fmt: str) -> list[tuple[str, str]]:
    """(label, shown value) for the report: the contract's keys first, then any other scalar."""
    shown = {key: report_value(value) for key, value in report.items()}
    if fmt == ModelVersion.Format.ONNX and report.get("parity_max_abs_error") is None:
        shown["parity_max_abs_error"] = "n/a (ONNX upload: nothing was converted)"
    # One mapping of labels (registry.selectors.REPORT_FIELDS), the contract's keys first; other
    # scalar keys in words, so a new field never reaches the page raw.
    # scalar keys in words, so a new field never reaches the page raw. Lists and mappings (shapes,
    # export attempts) stay in the API's report.
    scalar = {key for key in shown if isinstance(report.get(key), int | float | str | None)}
    rows = [(label, shown[key]) for key, (label, _) in REPORT_FIELDS.items() if key in scalar]
    rows += [(_report_label(key), shown[key]) for key in sorted(scalar - set(REPORT_FIELDS))]
    return rows


def _report_label(key: str) -> str:
    """A report key not in REPORT_FIELDS, in words: "export_wall_ms" → "Export wall (ms)"."""
    words = key.split("_")
    unit = {"ms": "ms", "mb": "MB", "seconds": "s", "s": "s"}.get(words[-1]) if len(words) > 1 else None
    words = words[:-1] if unit else words
    text = " ".join(words).strip().capitalize() or key
    return f"{text} ({unit})" if unit else text


@require_safe
def model_detail(request: HttpRequest, owner: str, name: str, number: int | None = None) -> HttpResponse:
    model = _visible_model(request, owner, name)
    is_owner = request.user.is_authenticated and model.owner_id == request.user.pk
    versions = list(model.versions.order_by("-number"))
    default = registry.version_default(model=model)
    if number is not None:
        selected = next((v for v in versions if v.number == number), None)
        if selected is None:
            raise Http404(f"{model} has no version {number}")
    else:
        selected = default or (versions[0] if versions else None)
    context: dict[str, Any] = {
        "model": model,
        "is_owner": is_owner,
        "versions": versions,
        "default": default,
        "selected": selected,
        "full_name": f"{model.owner.get_username()}/{model.name}",
        "selected_terminal": selected is not None and selected.status in TERMINAL_VERSION,
        "edit_form": ModelEditForm(initial={"visibility": model.visibility, "description": model.description})
        if is_owner
        else None,
    }
    if selected is not None and selected.status == ModelVersion.Status.READY and selected.signature:
        signature = selected.signature
        api_base = f"/api/v1/models/{model.owner.get_username()}/{model.name}"
        context.update(
            signature=signature,
            report_rows=_report_rows(selected.report or {}, selected.format),
            try_inputs=[
                {**spec, "example_shape": example_shape(spec["shape"]), "example": example_json(spec)}
                for spec in signature.get("inputs", [])
            ],
            predict_url=f"{api_base}/predictions"
            if selected == default and number is None
            else f"{api_base}/versions/{selected.number}/predictions",
            # A version's own page calls that version; the model's page calls its default.
            snippet_version=selected.number if number is not None else None,
            snippets=snippets(
                base_url=request.build_absolute_uri("/"),
                model=context["full_name"],
                inputs=signature.get("inputs", []),
                outputs=signature.get("outputs", []),
                version=selected.number if number is not None else None,
            ),
        )
    return render(request, "dashboard/model_detail.html", context)


@require_safe
def version_status(request: HttpRequest, owner: str, name: str, number: int) -> HttpResponse:
    """The live status card (an htmx fragment that re-polls itself until the version is terminal)."""
    model = _visible_model(request, owner, name)
    try:
        version = registry.version_get(model=model, number=number)
    except Problem as problem:
        raise Http404(problem.detail) from None
    terminal = version.status in TERMINAL_VERSION
    response = render(
        request,
        "dashboard/_version_status.html",
        {
            "model": model,
            "version": version,
            "terminal": terminal,
            "is_owner": request.user.is_authenticated and model.owner_id == request.user.pk,
            "refresh": request.GET.get("refresh") == "1",
        },
    )
    if terminal and request.GET.get("refresh") == "1" and request.headers.get("HX-Request"):
        response["HX-Refresh"] = "true"  # the model page re-renders with the signature and try-it form
    return response


def _upload_context(request: HttpRequest, model: Model, form: VersionUploadForm) -> dict[str, Any]:
    owner = model.owner.get_username()
    return {
        "model": model,
        "form": form,
        "api_url": f"/api/v1/models/{owner}/{model.name}/versions",
        "status_url": reverse("version_status", kwargs={"owner": owner, "name": model.name, "number": 0}).replace(
            "/0/status/", "/__N__/status/"
        ),
        "max_bytes": settings.MODELPORT_MAX_UPLOAD_BYTES,
        "max_mb": settings.MODELPORT_MAX_UPLOAD_BYTES // (1024 * 1024),
        "dtypes": " ".join(sorted(CONVERTIBLE_DTYPES)),  # the PyTorch formats' rule (workers.upload_rules)
    }


@csrf_exempt  # CSRF is checked by the inner view, after the upload limit is in place
@login_required
def version_upload(request: HttpRequest, owner: str, name: str) -> HttpResponse:
    """Upload form. With JavaScript the browser posts to the API itself (progress bar, live
    status); this POST path is the no-JavaScript fallback and enforces the same upload limit."""
    model = _writable_model(request, owner, name)
    if request.method == "POST":
        length = request.META.get("CONTENT_LENGTH") or "0"
        try:
            if length.isdigit() and int(length) > settings.MODELPORT_MAX_UPLOAD_BYTES:
                raise Problem(
                    413,
                    f"the upload exceeds {settings.MODELPORT_MAX_UPLOAD_BYTES // (1024 * 1024)} MB",
                    errors={"artifact": ["too large"]},
                )
            request.upload_handlers.insert(0, UploadLimitHandler(request))
            return _version_upload_post(request, model)
        except Problem as problem:
            form = VersionUploadForm()
            _problem_to_form(form, problem)
            return render(
                request, "dashboard/version_upload.html", _upload_context(request, model, form), status=problem.status
            )
    return render(request, "dashboard/version_upload.html", _upload_context(request, model, VersionUploadForm()))


@csrf_protect
def _version_upload_post(request: HttpRequest, model: Model) -> HttpResponse:
    form = VersionUploadForm(request.POST, request.FILES)
    if form.is_valid():
        data = form.cleaned_data
        artifact, source = data["artifact"], data.get("source")
        try:
            version = registry_services.model_version_create(
                model=model,
                fmt=data["format"],
                artifact=registry_services.Upload(artifact.name, artifact),
                source=registry_services.Upload(source.name, source) if source else None,
                entrypoint=data["entrypoint"],
                init_kwargs_raw=data["init_kwargs"] or None,
                inputs_raw=data["inputs"] or None,
                outputs_raw=data["outputs"] or None,
            )
        except Problem as problem:
            _problem_to_form(form, problem)
        else:
            messages.success(request, f"Version {version.number} is queued for validation.")
            return redirect("version_detail", owner=model.owner.get_username(), name=model.name, number=version.number)
    return render(request, "dashboard/version_upload.html", _upload_context(request, model, form), status=400)


@require_POST
@login_required
def model_edit(request: HttpRequest, owner: str, name: str) -> HttpResponse:
    """Change the model's visibility and description: the same choke point (write access) and
    service as the API's PATCH; bad input is shown on the model's page and changes nothing."""
    model = _writable_model(request, owner, name)
    form = ModelEditForm(request.POST)
    if form.is_valid():
        try:
            registry_services.model_update(
                model=model, visibility=form.cleaned_data["visibility"], description=form.cleaned_data["description"]
            )
        except Problem as problem:
            messages.error(request, problem.detail)
        else:
            messages.success(request, f"Saved: {model} is {model.visibility}.")
    else:
        messages.error(request, " ".join(f"{form.fields[f].label or f}: {' '.join(e)}" for f, e in form.errors.items()))
    return redirect("model_detail", owner=owner, name=name)


@require_POST
@login_required
def model_default(request: HttpRequest, owner: str, name: str) -> HttpResponse:
    """Set the default version (no-JavaScript fallback of the API's PATCH)."""
    model = _writable_model(request, owner, name)
    number = request.POST.get("default_version", "")
    try:
        if not number.isdigit():
            raise Problem(400, "choose a version")
        registry_services.model_set_default(model=model, number=int(number))
    except Problem as problem:
        messages.error(request, problem.detail)
    else:
        messages.success(request, f"Version {number} is now the default.")
    return redirect("model_detail", owner=owner, name=name)


# --- API keys -----------------------------------------------------------------------------------


ISSUED_KEY_SESSION = "dashboard_issued_key"


@never_cache
@login_required
def keys(request: HttpRequest) -> HttpResponse:
    """List and create keys (POST → redirect → GET, so a reload creates nothing).

    A new key's secret waits in the session between the POST and the GET that shows it, and is
    removed from it there: it is shown once, and only its hash stays stored."""
    form = KeyCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        issued = api_key_issue(user=request.user, name=form.cleaned_data["name"])
        request.session[ISSUED_KEY_SESSION] = {"name": issued.api_key.name, "secret": issued.secret}
        return redirect("keys")
    issued = request.session.pop(ISSUED_KEY_SESSION, None) if request.method == "GET" else None
    api_keys = ApiKey.objects.filter(user=request.user).order_by("revoked_at", "-created_at")
    status = 400 if request.method == "POST" else 200
    return render(request, "dashboard/keys.html", {"form": form, "issued": issued, "api_keys": api_keys}, status=status)


@require_POST
@login_required
def key_revoke(request: HttpRequest, prefix: str) -> HttpResponse:
    key = ApiKey.objects.filter(user=request.user, prefix=prefix).first()
    if key is None:
        raise Http404(f"no API key {prefix}")
    api_key_revoke(api_key=key)
    messages.success(request, f"Revoked {prefix}…; calls with it now fail with 401.")
    return redirect("keys")


# --- billing ------------------------------------------------------------------------------------


def _usage_filters(request: HttpRequest) -> tuple[UsageFilterForm, dict[str, Any] | None]:
    models = selectors.usage_models(user=request.user)
    form = UsageFilterForm(request.GET or None, model_choices=[(str(m.pk), str(m)) for m in models])
    filters: dict[str, Any] | None = {}
    if form.is_bound and not form.is_valid():
        filters = None  # an invalid filter (e.g. From after To) matches nothing, never everything
    elif form.is_bound:
        data = form.cleaned_data
        filters = {
            "model_id": int(data["model"]) if data.get("model") else None,
            "date_from": data.get("date_from"),
            "date_to": data.get("date_to"),
        }
    return form, filters


def _usage_rows(request: HttpRequest, filters: dict[str, Any] | None) -> Any:
    if filters is None:
        return Prediction.objects.none()
    return selectors.usage_predictions(user=request.user, **filters)


@login_required
@require_safe
def billing(request: HttpRequest) -> HttpResponse:
    account = account_for(user=request.user)
    form, filters = _usage_filters(request)
    page = Paginator(_usage_rows(request, filters), USAGE_PAGE_SIZE).get_page(request.GET.get("page"))
    params = {k: v for k, v in request.GET.items() if k != "page" and v}
    daily = selectors.usage_daily(user=request.user, days=CHART_DAYS)
    latency = selectors.latency_by_model(user=request.user, days=30)

    def day_label(day: date) -> str:
        return day.strftime("%b %d")

    return render(
        request,
        "dashboard/billing.html",
        {
            "balance": account.balance,
            "form": form,
            "invalid_filters": filters is None,
            "page": page,
            "query": urlencode(params),
            "calls_chart": charts.bar_chart(
                title=f"Calls per day, last {CHART_DAYS} days",
                bars=[(day_label(d.day), d.calls) for d in daily],
                unit="calls",
                integer=True,
            ),
            "credits_chart": charts.bar_chart(
                title=f"Credits per day, last {CHART_DAYS} days",
                bars=[(day_label(d.day), d.charged / MICRO) for d in daily],
                unit="credits",
            ),
            "latency_chart": charts.latency_chart(
                title="Latency per model (end to end, last 30 days)",
                rows=[(m.model, m.p50_ms, m.p99_ms) for m in latency],
            ),
            "latency": latency,
        },
    )


@login_required
@require_safe
def usage_csv(request: HttpRequest) -> HttpResponse:
    """The usage table with the page's filters, as CSV (credits with six decimals)."""
    _, filters = _usage_filters(request)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="modelport-usage.csv"'
    writer = csv.writer(response)
    writer.writerow(
        [
            "id",
            "created_at",
            "model",
            "version",
            "protocol",
            "status",
            "queue_ms",
            "compute_ms",
            "total_ms",
            "credits_charged",
            "royalty",
        ]
    )
    for p in _usage_rows(request, filters)[:CSV_MAX_ROWS]:
        metrics = p.metrics or {}
        model = p.version.model
        writer.writerow(
            [
                p.id,
                p.created_at.isoformat(),
                f"{model.owner.get_username()}/{model.name}",
                p.version.number,
                p.protocol,
                p.status,
                metrics.get("queue_ms", ""),
                metrics.get("compute_ms", ""),
                metrics.get("total_ms", ""),
                format_credits(p.charged),
                format_credits(p.royalty),
            ]
        )
    return response
