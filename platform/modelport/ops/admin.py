"""Admin: the audit log (read-only) and the console's front page (link to the worker fleet)."""

from __future__ import annotations

from django.contrib import admin

from modelport.ops.admin_base import ReadOnlyAdminMixin, pretty_json
from modelport.ops.models import AuditEntry

admin.site.site_header = "Modelport administration"
admin.site.site_title = "Modelport admin"
admin.site.index_template = "ops/admin_index.html"


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("created_at", "actor_username", "action", "object_type", "object_repr")
    list_filter = ("action", "object_type", "created_at")
    search_fields = ("actor_username", "object_repr", "object_id", "action")
    date_hierarchy = "created_at"
    fields = ("created_at", "actor", "actor_username", "action", "object_type", "object_id", "object_repr",
              "details_pretty")
    readonly_fields = fields

    @admin.display(description="details")
    def details_pretty(self, obj: AuditEntry) -> str:
        return pretty_json(obj.details)
