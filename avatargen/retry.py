"""Waiting between attempts: exponential backoff and the server's own `Retry-After`.

Cloud APIs ask clients to back off on 429 and 5xx answers; retrying at a fixed pace makes an overload
worse, and many clients retrying in lockstep make it worse still, hence the jitter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# 2**32 times any base is past every cap: no need to double further, and no float overflow however many
# attempts fail (the machine-stop loop retries for as long as it takes).
MAX_DOUBLINGS = 32


def backoff_delay(attempt: int, *, base: float, cap: float = 60.0, jitter: bool = True) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry).

    Doubles with every attempt up to `cap`, then (with jitter) keeps a random half to full share of it
    ("equal jitter"), so the wait still grows while two clients drift apart.
    """
    ceiling = min(cap, base * 2 ** min(attempt, MAX_DOUBLINGS))
    return random.uniform(ceiling / 2, ceiling) if jitter else ceiling


@dataclass(frozen=True)
class Backoff:
    """A reconnect policy: the waits of `backoff_delay` from `initial` up to `maximum`, without jitter.

    For one client on its own, such as the owner's control panel: it has no crowd to drift apart from,
    and the wait it shows ("retry 3 in 2s") is the wait it keeps.
    """

    initial: float = 0.5
    maximum: float = 30.0

    def delay(self, failures: int) -> float:
        """The wait after the failures-th failure in a row (1 after the first)."""
        return backoff_delay(failures - 1, base=self.initial, cap=self.maximum, jitter=False)


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
