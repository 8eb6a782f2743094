"""Objects of a call's resolution built from a cached row (gateway/services.py, _resolved)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from modelport.common.problems import Problem
from modelport.gateway import services


def cached_row(**changes: object) -> list[object]:
    """A RESOLVE row (fastsql.RESOLVE's columns) for key 7 of user 3 calling its own model 5,
    version 11 (ready)."""
    values = {
        "key_id": 7, "prefix": "mp_abcd", "rate_limit": "", "daily_cap": None, "last_used": timezone.now(),
        "user_id": 3, "username": "owner", "is_staff": False, "model_id": 5, "owner_id": 3, "visibility": "private",
        "royalty": 0, "default_id": 11, "version_id": 11, "v_number": 1, "v_status": "ready", "v_disabled": False,
        "signature": {"inputs": [], "outputs": []}, "max_queue": 64, "artifact": "ab" * 32, "max_batch": 8,
        "royalty_pending": None, "royalty_pending_at": None, "max_price": None,
    }
    values.update(changes)
    return list(values.values())


def local(row: list[object], generation: bytes = b"g1") -> tuple[object, ...]:
    return services._resolved((generation, row), owner="owner", name="m", number=None)


def test_the_local_path_builds_a_rows_objects_once_per_row_and_generation():
    row = cached_row()
    user, api_key, version = local(row)
    assert (user.pk, api_key.pk, api_key.user is user, version.pk, version.model.pk, version.generation) == (
        3, 7, True, 11, 5, b"g1")
    again = local(row)
    assert all(a is b for a, b in zip(again, (user, api_key, version), strict=True))
    assert local(row, b"g2")[2] is not version  # a new generation
    assert local(cached_row())[2] is not version  # a new row (the cache entry was read again)
    counted = services._resolved((b"g1", row), owner="owner", name="m", number=None, counted=(None, None))
    assert counted[2] is not version  # the thread path builds its own (it sets attributes on them)


def test_a_reused_rows_checks_still_run_on_every_call():
    row = cached_row()
    local(row)
    row[4] = timezone.now() - timedelta(days=2)  # the key's last use is due for an update: needs I/O
    with pytest.raises(services.NeedsIO):
        local(row)
    disabled = cached_row(v_disabled=True)
    for _ in range(2):
        with pytest.raises(Problem) as refused:
            local(disabled)
        assert refused.value.status == 503
