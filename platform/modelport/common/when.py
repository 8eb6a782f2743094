"""Parsing of timestamps given in query parameters (`since`, `until`, `cursor`)."""

from __future__ import annotations

from datetime import UTC, datetime

from django.utils.dateparse import parse_date, parse_datetime

from modelport.common.problems import Problem


def parse_when(raw: str, *, name: str, allow_date: bool = True) -> datetime:
    """`raw` as a timezone-aware datetime in UTC: an ISO datetime with a timezone, or (with
    `allow_date`) an ISO date, meaning UTC midnight. Anything else is a 400 naming `name`.

    The result is converted to UTC here so that every valid input can be stored and compared:
    an offset such as `+23:59` parses (Python allows ±24 h) but PostgreSQL refuses offsets past
    ±15:59, and near year 1 or 9999 the conversion itself leaves the calendar.
    """
    try:
        # Both parsers raise ValueError for well-formed but impossible values (2026-13-45).
        value = parse_datetime(raw) if len(raw) > 10 else None
        day = parse_date(raw) if value is None and len(raw) == 10 and allow_date else None
    except ValueError:
        value = day = None
    if value is None:
        if day is None:
            what = "an ISO date or datetime" if allow_date else "an ISO datetime with a timezone"
            raise Problem(400, f"{name} must be {what}", errors={name: [raw]})
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    if value.tzinfo is None:
        raise Problem(400, f"{name} needs a timezone (e.g. 2026-01-01T00:00:00Z)", errors={name: [raw]})
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise Problem(400, f"{name} is outside the years 1 to 9999 in UTC", errors={name: [raw]}) from None
