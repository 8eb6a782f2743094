"""Admin: models and versions. Uploads happen through the API; here operators re-validate,
disable/enable, set defaults and set per-version GPU memory limits."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, Max, OuterRef, Q, QuerySet, Subquery
from django.http import HttpRequest

from modelport.common.problems import Problem
from modelport.ops import services as ops
from modelport.ops.admin_base import AuditedAdminMixin, ReadOnlyInline, pre_text, pretty_json
from modelport.registry.models import Model, ModelVersion
from modelport.registry.selectors import version_default


class VersionInline(ReadOnlyInline):
    model = ModelVersion
    fields = ("number", "format", "status", "disabled", "gpu_memory_limit_mb", "created_at", "ready_at")
    readonly_fields = fields
    ordering = ("-number",)


@admin.register(Model)
class ModelAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ("__str__", "visibility", "effective_default", "version_count", "royalty_per_call", "created_at")
    list_filter = ("visibility", ("owner", admin.RelatedOnlyFieldListFilter))
    search_fields = ("name", "owner__username", "description")
    list_select_related = ("owner", "default_version")
    fields = ("owner", "name", "visibility", "description", "royalty_per_call", "effective_default", "created_at")
    readonly_fields = ("owner", "name", "effective_default", "created_at")
    inlines = (VersionInline,)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(
            version_count=Count("versions"),
            newest_ready=Max("versions__number", filter=Q(versions__status=ModelVersion.Status.READY)),
        )

    @admin.display(description="default version")
    def effective_default(self, obj: Any) -> str:
        """The version calls go to (registry.selectors.version_default): the one set, else the
        newest ready one, from the list's annotation rather than a query per row."""
        if obj.default_version_id is not None:
            return f"v{obj.default_version.number}"
        return f"v{obj.newest_ready} (newest ready)" if obj.newest_ready is not None else "—"

    @admin.display(description="versions", ordering="version_count")
    def version_count(self, obj: Any) -> int:
        return obj.version_count

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # models are created through the API (owner, slug rules)


@admin.register(ModelVersion)
class ModelVersionAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ("__str__", "format", "status", "disabled", "is_default", "gpu_memory_limit_mb", "created_at",
                    "ready_at")
    list_filter = ("status", "format", "disabled", "model__visibility",
                   ("model__owner", admin.RelatedOnlyFieldListFilter))
    search_fields = ("model__name", "model__owner__username", "upload_sha256", "artifact_sha256")
    list_select_related = ("model__owner", "model")
    date_hierarchy = "created_at"
    actions = ("revalidate", "disable", "enable", "set_default")
    # Only the GPU memory limit is edited in the form; `disabled` changes through the actions,
    # which also tell the workers (Redis set `<prefix>:disabled`).
    fieldsets = (
        (None, {"fields": ("model", "number", "format", "status", "disabled", "is_default", "created_at",
                           "claimed_at", "ready_at")}),
        ("Serving", {"fields": ("gpu_memory_limit_mb", "max_batch_size", "max_queue_delay_ms", "min_replicas")}),
        ("Result", {"fields": ("error_pretty", "signature_pretty", "report_pretty", "log_text")}),
        ("Upload", {"classes": ("collapse",), "fields": (
            "upload_filename", "upload_sha256", "source_sha256", "entrypoint", "init_kwargs_pretty",
            "declared_inputs_pretty", "declared_outputs_pretty", "artifact_sha256")}),
    )
    readonly_fields = (
        "model", "number", "format", "status", "disabled", "is_default", "created_at", "claimed_at", "ready_at",
        "max_batch_size", "max_queue_delay_ms", "min_replicas",
        "error_pretty", "signature_pretty", "report_pretty", "log_text",
        "upload_filename", "upload_sha256", "source_sha256", "entrypoint", "init_kwargs_pretty",
        "declared_inputs_pretty", "declared_outputs_pretty", "artifact_sha256",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # versions are uploaded through the API

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # predictions reference versions; disable instead

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        newest_ready = ModelVersion.objects.filter(model=OuterRef("model"), status=ModelVersion.Status.READY)
        return super().get_queryset(request).annotate(
            newest_ready_id=Subquery(newest_ready.order_by("-number").values("pk")[:1])
        )

    @admin.display(boolean=True, description="default")
    def is_default(self, obj: Any) -> bool:
        """Whether calls go to this version (registry.selectors.version_default): the one set as the
        model's default, else the newest ready one."""
        if obj.model.default_version_id is not None:
            return bool(obj.model.default_version_id == obj.pk)
        newest = getattr(obj, "newest_ready_id", None)
        if newest is None and not hasattr(obj, "newest_ready_id"):  # an object not from get_queryset
            default = version_default(model=obj.model)
            newest = default.pk if default else None
        return bool(newest == obj.pk)

    @admin.display(description="error")
    def error_pretty(self, obj: ModelVersion) -> str:
        return pretty_json(obj.error)

    @admin.display(description="signature")
    def signature_pretty(self, obj: ModelVersion) -> str:
        return pretty_json(obj.signature)

    @admin.display(description="report")
    def report_pretty(self, obj: ModelVersion) -> str:
        return pretty_json(obj.report)

    @admin.display(description="log")
    def log_text(self, obj: ModelVersion) -> str:
        return pre_text(obj.log)

    @admin.display(description="init kwargs")
    def init_kwargs_pretty(self, obj: ModelVersion) -> str:
        return pretty_json(obj.init_kwargs)

    @admin.display(description="declared inputs")
    def declared_inputs_pretty(self, obj: ModelVersion) -> str:
        return pretty_json(obj.declared_inputs)

    @admin.display(description="declared outputs")
    def declared_outputs_pretty(self, obj: ModelVersion) -> str:
        return pretty_json(obj.declared_outputs)

    # --- actions ---------------------------------------------------------------------------------
    @admin.action(description="Re-validate (back to queued; calls get 503 until ready)", permissions=["change"])
    def revalidate(self, request: HttpRequest, queryset: QuerySet) -> None:
        done = [str(v) for v in queryset if ops.version_revalidate(version=v, actor=request.user)]
        skipped = queryset.count() - len(done)
        self.message_user(request, f"Re-validating {len(done)} version(s)"
                                   + (f"; {skipped} skipped (already being processed)." if skipped else "."),
                          messages.SUCCESS if done else messages.WARNING)

    @admin.action(description="Disable (calls get 503; workers unload it)", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet) -> None:
        changed = sum(ops.version_set_disabled(version=v, disabled=True, actor=request.user) for v in queryset)
        self.message_user(request, f"Disabled {changed} version(s).", messages.SUCCESS)

    @admin.action(description="Enable", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet) -> None:
        changed = sum(ops.version_set_disabled(version=v, disabled=False, actor=request.user) for v in queryset)
        self.message_user(request, f"Enabled {changed} version(s).", messages.SUCCESS)

    @admin.action(description="Set as its model's default version", permissions=["change"])
    def set_default(self, request: HttpRequest, queryset: QuerySet) -> None:
        versions = list(queryset.select_related("model"))
        if len({v.model_id for v in versions}) != len(versions):
            self.message_user(request, "Select at most one version per model.", messages.ERROR)
            return
        for version in versions:
            try:
                ops.version_set_default(version=version, actor=request.user)
            except Problem as problem:
                self.message_user(request, f"{version}: {problem.detail}", messages.ERROR)
            else:
                self.message_user(request, f"{version} is now the default of {version.model}.", messages.SUCCESS)

