"""The generator: keeps the buckets between min and max while spending as little GPU time as possible.

It owns the pieces and answers the owner: `refill` and `abort` (the admin API), `status` (the TUI), and
`start` / `close` (the server's lifespan). Each piece is one idea in a module of its own: the state
(states), one run (refill), automatic runs and the budget (scheduler), a machine a crash left running
(orphan), the machine's stop (machine), billed time kept off the event loop (billing), the imaging process
(imaging_pool) and what the owner sees (views).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from avatargen.api.wire import BucketLevel, History, Status, encode_event
from avatargen.config import PromptSettings, Settings
from avatargen.events import EventHub
from avatargen.generator.billing import Billing
from avatargen.generator.budget import Budget
from avatargen.generator.errors import NothingToDo, NotRunning, RunActive
from avatargen.generator.imaging_pool import ImagingPool
from avatargen.generator.machine import Machine
from avatargen.generator.orphan import OrphanRecovery
from avatargen.generator.refill import Refill, RunContext
from avatargen.generator.scheduler import Scheduler, unknown_levels
from avatargen.generator.states import States
from avatargen.generator.views import bucket_levels, cost_summary, history_view, state_change
from avatargen.gpu.base import Provider, Serverless
from avatargen.run import Run, State, Trigger, utc
from avatargen.storage.protocols import Ledger, StoredBucket

log = logging.getLogger("avatargen.generator")


class AvatarGenerator:
    """The generator of the owner's avatars: one per data directory, started and closed by the server.

    Named for what it makes, not `Generator`, which would shadow `collections.abc.Generator`.
    """

    def __init__(
        self,
        settings: Settings,
        buckets: Mapping[str, StoredBucket],
        provider: Provider,
        ledger: Ledger,
        events: EventHub,
        *,
        takeover: float = 0.0,
    ) -> None:
        self.settings = settings
        self.buckets = buckets
        self.provider = provider
        self.events = events
        self.billing = Billing(ledger, settings.gpu.hourly_cost)
        self.prompts: PromptSettings = settings.prompts  # the owner's edits apply from the next prompt
        self.states = States(announce=self._announce_state)
        self.machine = Machine(provider, on_change=self._on_machine_state)
        # takeover: how long another process may take to stop the machine if this one dies (see Budget)
        self.budget = Budget(settings.gpu, self.billing.spend, lambda: provider.hourly_rate().amount,
                             takeover=takeover)
        self.scheduler = Scheduler(settings, self.states, self.levels, self.budget.no_run_now, provider.bills,
                                   start_run=lambda due: self.refill(due, trigger="auto"),
                                   announce=self._announce_state, blocked=lambda: self.machine.cannot_run)
        self._orphan = OrphanRecovery(self.machine, self.states, self.billing)
        self._imaging = ImagingPool(settings.generator, settings.review, buckets)
        self._context = RunContext(settings, buckets, self.machine, self.states, self.billing, self.budget,
                                   self._imaging, events,
                                   prompts=lambda: self.prompts, levels=self.levels, ended=self.scheduler.run_ended)
        self._refill: Refill | None = None
        self._scheduling: asyncio.Task[None] | None = None
        self._closing = False

    # --- what the owner sees ---------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.states.state

    @property
    def run(self) -> Run | None:
        return self.states.run

    @property
    def last_run(self) -> Run | None:
        return self.states.last_run

    @property
    def next_check_at(self) -> float | None:
        return self.scheduler.next_check_at

    @property
    def paused_reason(self) -> str | None:
        return self.machine.cannot_run or self.scheduler.paused_reason

    @property
    def paused_by(self) -> str | None:
        """What keeps automatic runs from starting: "machine", "safety_gate" or "daily_budget" (None: nothing)."""
        return "machine" if self.machine.cannot_run else self.scheduler.paused_by

    @property
    def machine_state(self) -> str | None:
        return self.machine.state

    def levels(self) -> dict[str, BucketLevel]:
        return bucket_levels(self.settings, self.buckets)

    def view(self) -> Status:
        """What the owner sees: state, runs, buckets, machine and spend."""
        runs = state_change(self.states, self.machine.state)
        return Status(
            state=runs.state,
            run=runs.run,
            last_run=runs.last_run,
            buckets=self.levels(),
            provider=self.provider.name,
            machine_state=self.machine.state,
            machine_notes=tuple(self.machine.notes),
            cost=cost_summary(self.settings, self.billing.spend(), self.billing.problem, self.provider.hourly_rate()),
            next_check_at=utc(self.scheduler.next_check_at),
            paused_reason=self.paused_reason,
            paused_by=self.paused_by,
            endpoint=self.provider.detail() if isinstance(self.provider, Serverless) else None,
        )

    def status(self) -> dict[str, Any]:
        return self.view().to_json()

    async def history(self, days: int) -> History:
        """Spend, billed time and images per day over the last `days` days, and the run under way (else the
        last one) minute by minute: the owner's charts."""
        return history_view(await self.billing.history(days), self.states.run or self.states.last_run)

    def _announce_state(self) -> None:
        self.events.publish(*encode_event(state_change(self.states, self.machine.state)))

    def _on_machine_state(self, state: str) -> None:
        if self.states.run is not None:
            self.states.run.machine_state = state
        self._announce_state()

    # --- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Look at the machine (can it run at all?) and for a machine a crash left running (stopped in the
        background before anything else), then check the buckets now and every check_every."""
        await self.billing.load(self.buckets, self.provider.name if self.provider.bills else None)
        await self.machine.check()
        orphaned = await self._orphan.find() if self.machine.cannot_run is None else False
        self._scheduling = asyncio.create_task(self.scheduler.run(self._orphan.stop if orphaned else None),
                                               name="generator-scheduler")

    def stand_down(self, reason: str) -> None:
        """This process lost the generator's lease (`reason`): the run is aborted and no other starts here. A
        fenced provider refuses the lost holder's machine calls, so the machine is left to the new holder."""
        self._abort_for_good(reason, lease_lost=True)

    def _abort_for_good(self, reason: str, *, lease_lost: bool = False) -> None:
        if (not self._closing and self._refill is not None and self.states.run is not None
                and self.states.state != "shutting_down"):
            self._refill.abort(reason, lease_lost=lease_lost)
        self._closing = True

    async def close(self) -> None:
        """Abort the active run and wait until its machine is confirmed off (Ctrl-C, SIGTERM)."""
        self._abort_for_good("the server is shutting down")
        if self._refill is not None:
            await asyncio.shield(self._refill.task)
        await self.states.wait_idle()  # an orphaned machine being stopped at start-up
        if self._scheduling is not None:
            self._scheduling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduling
        await self.provider.aclose()
        self._imaging.shutdown()
        await self.billing.aclose()

    async def wait_idle(self) -> None:
        await self.states.wait_idle()

    # --- what the owner does ---------------------------------------------------------------------

    def refill(self, buckets: list[str] | None = None, trigger: Trigger = "manual") -> Run:
        """Start a run that fills the named buckets (default: all) to max."""
        if self._closing:
            raise RunActive("the server is shutting down")
        if self.states.state != "idle":
            raise RunActive(f"a run is already {self.states.state.replace('_', ' ')}")
        if self.machine.cannot_run is not None:
            raise NothingToDo(self.machine.cannot_run)
        names = buckets or list(self.buckets)
        unknown = [name for name in names if name not in self.buckets]
        if unknown:
            raise ValueError(f"unknown bucket {unknown[0]!r}; buckets are unique and fallback")
        levels = self.levels()
        if reason := unknown_levels({name: levels[name] for name in names}):
            raise NothingToDo(reason)
        targets = {name: max(0, levels[name].max - levels[name].count) for name in names}
        if not any(targets.values()):
            raise NothingToDo(f"{' and '.join(names)} already at max: nothing to generate")
        if trigger == "manual":
            self.scheduler.manual_refill()
        run = Run(trigger=trigger, targets=targets, hourly_cost=self.provider.hourly_rate().amount,
                  bills=self.provider.bills)
        log.info("%s run %s started: %s", trigger, run.id,
                 ", ".join(f"{n} {name}" for name, n in targets.items()))
        self.states.begin(run)
        self._refill = Refill(run, self._context)
        return run

    def abort(self, reason: str = "aborted by the owner") -> Run:
        """Abort the active run; its machine is stopped and images already stored are kept."""
        if self.states.run is None or self._refill is None:
            raise NotRunning("no run is active")
        if self.states.state != "shutting_down":
            self._refill.abort(reason)
        return self.states.run

    def auto_check(self) -> Run | None:
        """Start an automatic run for the buckets below their min, unless today's budget is spent."""
        return self.scheduler.check()
