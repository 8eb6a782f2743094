from __future__ import annotations

from django.conf import settings
from django.db import models


class ApiKey(models.Model):
    """An API key. Only the SHA-256 of the full key is stored; `prefix` identifies it in lists.

    Keys carry 190 bits of randomness, so a fast hash is enough (no password stretching needed).
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    rate_limit = models.CharField(
        max_length=64, blank=True, help_text="e.g. '20/second;500/minute'; empty = MODELPORT_RATE_LIMIT"
    )
    daily_cap = models.BigIntegerField(
        null=True, blank=True, help_text="µc this key may spend per UTC day (holds count); empty = no cap"
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


def new_webhook_secret() -> str:
    import base64
    import secrets

    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class WebhookSecret(models.Model):
    """The secret that signs an account's webhooks (Standard Webhooks style: `whsec_<base64>`)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_secret")
    secret = models.CharField(max_length=100, default=new_webhook_secret)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"webhook secret of {self.user}"
