"""The daily budget, before a run and within it: a day's spend never goes over `gpu.daily_budget`.

Stopping runs from starting once the day's spend reached the budget is not enough: the run that crosses
it would go on to its end (in the soak's compressed days, 1.44 times the budget). So an automatic run also
stops generating, and shuts the machine down, once the day's spend so far (its own included), the time it
is about to spend, and the cost of the stop would go over the budget; and no automatic run starts when
what is left cannot pay for a boot, one image request and the stop.

What a boot, a request and a stop take is the slowest of the last few this process saw, the stop doubled
(it is what must still fit once the run stops); before any was seen, the configured bounds:
`gpu.ready_timeout` for a boot, `gpu.stop_timeout` for a stop, nothing for a request (a run then stops on
the spend alone, checked every `gpu.poll_every`). Manual runs are the owner's word and are not cut: the
budget stops automatic runs, as the contract says.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Literal

from avatargen.api.money import money
from avatargen.config import GpuSettings
from avatargen.storage.spend import Spend

REMEMBERED = 5  # how many of the last boots, requests and stops the estimates look at
STOP_MARGIN = 2.0  # a stop is counted this many times as long as the slowest one seen

Phase = Literal["boot", "request", "stop"]


class Budget:
    """`gpu.daily_budget` against today's spend (`spend`), at the machine's `rate` (an hour's price)."""

    def __init__(self, settings: GpuSettings, spend: Callable[[], Spend], rate: Callable[[], float]) -> None:
        self._settings = settings
        self._spend = spend
        self._rate = rate
        self._seen: dict[Phase, deque[float]] = {step: deque(maxlen=REMEMBERED) for step in ("boot", "request", "stop")}

    def saw(self, step: Phase, seconds: float) -> None:
        """A boot (start request to SD ready), an image request or a stop (to confirmed off) took `seconds`."""
        self._seen[step].append(max(0.0, seconds))

    def seconds(self, step: Phase) -> float:
        """What a `step` is expected to take at most, from the last ones seen (else the configured bound)."""
        seen = self._seen[step]
        if step == "stop":
            return STOP_MARGIN * max(seen) + self._settings.poll_every if seen else self._settings.stop_timeout
        if step == "boot":
            return max(seen, default=self._settings.ready_timeout)
        return max(seen, default=0.0)

    def no_run_now(self) -> str | None:
        """Why no automatic run may start: today's spend reached the budget, or what is left of it cannot pay
        for a boot, one image request and the stop. None when a run may start."""
        budget, today = self._settings.daily_budget, self._spend().today
        if today >= budget:
            return f"daily budget reached: {money(today)} of {money(budget)} spent today"
        smallest = sum(self.seconds(step) for step in ("boot", "request", "stop")) / 3600 * self._rate()
        if today + smallest > budget:
            return (f"daily budget reached: {money(today)} of {money(budget)} spent today, and what is left cannot pay "
                    f"for a boot, one image and the stop (about {money(smallest)})")
        return None

    def stop_now(self, rate: float, ahead: float) -> str | None:
        """Why a run billed at `rate` an hour must stop generating now: today's spend, `ahead` more seconds
        of the machine and its stop would go over the budget. None when it may go on."""
        budget, today = self._settings.daily_budget, self._spend().today
        coming = (ahead + self.seconds("stop")) / 3600 * rate
        if today + coming > budget:
            return (f"daily budget reached: {money(today)} of {money(budget)} spent today, and going on "
                    f"(about {money(coming)} more with the stop) would go over it")
        return None
