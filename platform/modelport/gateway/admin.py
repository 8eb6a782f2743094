"""Admin: predictions and webhook deliveries, read-only (their state changes only through the call
lifecycle); deliveries can be resent."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from modelport.billing.display import credits_display
from modelport.common.problems import Problem
from modelport.gateway.models import Prediction, WebhookAttempt, WebhookDelivery
from modelport.ops import services as ops
from modelport.ops.admin_base import ReadOnlyAdminMixin, ReadOnlyInline, pretty_json


@admin.register(Prediction)
class PredictionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "created_at", "model_version", "user", "key_prefix", "protocol", "status", "charged_credits",
                    "hardware", "worker")
    list_filter = ("status", "protocol", "hardware", "created_at")
    # id, model ("owner/name" typed as either part), key prefix, request id, user.
    search_fields = ("=id", "version__model__name", "version__model__owner__username", "api_key__prefix",
                     "=request_id", "user__username")
    list_select_related = ("version__model__owner", "user", "api_key")
    date_hierarchy = "created_at"
    show_full_result_count = False  # COUNT(*) over all predictions is slow on a big table
    fields = ("id", "user", "api_key", "version", "protocol", "status", "request_id", "worker", "hardware",
              "created_at", "started_at", "completed_at", "deadline_at", "charged_credits", "hold_amount", "charged",
              "royalty", "idempotency_key", "quote_pretty", "metrics_pretty", "error_pretty", "output_pretty")
    readonly_fields = fields

    @admin.display(description="model", ordering="version__model__name")
    def model_version(self, obj: Prediction) -> str:
        return str(obj.version)

    @admin.display(description="key")
    def key_prefix(self, obj: Prediction) -> str:
        return obj.api_key.prefix if obj.api_key else "session"

    @admin.display(description="charged (credits)", ordering="charged")
    def charged_credits(self, obj: Prediction) -> str:
        return credits_display(obj.charged)

    @admin.display(description="quote")
    def quote_pretty(self, obj: Prediction) -> str:
        return pretty_json(obj.quote)

    @admin.display(description="metrics")
    def metrics_pretty(self, obj: Prediction) -> str:
        return pretty_json(obj.metrics)

    @admin.display(description="error")
    def error_pretty(self, obj: Prediction) -> str:
        return pretty_json(obj.error)

    @admin.display(description="output")
    def output_pretty(self, obj: Prediction) -> str:
        text = pretty_json(obj.output)
        return text if len(text) < 20000 else pretty_json({"truncated": "output too large to show here"})


class AttemptInline(ReadOnlyInline):
    model = WebhookAttempt
    fields = ("number", "at", "ok", "status_code", "latency_ms", "error", "response_excerpt")
    readonly_fields = fields
    show_change_link = False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Deliveries with their attempts; "resend" records a new delivery of the prediction's
    current event (gateway.webhooks.delivery_resend) and audits it."""

    list_display = ("id", "created_at", "prediction", "event", "url", "status", "attempts", "next_attempt_at")
    list_filter = ("status", "event", "created_at")
    search_fields = ("=prediction__id", "url", "=webhook_id")
    date_hierarchy = "created_at"
    fields = ("prediction", "event", "webhook_id", "url", "status", "attempts", "next_attempt_at", "created_at")
    readonly_fields = fields
    inlines = (AttemptInline,)
    actions = ("resend",)

    @admin.action(description="Resend (a new delivery of the prediction's current event)", permissions=["resend"])
    def resend(self, request: HttpRequest, queryset: QuerySet) -> None:
        sent = 0
        for delivery in queryset.select_related("prediction"):
            try:
                ops.webhook_resend_by_operator(delivery=delivery, actor=request.user)
            except Problem as problem:
                self.message_user(request, f"{delivery}: {problem.detail}", messages.ERROR)
            else:
                sent += 1
        self.message_user(request, f"Resending {sent} delivery(ies).", messages.SUCCESS)

    def has_resend_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("gateway.add_webhookdelivery")
