from __future__ import annotations

from celery import shared_task

from modelport.gateway import services


@shared_task(ignore_result=True)
def predictions_reap() -> int:
    """Release holds of calls that ended without settlement (see services.predictions_reap)."""
    return services.predictions_reap()
