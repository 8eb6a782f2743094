"""Credits. Amounts are integer micro-credits (1 credit = 1_000_000 µc); never floats."""

from __future__ import annotations

from django.conf import settings
from django.db import models

MICRO = 1_000_000


class CreditAccount(models.Model):
    """A user's balance: a cached sum of their ledger entries, never below zero (DB-enforced)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="credit_account")
    balance = models.BigIntegerField(default=0)
    # The most one call may cost (its worst case: base + royalty + compute over its deadline),
    # unless the call names its own with `Modelport-Max-Price`; NULL: no limit.
    max_price = models.BigIntegerField(null=True, blank=True, help_text="µc; calls that may cost more are refused")
    # The part of the balance serving workers keep for calls they answer before recording them
    # (the sum of the account's PostpaidReserve rows): holds may not take the balance below it.
    reserved = models.BigIntegerField(default=0, help_text="µc kept for postpaid calls (PostpaidReserve)")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(balance__gte=0), name="balance_non_negative"),
                       models.CheckConstraint(condition=models.Q(reserved__gte=0), name="reserved_non_negative")]

    def __str__(self) -> str:
        return f"{self.user}: {self.balance / MICRO:.6f} credits"


class PostpaidReserve(models.Model):
    """What one serving worker keeps of an account's balance for the calls it runs and answers
    before their recording statement (gateway/serving.py, postpaid). Not a ledger movement: the
    balance is unchanged, but holds of other calls may not take it below the account's
    `reserved` (the sum of these rows), so the recording of a call answered with a charge
    always finds the balance to pay it; each recording draws its charges from this row. The
    worker returns it when idle or stopping; the reaper returns those of dead workers."""

    account = models.ForeignKey(CreditAccount, on_delete=models.CASCADE, related_name="reserves")
    worker = models.CharField(max_length=200)
    amount = models.BigIntegerField(default=0, help_text="µc")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "worker"], name="one_reserve_per_worker"),
                       models.CheckConstraint(condition=models.Q(amount__gte=0), name="reserve_non_negative")]

    def __str__(self) -> str:
        return f"{self.worker}: {self.amount / MICRO:.6f} credits of {self.account_id}"


class LedgerEntry(models.Model):
    """An append-only change of one account's balance. The entries of an account sum to its balance."""

    class Kind(models.TextChoices):
        GRANT = "grant"
        HOLD = "hold"
        SETTLE = "settle"
        RELEASE = "release"
        ROYALTY = "royalty"
        REFUND = "refund"
        ADJUSTMENT = "adjustment"

    # No index of its own: the (account, created_at) index below serves lookups by account.
    account = models.ForeignKey(CreditAccount, on_delete=models.PROTECT, related_name="entries", db_index=False)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = models.BigIntegerField(help_text="micro-credits; negative takes from the balance")
    prediction = models.ForeignKey(
        "gateway.Prediction", null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_entries"
    )
    memo = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["account", "created_at"])]
        verbose_name_plural = "ledger entries"

    def __str__(self) -> str:
        return f"{self.kind} {self.amount / MICRO:+.6f}"


class HardwareClass(models.TextChoices):
    CPU = "cpu"
    GPU = "gpu"


class Price(models.Model):
    """The price sheet: one row per hardware class. Read when a call is admitted, so an edit
    applies to new calls only (the admitted call keeps the prices copied onto it)."""

    hardware = models.CharField(max_length=8, choices=HardwareClass.choices, unique=True)
    base_per_call = models.BigIntegerField(help_text="micro-credits per call")
    per_second = models.BigIntegerField(help_text="micro-credits per second of compute")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.hardware}: {self.base_per_call}µc + {self.per_second}µc/s"
