"""Shared pieces of the admin console: audited edits, read-only admins, pretty JSON fields."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db import models, transaction
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.utils.html import format_html

from modelport.ops.services import audit_record


def _plain(value: Any) -> Any:
    """A JSON-friendly rendering of a form value for the audit log."""
    if isinstance(value, models.Model):
        return str(value)
    if isinstance(value, str | int | float | bool | type(None) | list | dict):
        return value
    return str(value)


class AuditedAdminMixin(admin.ModelAdmin):
    """Records every add, change and delete made through the admin forms as an AuditEntry
    (with each changed field's old and new value), next to the LogEntry Django writes itself.
    Custom actions call `audit_record` themselves."""

    def save_model(self, request: HttpRequest, obj: Any, form: ModelForm, change: bool) -> None:
        label = obj._meta.label_lower
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            changes = {f: {"from": _plain(form.initial.get(f)), "to": _plain(form.cleaned_data.get(f))}
                       for f in form.changed_data if "password" not in f}  # never a secret in the log
            audit_record(actor=request.user, action=f"{label}.{'change' if change else 'add'}", obj=obj,
                         details={"changed": changes}, log_entry=False)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            audit_record(actor=request.user, action=f"{obj._meta.label_lower}.delete", obj=obj, log_entry=False)
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        with transaction.atomic():
            for obj in queryset:
                audit_record(actor=request.user, action=f"{obj._meta.label_lower}.delete", obj=obj,
                             log_entry=False)
            super().delete_queryset(request, queryset)


class ReadOnlyAdminMixin(admin.ModelAdmin):
    """Viewable, never added, changed or deleted through the admin (records of what happened)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def pretty_json(value: Any) -> str:
    """Readable JSON in a <pre> block (escaped); "—" for empty values."""
    if value in (None, "", {}, []):
        return "—"
    return format_html('<pre class="mp-json" style="white-space: pre-wrap">{}</pre>',
                       json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def pre_text(value: str) -> str:
    if not value:
        return "—"
    return format_html('<pre class="mp-log" style="white-space: pre-wrap; max-height: 40em; overflow: auto">{}</pre>',
                       value)
