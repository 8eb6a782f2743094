from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


def new_prediction_id() -> str:
    return uuid.uuid4().hex


class Prediction(models.Model):
    """One metered call. Its hold and settlement live in the ledger (billing.LedgerEntry)."""

    class Status(models.TextChoices):
        STARTING = "starting"
        PROCESSING = "processing"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELED = "canceled"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED)

    id = models.CharField(primary_key=True, max_length=32, default=new_prediction_id, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="predictions")
    account = models.ForeignKey("billing.CreditAccount", on_delete=models.PROTECT, related_name="predictions")
    api_key = models.ForeignKey("accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL)
    version = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, related_name="predictions")
    protocol = models.CharField(max_length=8, default="native")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.STARTING, db_index=True)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    quote = models.JSONField(default=dict)
    hardware = models.CharField(max_length=8, blank=True)
    hold_amount = models.BigIntegerField(default=0)
    charged = models.BigIntegerField(default=0)
    royalty = models.BigIntegerField(default=0)
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 - NULL = none, unique
    # sha256 of the request an Idempotency-Key was first used with (its path and body): a replay
    # with another request is refused (422). Blank without a key (and on rows from before it).
    idempotency_fingerprint = models.CharField(max_length=64, blank=True, default="")
    request_id = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    webhook = models.URLField(max_length=1000, blank=True)
    webhook_events = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["user", "idempotency_key"], name="unique_idempotency_key_per_user"),
            models.CheckConstraint(condition=models.Q(charged__lte=models.F("hold_amount")),
                                   name="charged_within_hold"),
        ]
        indexes = [models.Index(fields=["status", "deadline_at"])]

    def __str__(self) -> str:
        return self.id


class WebhookDelivery(models.Model):
    """One event of one prediction to deliver to its webhook, with retries; `dead` after the last."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        DEAD = "dead"

    prediction = models.ForeignKey(Prediction, on_delete=models.CASCADE, related_name="webhook_deliveries")
    event = models.CharField(max_length=16)
    webhook_id = models.CharField(max_length=40, default=new_prediction_id)
    url = models.URLField(max_length=1000)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event} of {self.prediction_id} ({self.status})"


class WebhookAttempt(models.Model):
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    at = models.DateTimeField(auto_now_add=True)
    status_code = models.IntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    response_excerpt = models.TextField(blank=True)
    error = models.CharField(max_length=500, blank=True)
    ok = models.BooleanField(default=False)

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"
