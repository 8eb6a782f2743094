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
