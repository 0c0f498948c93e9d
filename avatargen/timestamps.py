"""The one way the product writes a moment down: ISO 8601, UTC, with a Z.

Sidecars, the admin API, the event stream and the simulated Paperspace API all use it, so a client parses
one form and two timestamps of the same moment compare equal as text.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_iso(moment: datetime | float, *, timespec: str = "seconds") -> str:
    """`2026-11-24T23:59:59Z` for a datetime (aware, or naive local time) or a Unix timestamp."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
