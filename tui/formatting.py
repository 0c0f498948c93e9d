"""How numbers and times read on screen, the same in every panel."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime


def money(amount: float) -> str:
    """Spend in the owner's currency; sub-cent runs keep three decimals so they do not read as free."""
    return f"{amount:.3f}" if 0 < amount < 0.1 else f"{amount:.2f}"


def clock(moment: datetime) -> str:
    """A server timestamp as the owner's local wall-clock time."""
    return moment.astimezone().strftime("%H:%M:%S")


def timestamp(moment: datetime) -> str:
    """A server timestamp as the owner's local date and time."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def targets(counts: Mapping[str, int]) -> str:
    """A run's images per bucket: "unique 18, fallback 35"."""
    return ", ".join(f"{bucket} {count}" for bucket, count in counts.items())
