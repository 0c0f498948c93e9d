"""The cost ledger's entries and what they add up to, whichever the backend stores them: a run's billed
machine time (`Entry`), today's and this month's spend (`Spend`), and the history by day (`Day`, `daily`).
Days and months are UTC.

Days can be compressed for the soak benchmark (`benchmarks/soak`), which must see several midnights and
budget resets in an hour: `AVATARGEN_DAY_SECONDS=N` makes a "day" N seconds long, counted from the epoch,
for everything that asks `day_start` and `day_length` (today's spend, the daily budget, the history).
Months stay calendar months. Unset (always, in production) days are UTC days.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

DAY = 86400.0
DAY_SECONDS_ENV = "AVATARGEN_DAY_SECONDS"  # a compressed day, for the soak benchmark only


@dataclass(frozen=True)
class Entry:
    """One run's billed time: from the start request to the confirmed stop (None while it runs), and the
    images it stored (written when it stops)."""

    run_id: str
    started: float
    stopped: float | None
    hourly_cost: float
    images: int = 0

    def seconds_since(self, start: float, now: float) -> float:
        """Billed seconds from `start` on (an open entry counts up to `now`)."""
        return self.seconds_between(start, now, now)

    def seconds_between(self, start: float, end: float, now: float) -> float:
        """Billed seconds inside [start, end) (an open entry counts up to `now`)."""
        stopped = self.stopped if self.stopped is not None else now
        return max(0.0, min(stopped, end) - max(self.started, start))


@dataclass(frozen=True)
class Spend:
    today: float
    month: float
    billed_seconds_today: float
    billed_seconds_month: float

    @classmethod
    def of(cls, entries: Iterable[Entry], now: float | None = None) -> Spend:
        """Today's and this month's billed time and cost; only the part of each entry inside the period counts."""
        now = time.time() if now is None else now
        day, month = day_start(now), month_start(now)
        seconds_today = seconds_month = cost_today = cost_month = 0.0
        for entry in entries:
            in_day, in_month = entry.seconds_since(day, now), entry.seconds_since(month, now)
            seconds_today += in_day
            seconds_month += in_month
            cost_today += in_day / 3600 * entry.hourly_cost
            cost_month += in_month / 3600 * entry.hourly_cost
        return cls(cost_today, cost_month, seconds_today, seconds_month)


@dataclass(frozen=True)
class Day:
    """One UTC day's billed time, its cost, and the images of the runs that ended that day (a run still
    going counts today)."""

    date: date
    billed_seconds: float
    cost: float
    images: int


def daily(entries: Iterable[Entry], days: int, now: float | None = None) -> list[Day]:
    """The last `days` UTC days, oldest first, today last; a run across midnight bills each day its part."""
    now = time.time() if now is None else now
    today = day_start(now)
    length = day_length()
    starts = [today - (days - 1 - index) * length for index in range(days)]
    seconds, cost, images = [0.0] * days, [0.0] * days, [0] * days
    for entry in entries:
        for index, start in enumerate(starts):
            billed = entry.seconds_between(start, start + length, now)
            seconds[index] += billed
            cost[index] += billed / 3600 * entry.hourly_cost
        ended = (entry.stopped if entry.stopped is not None else now) - starts[0]
        if ended >= 0:
            images[min(days - 1, int(ended // length))] += entry.images
    first = datetime.fromtimestamp(today, UTC).date() - timedelta(days=days - 1)
    return [Day(first + timedelta(days=index), seconds[index], cost[index], images[index]) for index in range(days)]


def day_length() -> float:
    """Seconds in a day: 86400, unless AVATARGEN_DAY_SECONDS compresses days (the soak benchmark)."""
    raw = os.environ.get(DAY_SECONDS_ENV)
    if not raw:
        return DAY
    try:
        length = float(raw)
    except ValueError:
        length = 0.0
    if not 0 < length <= DAY:
        raise ValueError(f"{DAY_SECONDS_ENV} must be a number of seconds from 1 to {DAY:g}, got {raw!r}")
    return length


def day_start(now: float) -> float:
    """When today began: UTC midnight, or the last multiple of a compressed day since the epoch."""
    length = day_length()
    if length != DAY:
        return now - now % length
    return datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def month_start(now: float) -> float:
    return datetime.fromtimestamp(now, UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
