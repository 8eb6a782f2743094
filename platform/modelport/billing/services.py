"""Credit ledger services.

Every balance change is one `LedgerEntry` plus one conditional UPDATE of the cached balance in
the same transaction; nothing reads a balance into Python and writes it back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from modelport.billing.models import MICRO, CreditAccount, HardwareClass, LedgerEntry, PostpaidReserve, Price

if TYPE_CHECKING:
    from modelport.gateway.models import Prediction

DEFAULT_PRICES = {
    HardwareClass.CPU: (MICRO // 10, MICRO),  # 0.1 credit a call + 1 credit per compute-second
    HardwareClass.GPU: (MICRO // 10, 5 * MICRO),
}


class InsufficientCredits(Exception):
    def __init__(self, *, balance: int, required: int) -> None:
        super().__init__(f"balance {balance} µc cannot cover {required} µc")
        self.balance = balance
        self.required = required


@dataclass(frozen=True)
class Quote:
    """Prices copied onto a call when it is admitted (µc)."""

    hardware: str
    base: int
    per_second: int
    royalty: int

    def max_price(self, deadline_s: float) -> int:
        return self.base + self.royalty + self.compute(int(deadline_s * 1_000_000))

    def compute(self, compute_us: int) -> int:
        # Rounded up to whole µc per call so a call is never free by truncation; exact integers.
        return -(-compute_us * self.per_second // 1_000_000)

    def price(self, compute_us: int) -> int:
        return self.base + self.royalty + self.compute(compute_us)


def account_open(*, user: AbstractBaseUser, credits: int | None = None) -> CreditAccount:
    """Create `user`'s account with the signup grant (or exactly `credits` credits)."""
    grant = (settings.MODELPORT_SIGNUP_CREDITS if credits is None else credits) * MICRO
    with transaction.atomic():
        account = CreditAccount.objects.create(user=user, balance=0)
        if grant:
            _apply(account_id=account.pk, amount=grant, kind=LedgerEntry.Kind.GRANT, memo="signup grant")
            account.refresh_from_db(fields=["balance"])
    return account


def account_for(*, user: AbstractBaseUser) -> CreditAccount:
    account = CreditAccount.objects.filter(user=user).first()
    return account if account is not None else account_open(user=user)


def account_set_max_price(*, user: AbstractBaseUser, max_price: int | None) -> CreditAccount:
    """Set the account's default maximum price per call (µc; None: no limit). Calls read it
    from their resolution row, so a new resolution generation is set after commit."""
    from modelport.gateway import authcache

    account = account_for(user=user)
    with transaction.atomic():
        CreditAccount.objects.filter(pk=account.pk).update(max_price=max_price)
        authcache.invalidate_on_commit()
    account.max_price = max_price
    return account


def reserve_top_up(*, account_id: int, worker: str, amount: int) -> bool:
    """Add `amount` µc to `worker`'s reserve of the account's balance (PostpaidReserve), if the
    balance less what is reserved already covers it. No ledger entry: the balance is unchanged
    (holds just cannot take it below the reserves). False when refused."""
    with transaction.atomic():
        if not CreditAccount.objects.filter(pk=account_id, balance__gte=F("reserved") + amount).update(
                reserved=F("reserved") + amount):
            return False
        reserve, created = PostpaidReserve.objects.select_for_update().get_or_create(
            account_id=account_id, worker=worker, defaults={"amount": amount})
        if not created:
            PostpaidReserve.objects.filter(pk=reserve.pk).update(amount=F("amount") + amount)
    return True


def reserve_release(*, account_id: int, worker: str) -> int:
    """Return `worker`'s reserve of the account (what its recordings did not draw): µc freed."""
    with transaction.atomic():
        reserve = PostpaidReserve.objects.select_for_update().filter(account_id=account_id, worker=worker).first()
        if reserve is None:
            return 0
        CreditAccount.objects.filter(pk=account_id).update(reserved=F("reserved") - reserve.amount)
        reserve.delete()
    return reserve.amount


def reserves_release_abandoned(*, live_workers: set[str], idle_s: float) -> int:
    """Return the reserves of workers not in `live_workers` that no statement touched for
    `idle_s` seconds (a worker returns its own when idle or stopping; one that died cannot).
    Run after the dead workers' journals are recorded: those recordings draw on them."""
    cutoff = timezone.now() - timedelta(seconds=idle_s)
    stale = PostpaidReserve.objects.filter(updated_at__lt=cutoff).exclude(worker__in=live_workers)
    return sum(reserve_release(account_id=r.account_id, worker=r.worker) for r in stale[:1000])


PRICE_CACHE_S = 2.0
_price_cache: dict[str, tuple[float, int, int]] = {}


def quote_cached(*, hardware: str = HardwareClass.CPU, royalty: int = 0) -> Quote | None:
    """`quote_for` from the process's price cache only (None when it would read the database)."""
    cached = _price_cache.get(hardware)
    if cached is None or time.monotonic() - cached[0] >= PRICE_CACHE_S:
        return None
    return Quote(hardware=hardware, base=cached[1], per_second=cached[2], royalty=royalty)


def quote_for(*, hardware: str = HardwareClass.CPU, royalty: int = 0) -> Quote:
    """Prices for a new call. The sheet is cached per process for PRICE_CACHE_S seconds, so a
    staff edit reaches new calls within that time (admitted calls keep the prices they got)."""
    cached = _price_cache.get(hardware)
    if cached is not None and time.monotonic() - cached[0] < PRICE_CACHE_S:
        base, per_second = cached[1], cached[2]
    else:
        row = Price.objects.filter(hardware=hardware).first()
        base, per_second = (row.base_per_call, row.per_second) if row else DEFAULT_PRICES[HardwareClass(hardware)]
        _price_cache[hardware] = (time.monotonic(), base, per_second)
    return Quote(hardware=hardware, base=base, per_second=per_second, royalty=royalty)


def _apply(*, account_id: int, amount: int, kind: str, prediction: Prediction | None = None, memo: str = "",
           created_by: AbstractBaseUser | None = None) -> bool:
    """Add `amount` (µc, may be negative) to the balance unless that would go below zero — or,
    for a hold, below what serving workers keep for their postpaid calls (`reserved`).

    Must run inside a transaction. Returns False (and writes nothing) when refused.
    """
    floor = F("reserved") if kind == LedgerEntry.Kind.HOLD else 0
    updated = CreditAccount.objects.filter(pk=account_id, balance__gte=floor - amount if amount < 0 else 0).update(
        balance=F("balance") + amount
    )
    if not updated:
        return False
    LedgerEntry.objects.create(
        account_id=account_id, kind=kind, amount=amount, prediction=prediction, memo=memo, created_by=created_by
    )
    if amount < 0 and kind != LedgerEntry.Kind.HOLD:
        # Serving workers admit some calls after running them when they recently saw ample
        # balance (gateway/serving.py, postpaid); a decrease other than a call's own hold makes
        # them forget what they saw, so the next call of a drained account gets 402 before it runs.
        from modelport.gateway import authcache

        authcache.invalidate_on_commit()
    return True


def credits_hold(*, account_id: int, amount: int, prediction: Prediction) -> None:
    """Take a hold of `amount` µc for `prediction`, atomically. Raises InsufficientCredits.

    Must run inside the transaction that creates the prediction.
    """
    if not _apply(account_id=account_id, amount=-amount, kind=LedgerEntry.Kind.HOLD, prediction=prediction):
        balance = CreditAccount.objects.filter(pk=account_id).values_list(
            F("balance") - F("reserved"), flat=True).first() or 0
        raise InsufficientCredits(balance=balance, required=amount)


def credits_settle(*, prediction: Prediction, charged: int, royalty: int, owner_account_id: int | None) -> None:
    """Settle `prediction`'s hold at `charged` µc; return the rest; credit `royalty` to the owner.

    Must run inside the transaction that moves the prediction to a terminal state (that
    conditional update is what makes this happen exactly once).
    """
    refund = prediction.hold_amount - charged
    assert refund >= 0, "a call is never charged more than its hold"
    _apply(account_id=prediction.account_id, amount=refund, kind=LedgerEntry.Kind.SETTLE, prediction=prediction,
           memo=f"charged {charged} µc")
    if royalty and owner_account_id is not None:
        _apply(account_id=owner_account_id, amount=royalty, kind=LedgerEntry.Kind.ROYALTY, prediction=prediction)


def credits_release(*, prediction: Prediction, memo: str = "") -> None:
    """Return `prediction`'s whole hold. Same transaction rule as `credits_settle`."""
    _apply(account_id=prediction.account_id, amount=prediction.hold_amount, kind=LedgerEntry.Kind.RELEASE,
           prediction=prediction, memo=memo)


def credits_refund(*, prediction: Prediction, amount: int, royalty: int, owner_account_id: int | None) -> None:
    """Give back what a settled call was charged (its result never reached the caller) and take
    back the owner's royalty when their balance still covers it (otherwise the platform bears
    it). Same transaction rule as `credits_settle`."""
    _apply(account_id=prediction.account_id, amount=amount, kind=LedgerEntry.Kind.REFUND, prediction=prediction,
           memo="result undelivered")
    if royalty and owner_account_id is not None:
        _apply(account_id=owner_account_id, amount=-royalty, kind=LedgerEntry.Kind.ROYALTY, prediction=prediction,
               memo="royalty returned: result undelivered")


def credits_grant(*, user: AbstractBaseUser, credits_micro: int, kind: str = LedgerEntry.Kind.GRANT, memo: str,
                  created_by: AbstractBaseUser | None = None) -> bool:
    account = account_for(user=user)
    with transaction.atomic():
        return _apply(account_id=account.pk, amount=credits_micro, kind=kind, memo=memo, created_by=created_by)


def ledger_drift(*, account: CreditAccount) -> int:
    """Cached balance minus the sum of the ledger (0 when consistent)."""
    total = LedgerEntry.objects.filter(account=account).aggregate(total=Sum("amount"))["total"] or 0
    account.refresh_from_db(fields=["balance"])
    return account.balance - total


def format_credits(micro: int) -> str:
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{frac:06d}"
