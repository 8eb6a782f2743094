"""Users and API keys."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from modelport.accounts.models import ApiKey
from modelport.billing.services import account_open

KEY_PREFIX = "mp_"
# last_used_at is advisory; writing it at most once a minute keeps a DB write off the hot path.
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    secret: str  # the full key, shown exactly once


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def user_create(*, username: str, password: str | None = None, email: str = "", credits: int | None = None,
                is_staff: bool = False) -> AbstractBaseUser:
    """Create a user and their credit account (signup grant, or exactly `credits` credits)."""
    User = get_user_model()
    with transaction.atomic():
        user = User.objects.create_user(username=username, email=email, password=password)
        if is_staff:
            user.is_staff = True
            user.is_superuser = True
            user.save(update_fields=["is_staff", "is_superuser"])
        account_open(user=user, credits=credits)
    return user


def user_set_password(*, user: AbstractBaseUser, password: str) -> None:
    """Set `user`'s password (stored hashed). Sessions opened with the old password stop being valid."""
    user.set_password(password)
    user.save(update_fields=["password"])


def api_key_issue(*, user: AbstractBaseUser, name: str = "") -> IssuedKey:
    ident = secrets.token_hex(4)
    secret = f"{KEY_PREFIX}{ident}_{secrets.token_urlsafe(24)}"
    api_key = ApiKey.objects.create(user=user, name=name, prefix=f"{KEY_PREFIX}{ident}", key_hash=hash_key(secret))
    return IssuedKey(api_key=api_key, secret=secret)


def api_key_may_manage_keys(*, api_key: ApiKey) -> bool:
    """Whether a call authenticated by `api_key` may create API keys. Keys have no scopes yet,
    so only a staff user's key may: a leaked ordinary key cannot mint the keys that would
    outlive its revocation. (Sessions — the dashboard — always may.) When keys get scopes,
    this becomes the key's `manage`/`write` scope."""
    return bool(api_key.user.is_staff)


def api_key_revoke(*, api_key: ApiKey) -> None:
    from modelport.gateway import authcache

    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    authcache.invalidate_on_commit()


def api_key_authenticate(*, raw: str) -> ApiKey | None:
    """The active key matching `raw` (with its user loaded), or None. Records last use."""
    if not raw.startswith(KEY_PREFIX) or len(raw) > 200:
        return None
    key = (
        ApiKey.objects.select_related("user")
        .filter(key_hash=hash_key(raw), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if key is None:
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
