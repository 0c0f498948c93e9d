"""Durations as the owner writes them: "90s", "10m", "24h", "7d", or plain integer seconds."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


# The longest duration any setting takes. Past it a value is a mistake, and a huge one (1e23 seconds) breaks
# the date arithmetic it feeds (OverflowError in the status, a timer that never fires).
MAX_DURATION = 365 * 86400.0


def parse_duration(value: object) -> float:
    """Return the duration in seconds, or raise ValueError saying what a valid one looks like."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as \"90s\" or integer seconds, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"a duration must be a finite number of seconds, got {value!r}")
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        seconds = float(value)
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if not match:
            raise ValueError(
                f"bad duration {value!r}: use a number with a unit (ms, s, m, h, d) such as \"90s\" or \"10m\"")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"expected a duration such as \"90s\" or integer seconds, got {type(value).__name__}")
    if seconds > MAX_DURATION:
        raise ValueError(f"a duration can be at most 365d, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Short human form for logs and the TUI: 42s, 3m 20s, 2h 5m, 1d 4h."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"
