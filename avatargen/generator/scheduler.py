"""Automatic runs: the buckets are checked at start-up and every check_every, within the daily budget.

A bucket below its min is due (min 0: never automatically). No run starts while such a bucket's level is
unknown (its store did not answer at the last look): a list emptied by an outage is not an empty bucket.
No automatic run starts once today's spend reaches daily_budget, or when what is left of it cannot pay
for a boot, one image and the stop (`avatargen.generator.budget`), and after a failed automatic run the
wait before the next attempt doubles, up to 24 x check_every, so a broken setup does not boot a paid
machine every few minutes; a completed run or a manual refill resets it.

A run (automatic or manual) whose images the safety gate mostly held back (more than half of those made)
pauses automatic runs: the next run would hold its images back too, and the owner would pay for a boot
every check_every for nothing. They resume when the owner acts (approves or deletes a held image, so
fewer are held than at the pause; or asks for a refill) or after `review.pause_for`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from avatargen.api.wire import BucketLevel
from avatargen.config import Settings
from avatargen.durations import format_duration
from avatargen.generator.states import States
from avatargen.retry import doubling
from avatargen.run import Run, iso

log = logging.getLogger("avatargen.generator")

MAX_BACKOFF = 24


@dataclass(frozen=True)
class GatePause:
    """Automatic runs paused after a run whose images were mostly held back."""

    reason: str
    until: float
    held: int  # images held in the buckets at the pause: fewer means the owner reviewed some



class Scheduler:
    def __init__(
        self,
        settings: Settings,
        states: States,
        levels: Callable[[], dict[str, BucketLevel]],
        no_run_now: Callable[[], str | None],
        bills: bool,
        start_run: Callable[[list[str]], Run],
        announce: Callable[[], None],
        blocked: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._states = states
        self._levels = levels
        self._no_run_now = no_run_now  # why today's budget allows no run (None: it allows one)
        self._bills = bills
        self._start_run = start_run
        self._announce = announce
        self._blocked = blocked  # why no run may start at all (the machine can never run as configured)
        self._failures = 0
        self._wake = asyncio.Event()
        self.next_check_at: float | None = None
        self._budget_reason: str | None = None
        self._storage_reason: str | None = None  # a bucket refilled automatically whose level is unknown now
        self._gate: GatePause | None = None

    @property
    def paused_reason(self) -> str | None:
        """Why automatic runs do not start now (None: they do)."""
        return self._gate_reason() or self._storage_reason or self._budget_reason

    @property
    def paused_by(self) -> str | None:
        """What paused automatic runs: "safety_gate", "storage" or "daily_budget" (None: nothing)."""
        if self._gate_reason():
            return "safety_gate"
        if self._storage_reason:
            return "storage"
        return "daily_budget" if self._budget_reason else None

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
        self._storage_reason = unknown_levels({name: level for name, level in levels.items() if level.min > 0})
        if self._blocked() or self._gate_reason() or self._storage_reason:
            return None
        if not due:
            self._budget_reason = None
            return None
        if self._bills and (reason := self._no_run_now()) is not None:
            if reason != self._budget_reason:
                log.warning("automatic refill paused, %s", reason)
            self._budget_reason = reason
            self._announce()
            return None
        self._budget_reason = None
        return self._start_run(due)

    def manual_refill(self) -> None:
        """The owner asked for a run: whatever failed or paused before, automatic checks start afresh."""
        self._failures = 0
        if self._gate is not None:
            log.info("automatic runs resume: the owner asked for a refill")
            self._gate = None

    def run_ended(self, run: Run) -> None:
        """After a run: automatic runs pause if the gate held most of its images back; after an automatic
        run, the next check is check_every away, or longer after a failure."""
        if run.mostly_held:
            self._pause_for_gate(run)
        if run.trigger != "auto":
            return
        self._failures = self._failures + 1 if run.outcome == "failed" else 0
        self.next_check_at = time.time() + self._delay()
        self._wake.set()

    def _held(self) -> int:
        return sum(level.held for level in self._levels().values())

    def _pause_for_gate(self, run: Run) -> None:
        pause_for = self._settings.review.pause_for
        until = time.time() + pause_for
        reason = (f"the safety gate held back {run.held} of the {run.done + run.held} images of run {run.id}: "
                  f"automatic runs are paused until you approve or delete held images or ask for a refill, "
                  f"or until {iso(until)} (review.pause_for {format_duration(pause_for)})")
        self._gate = GatePause(reason, until, self._held())
        log.warning("automatic runs paused: %s", reason)
        self._announce()

    def _gate_reason(self) -> str | None:
        """The gate's pause, while it lasts; it ends (and says so) once the owner acted or its time is up."""
        gate = self._gate
        if gate is None:
            return None
        if time.time() >= gate.until:
            log.info("automatic runs resume: review.pause_for has passed since the safety gate paused them")
        elif self._held() < gate.held:
            log.info("automatic runs resume: the owner reviewed held images")
        else:
            return gate.reason
        self._gate = None
        return None

    def _delay(self) -> float:
        every = self._settings.generator.check_every
        return doubling(every, self._failures, cap=every * MAX_BACKOFF)


def unknown_levels(levels: Mapping[str, BucketLevel]) -> str | None:
    """Why no run may start on these levels: the buckets whose count cannot be trusted now; None if all can."""
    unknown = [f"{name}: {level.unknown}" for name, level in levels.items() if level.unknown]
    return f"bucket levels unknown ({'; '.join(unknown)}): no run starts until they can be read" if unknown else None
