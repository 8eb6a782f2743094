from __future__ import annotations

from celery import shared_task

from modelport.gateway import services


@shared_task(ignore_result=True)
def predictions_reap() -> int:
    """Release holds of calls that ended without settlement (see services.predictions_reap)."""
    return services.predictions_reap()


@shared_task(ignore_result=True, acks_late=True)
def webhook_deliver(delivery_id: int) -> None:
    """One attempt of a webhook delivery; schedules its own retry (see gateway.webhooks)."""
    from modelport.gateway.webhooks import delivery_attempt

    delivery_attempt(delivery_id=delivery_id)


@shared_task(ignore_result=True)
def outputs_expire() -> int:
    """Drop outputs older than the retention period (the prediction record itself stays)."""
    return services.outputs_expire()
