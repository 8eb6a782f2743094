"""Periodic operations tasks (beat)."""

from __future__ import annotations

from celery import shared_task

from modelport.ops import services


@shared_task(ignore_result=True)
def disabled_versions_sync() -> int:
    """Repair `<prefix>:disabled` from the database (a toggle whose Redis write failed)."""
    return len(services.disabled_versions_sync())
