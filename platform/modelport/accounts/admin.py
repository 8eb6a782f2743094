"""Admin: users (balance, recent ledger, credit grants) and API keys (revoke; hashes never shown)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from modelport.accounts.models import ApiKey
from modelport.billing.display import credits_display
from modelport.billing.models import MICRO, LedgerEntry
from modelport.ops import services as ops
from modelport.ops.admin_base import AuditedAdminMixin, ReadOnlyAdminMixin

User = get_user_model()
RECENT_LEDGER = 50


class CreditGrantForm(forms.Form):
    kind = forms.ChoiceField(choices=[
        (LedgerEntry.Kind.GRANT, "grant"),
        (LedgerEntry.Kind.REFUND, "refund"),
        (LedgerEntry.Kind.ADJUSTMENT, "adjustment (may be negative)"),
    ])
    amount = forms.DecimalField(max_digits=18, decimal_places=6, help_text="credits (up to 6 decimals)")
    reason = forms.CharField(max_length=300, help_text="recorded in the ledger entry's memo and the audit log")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        amount: Decimal | None = data.get("amount")
        if amount is not None:
            if amount == 0:
                self.add_error("amount", "must not be zero")
            elif amount < 0 and data.get("kind") != LedgerEntry.Kind.ADJUSTMENT:
                self.add_error("amount", "grants and refunds are positive; use an adjustment to take credits")
        return data

    def credits_micro(self) -> int:
        return int(self.cleaned_data["amount"] * MICRO)


def grant_credits_view(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
    """The action's two steps: first a form (amount, kind, reason), then one ledger entry per
    selected user through ops.credits_grant_by_operator."""
    if "apply" in request.POST:
        form = CreditGrantForm(request.POST)
        if form.is_valid():
            amount, kind = form.credits_micro(), form.cleaned_data["kind"]
            done, refused = [], []
            for user in queryset:
                applied = ops.credits_grant_by_operator(user=user, credits_micro=amount, kind=kind,
                                                        reason=form.cleaned_data["reason"], actor=request.user)
                (done if applied else refused).append(user.get_username())
            if done:
                modeladmin.message_user(request, f"{kind} of {credits_display(amount)} credits applied to "
                                                 f"{', '.join(done)}.", messages.SUCCESS)
            if refused:
                modeladmin.message_user(request, f"Refused (balance would go below zero): {', '.join(refused)}.",
                                        messages.ERROR)
            return None
    else:
        form = CreditGrantForm()
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": "Grant or refund credits",
        "opts": modeladmin.model._meta,
        "users": list(queryset),
        "form": form,
        "action": "grant_credits",
        "action_checkbox_name": ACTION_CHECKBOX_NAME,
        "selected": [str(pk) for pk in queryset.values_list("pk", flat=True)],
    }
    return TemplateResponse(request, "ops/credits_grant.html", context)


if admin.site.is_registered(User):
    admin.site.unregister(User)


@admin.register(User)
class UserAdmin(AuditedAdminMixin, BaseUserAdmin):
    list_display = ("username", "email", "balance", "is_staff", "is_active", "date_joined", "last_login")
    list_select_related = ("credit_account",)
    readonly_fields = ("balance", "recent_ledger", "last_login", "date_joined")
    fieldsets = (
        *BaseUserAdmin.fieldsets,
        ("Credits", {"fields": ("balance", "recent_ledger")}),
    )
    actions = ("grant_credits",)

    @admin.display(description="balance (credits)")
    def balance(self, obj: Any) -> str:
        account = getattr(obj, "credit_account", None)
        return credits_display(account.balance) if account is not None else "—"

    @admin.display(description=f"ledger (latest {RECENT_LEDGER})")
    def recent_ledger(self, obj: Any) -> str:
        entries = (LedgerEntry.objects.filter(account__user=obj).select_related("created_by", "prediction")
                   .order_by("-id")[:RECENT_LEDGER])
        if not entries:
            return "—"
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((e.created_at.strftime("%Y-%m-%d %H:%M:%S"), e.kind, credits_display(e.amount),
              e.prediction_id or "", e.memo, e.created_by or "") for e in entries),
        )
        full = reverse("admin:billing_ledgerentry_changelist") + f"?account__user__id__exact={obj.pk}"
        return format_html(
            '<table class="mp-ledger"><thead><tr><th>when (UTC)</th><th>kind</th><th>credits</th>'
            "<th>prediction</th><th>memo</th><th>by</th></tr></thead><tbody>{}</tbody></table>"
            '<p><a href="{}">full ledger</a></p>', rows, full)

    @admin.action(description="Grant or refund credits…", permissions=["grant_credits"])
    def grant_credits(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return grant_credits_view(self, request, queryset)

    def has_grant_credits_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("billing.add_ledgerentry")


class ActiveKeyFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("active", "active"), ("revoked", "revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Keys are listed by prefix. The stored hash is deliberately in no list, form or filter."""

    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "revoked_at", "daily_cap", "is_active")
    list_filter = (ActiveKeyFilter, "created_at")
    search_fields = ("prefix", "name", "user__username")
    list_select_related = ("user",)
    fields = ("prefix", "user", "name", "created_at", "last_used_at", "revoked_at", "daily_cap")
    readonly_fields = fields
    actions = ("revoke",)

    @admin.display(boolean=True, description="active")
    def is_active(self, obj: ApiKey) -> bool:
        return obj.is_active

    @admin.action(description="Revoke selected API keys", permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        revoked = sum(ops.api_key_revoke_by_operator(api_key=key, actor=request.user) for key in queryset)
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("accounts.change_apikey")
