"""Admin: balances and the ledger (read-only: credits change only through ledger services, see
the user admin's grant action) and the price sheet (editable; applies to calls admitted after)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from modelport.billing.display import credits_display
from modelport.billing.models import CreditAccount, LedgerEntry, PostpaidReserve, Price
from modelport.billing.services import format_credits
from modelport.ops.admin_base import AuditedAdminMixin, ReadOnlyAdminMixin, ReadOnlyInline


class LedgerInline(ReadOnlyInline):
    model = LedgerEntry
    fields = ("created_at", "kind", "credits", "prediction", "memo", "created_by")
    readonly_fields = fields
    ordering = ("-id",)
    show_change_link = False

    @admin.display(description="credits")
    def credits(self, obj: LedgerEntry) -> str:
        return credits_display(obj.amount)


@admin.register(CreditAccount)
class CreditAccountAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("user", "credits", "reserved_credits", "updated_at")
    search_fields = ("user__username",)
    list_select_related = ("user",)
    fields = ("user", "credits", "reserved_credits", "max_price", "updated_at")
    readonly_fields = fields
    inlines = (LedgerInline,)

    @admin.display(description="balance (credits)", ordering="balance")
    def credits(self, obj: CreditAccount) -> str:
        return credits_display(obj.balance)

    @admin.display(description="kept for postpaid calls (credits)", ordering="reserved")
    def reserved_credits(self, obj: CreditAccount) -> str:
        return format_credits(obj.reserved)


@admin.register(PostpaidReserve)
class PostpaidReserveAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """What serving workers keep of accounts' balances for calls they answer before recording
    them (returned when idle; the reaper returns those of dead workers)."""

    list_display = ("account", "worker", "credits", "updated_at")
    search_fields = ("account__user__username", "worker")
    list_select_related = ("account__user",)
    fields = ("account", "worker", "amount", "credits", "updated_at")
    readonly_fields = fields

    @admin.display(description="credits", ordering="amount")
    def credits(self, obj: PostpaidReserve) -> str:
        return format_credits(obj.amount)


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "created_at", "account", "kind", "credits", "prediction", "memo", "created_by")
    list_filter = ("kind", "created_at")
    search_fields = ("account__user__username", "memo", "prediction__id")
    list_select_related = ("account__user", "created_by")
    date_hierarchy = "created_at"
    fields = ("created_at", "account", "kind", "amount", "credits", "prediction", "memo", "created_by")
    readonly_fields = fields

    @admin.display(description="credits", ordering="amount")
    def credits(self, obj: LedgerEntry) -> str:
        return credits_display(obj.amount)


@admin.register(Price)
class PriceAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ("hardware", "base_per_call", "per_second", "base_credits", "per_second_credits", "updated_at")
    fields = ("hardware", "base_per_call", "per_second", "updated_at")
    readonly_fields = ("updated_at",)

    @admin.display(description="base (credits)")
    def base_credits(self, obj: Price) -> str:
        return credits_display(obj.base_per_call)

    @admin.display(description="per second (credits)")
    def per_second_credits(self, obj: Price) -> str:
        return credits_display(obj.per_second)

    def get_readonly_fields(self, request: Any, obj: Any = None) -> tuple[str, ...]:
        # The hardware class is the row's identity: a changed class would be a different row.
        return ("hardware", "updated_at") if obj is not None else ("updated_at",)
