"""The daily budget, before a run and within it: a day's spend never goes over `gpu.daily_budget`.

Stopping runs from starting once the day's spend reached the budget is not enough: the run that crosses
it would go on to its end (in the soak's compressed days, 1.44 times the budget). So an automatic run also
stops generating, and shuts the machine down, once the day's spend so far (its own included), the time it
is about to spend, and the cost of the stop would go over the budget; and no automatic run starts when
what is left cannot pay for a boot, one image request and the stop.

What a boot and a request take is the slowest of the last few this process saw; before any was seen, the
configured bound: `gpu.ready_timeout` for a boot, nothing for a request (a run then stops on the spend alone,
checked every `gpu.poll_every`). What is kept for the end of a run is `reserve`: never less than the stop's
configured bound, however fast the last stops were, because one failing stop (a cloud API answering 500
three times, then the retries' backoff) takes seconds where the five before took a fraction of one; and,
where another process takes the generator over when this one dies (a lease among replicas, a lock among
workers), the time until it has. Manual runs are the owner's word and are not cut: the budget stops
automatic runs, as the contract says.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Literal

from avatargen.api.money import money
from avatargen.config import GpuSettings
from avatargen.storage.spend import Spend

REMEMBERED = 5  # how many of the last boots, requests and stops the estimates look at
STOP_MARGIN = 2.0  # a stop is counted this many times as long as the slowest one seen

Phase = Literal["boot", "request", "stop"]


def reserve(settings: GpuSettings, stops: Iterable[float], takeover: float = 0.0) -> float:
    """Seconds of machine time kept for the end of a run, whatever ends it.

    The stop: the slowest of the `stops` seen counted twice, but never less than `gpu.stop_timeout`, the
    bound on one stop (its API calls retried with backoff included: past it the stop is reported failed,
    the owner told to stop the machine by hand, and no budget can pay for that); plus one `poll_every`, the
    budget's own check. And `takeover`: how long a machine this process leaves on when it dies (SIGKILL, a
    frozen VM) goes on billing until another process holds the generator and stops it, that stop being
    bounded as this one's. The soak met both: a stop through three 500s took 3 s where the reserve kept 0.7 s
    (the day's spend reached 1.046 of the budget), and a replica killed mid-run left its machine on for the
    lease's time (1.305)."""
    slowest = STOP_MARGIN * max(stops, default=0.0)
    return max(slowest, settings.stop_timeout) + settings.poll_every + takeover


class Budget:
    """`gpu.daily_budget` against today's spend (`spend`), at the machine's `rate` (an hour's price); `takeover`:
    the longest another process may take to hold the generator once this one died (0 where none would)."""

    def __init__(self, settings: GpuSettings, spend: Callable[[], Spend], rate: Callable[[], float], *,
                 takeover: float = 0.0) -> None:
        self._settings = settings
        self._spend = spend
        self._rate = rate
        self._takeover = takeover
        self._seen: dict[Phase, deque[float]] = {step: deque(maxlen=REMEMBERED) for step in ("boot", "request", "stop")}

    def saw(self, step: Phase, seconds: float) -> None:
        """A boot (start request to SD ready), an image request or a stop (to confirmed off) took `seconds`."""
        self._seen[step].append(max(0.0, seconds))

    def seconds(self, step: Phase) -> float:
        """What a `step` is expected to take at most, from the last ones seen (else the configured bound); for
        the stop, the `reserve` kept for a run's end."""
        seen = self._seen[step]
        if step == "stop":
            return reserve(self._settings, seen, self._takeover)
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
