"""Automatic runs: the buckets are checked at start-up and every check_every, within the daily budget.

A bucket below its min is due (min 0: never automatically). No run starts while such a bucket's level is
unknown (its store did not answer at the last look): a list emptied by an outage is not an empty bucket.
No automatic run starts once today's spend reaches daily_budget, and after a failed automatic run the
wait before the next attempt doubles, up to 24 x check_every, so a broken setup does not boot a paid
machine every few minutes; a completed run or a manual refill resets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from avatargen.api.wire import BucketLevel
from avatargen.config import Settings
from avatargen.generator.states import States
from avatargen.ledger import Spend
from avatargen.retry import doubling
from avatargen.run import Run

log = logging.getLogger("avatargen.generator")

MAX_BACKOFF = 24


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        states: States,
        levels: Callable[[], dict[str, BucketLevel]],
        spend: Callable[[], Spend],
        bills: bool,
        start_run: Callable[[list[str]], Run],
        announce: Callable[[], None],
        blocked: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._states = states
        self._levels = levels
        self._spend = spend
        self._bills = bills
        self._start_run = start_run
        self._announce = announce
        self._blocked = blocked  # why no run may start at all (the machine can never run as configured)
        self._failures = 0
        self._wake = asyncio.Event()
        self.next_check_at: float | None = None
        self.paused_reason: str | None = None

    async def run(self, first: Callable[[], Awaitable[None]] | None = None) -> None:
        """Check now (after `first`: stopping a machine found running), then every check_every, forever."""
        if first is not None:
            await first()
        self.next_check_at = time.time()
        while True:
            wait = self.next_check_at - time.time()
            if wait > 0:
                self._wake.clear()
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel (close()) when the
                # wake-up and the cancel arrive together, and the scheduler would never end.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            self.next_check_at = time.time() + self._delay()
            if self._states.state == "idle":
                try:
                    self.check()
                except Exception:
                    log.exception("the automatic check failed")

    def check(self) -> Run | None:
        """Start an automatic run for the buckets below their min, unless today's budget is spent."""
        levels = self._levels()
        due = [name for name, level in levels.items() if level.min > 0 and level.count < level.min]
        watched = {name: level for name, level in levels.items() if level.min > 0}
        if reason := self._blocked() or unknown_levels(watched):
            self.paused_reason = reason
            return None
        if not due:
            self.paused_reason = None
            return None
        budget = self._settings.gpu.daily_budget
        if self._bills and (today := self._spend().today) >= budget:
            reason = f"daily budget reached: {today:.2f} of {budget:.2f} spent today"
            if reason != self.paused_reason:
                log.warning("automatic refill paused, %s", reason)
            self.paused_reason = reason
            self._announce()
            return None
        self.paused_reason = None
        return self._start_run(due)

    def manual_refill(self) -> None:
        """The owner asked for a run: whatever failed before, automatic checks start afresh."""
        self._failures = 0

    def run_ended(self, run: Run) -> None:
        """After an automatic run: the next check is check_every away, or longer after a failure."""
        if run.trigger != "auto":
            return
        self._failures = self._failures + 1 if run.outcome == "failed" else 0
        self.next_check_at = time.time() + self._delay()
        self._wake.set()

    def _delay(self) -> float:
        every = self._settings.generator.check_every
        return doubling(every, self._failures, cap=every * MAX_BACKOFF)


def unknown_levels(levels: Mapping[str, BucketLevel]) -> str | None:
    """Why no run may start on these levels: the buckets whose count cannot be trusted now; None if all can."""
    unknown = [f"{name}: {level.unknown}" for name, level in levels.items() if level.unknown]
    return f"bucket levels unknown ({'; '.join(unknown)}): no run starts until they can be read" if unknown else None
