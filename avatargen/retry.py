"""Waiting between attempts: exponential backoff and the server's own `Retry-After`.

Cloud APIs ask clients to back off on 429 and 5xx answers; retrying at a fixed pace makes an overload
worse, and many clients retrying in lockstep make it worse still, hence the jitter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def doubling(base: float, attempt: int, *, cap: float) -> float:
    """`base` doubled `attempt` times, but never more than `cap`, whatever the attempt.

    2**attempt alone overflows a float from attempt 1024 on, and loops that retry for as long as it
    takes (stopping a machine) get there: past that point the answer is simply the cap.
    """
    try:
        return min(cap, base * 2.0**attempt)
    except OverflowError:
        return cap


def backoff_delay(attempt: int, *, base: float, cap: float = 60.0) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry).

    Doubles with every attempt up to `cap`, then keeps a random half to full share of it ("equal
    jitter"), so the wait still grows while two clients drift apart.
    """
    ceiling = doubling(base, attempt, cap=cap)
    return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class Backoff:
    """A reconnect policy: waits doubling from `initial` up to `maximum`, without jitter.

    For one client on its own, such as the owner's control panel: it has no crowd to drift apart from,
    and the wait it shows ("retry 3 in 2s") is the wait it keeps.
    """

    initial: float = 0.5
    maximum: float = 30.0

    def delay(self, failures: int) -> float:
        """The wait after the failures-th failure in a row (1 after the first)."""
        return doubling(self.initial, failures - 1, cap=self.maximum)


def parse_retry_after(value: str | None, *, cap: float = 60.0) -> float | None:
    """The wait a `Retry-After` header asks for, in seconds (capped), or None when absent or unreadable.

    The header holds either whole seconds or an HTTP date; the cap keeps a confused server from
    stalling a shutdown that must still stop the machine.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000" means UTC without saying so
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(cap, max(0.0, seconds))
