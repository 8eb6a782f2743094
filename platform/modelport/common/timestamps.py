"""Query timestamps from callers, made safe for the database."""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(value: datetime) -> datetime:
    """`value` (timezone-aware) in UTC.

    Python accepts UTC offsets up to ±23:59 and PostgreSQL only up to ±15:59, so a query with a
    caller's offset could fail in the database (a 500); in UTC it cannot. A value that falls before
    year 1 or after 9999 in UTC is clamped to the first or last representable instant: as a query
    bound it selects the same rows."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC) if value.year == 1 else datetime.max.replace(tzinfo=UTC)
