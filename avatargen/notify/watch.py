"""What the generator's status shows, turned into the owner's events.

The watcher looks at the status every few seconds in the process that runs the generator and compares it
with the last look: a run that ended failed, a pause that began (the budget, failing runs, or any reason the
scheduler gives), images newly held for review, an empty fallback bucket, a storage problem, a machine
not off long after its stop began. Reading the status rather than hooking each place keeps every reason
the status learns (a new pause reason, say) covered, and each message is sent once, by one process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from avatargen.api.money import money
from avatargen.api.wire import LastRun, Status
from avatargen.config import Settings
from avatargen.durations import format_duration

log = logging.getLogger("avatargen.notify")

LOOK_EVERY = 2.0  # seconds between looks at the status
BUDGET_REACHED = "daily budget reached"  # how an automatic run cut by the daily budget ends (its error)
ZERO_GPU = "without its GPU"  # in a run's error when RunPod resumed the pod on a host whose GPU is gone

Notify = Callable[[str, str, str], object]  # kind, title, body


class Watcher:
    """Call `look` with each new status (`run` does, every LOOK_EVERY seconds)."""

    def __init__(self, settings: Settings, status: Callable[[], Status], notify: Notify, *,
                 took_over: bool = False) -> None:
        self._settings = settings
        self._status = status
        self._notify = notify
        self._took_over = took_over
        self._last: Status | None = None
        self._stopping_since: float | None = None
        self._told_not_off = False
        self._failed_in_a_row = 0

    async def run(self, every: float = LOOK_EVERY) -> None:
        if self._took_over:
            self._notify("generator_moved", "avatargen: the generator moved to this process",
                         "Another process or replica took over the generator (the one that ran it stopped, or "
                         "lost its lease). Nothing is lost; if that replica is gone for good, see why it died.")
        while True:
            try:
                self.look(self._status(), time.monotonic())
            except Exception:  # a notice lost must never stop the watching
                log.exception("looking at the status for notifications failed")
            await asyncio.sleep(every)

    def look(self, now: Status, at: float) -> None:
        last = self._last
        self._last = now
        self._machine(now, last, at)
        self._runs(now, last)
        self._pause(now, last)
        self._buckets(now, last)
        self._storage(now, last)

    # --- each kind ---------------------------------------------------------------------------------------

    def _rate(self) -> str:
        rate = self._settings.gpu.hourly_cost
        return f"{money(rate)} an hour"

    def _machine(self, now: Status, last: Status | None, at: float) -> None:
        if last is None and now.state == "shutting_down" and now.run is None:
            self._notify("money", "avatargen: a machine was found running at start-up",
                         f"The GPU machine was {now.machine_state or 'on'} while no run was active (a crash "
                         f"left it on); it bills {self._rate()} until it is off, and it is being stopped now. "
                         "Check in the provider's console that it is off.")
        if now.state != "shutting_down":
            self._stopping_since, self._told_not_off = None, False
            return
        if self._stopping_since is None:
            self._stopping_since = at
        limit = self._settings.gpu.stop_timeout
        if not self._told_not_off and at - self._stopping_since > limit:
            self._told_not_off = True
            self._notify("money", "avatargen: the machine is not confirmed off",
                         f"The GPU machine has been stopping for over {format_duration(limit)} and is "
                         f"{now.machine_state or 'in an unknown state'}; it may still bill {self._rate()}. "
                         "avatargen keeps trying; stop it in the provider's console if it stays on.")

    def _runs(self, now: Status, last: Status | None) -> None:
        ended = now.last_run
        if ended is None or last is None or (last.last_run is not None and last.last_run.run.id == ended.run.id):
            return
        if ended.outcome != "failed":
            self._failed_in_a_row = 0
            if ended.outcome == "aborted" and (ended.error or "").startswith(BUDGET_REACHED):
                self._notify("money", f"avatargen: the daily budget ended run {ended.run.id}",
                             f"The run stopped generating and its machine was shut down: {ended.error}. "
                             "Automatic runs start again once the budget can pay for one (tomorrow at the "
                             "latest); raise gpu.daily_budget, or start a refill by hand, if the buckets "
                             "cannot wait.")
            return
        self._failed_in_a_row += 1
        kind = "money" if ZERO_GPU in (ended.error or "") else "run_failed"
        self._notify(kind, f"avatargen: run {ended.run.id} failed", _failed_text(ended))
        if self._failed_in_a_row == 2 and ended.run.trigger == "auto":
            self._notify("runs_paused", "avatargen: automatic runs keep failing",
                         f"{self._failed_in_a_row} runs in a row failed (the last: {ended.error}). Automatic runs "
                         "now wait longer after each failure, up to a day. Fix the cause (see `avatargen status` "
                         "and the log), then start a refill to try at once.")

    def _pause(self, now: Status, last: Status | None) -> None:
        reason = now.paused_reason
        if not reason or (last is not None and last.paused_reason == reason):
            return
        if "budget" in reason:
            self._notify("money", "avatargen: the daily budget is reached",
                         f"Automatic runs are paused: {reason}. They start again tomorrow; raise "
                         "gpu.daily_budget, or start a refill by hand, if the buckets cannot wait.")
        elif not reason.startswith("the generator runs in another process"):
            self._notify("runs_paused", "avatargen: automatic runs are paused",
                         f"Automatic runs are paused: {reason}. No GPU time is spent on them until this is "
                         "fixed; see `avatargen status`.")

    def _buckets(self, now: Status, last: Status | None) -> None:
        held = sum(level.held for level in now.buckets.values())
        before = None if last is None else sum(level.held for level in last.buckets.values())
        if held and (before is None or held > before):
            self._notify("held", f"avatargen: {held} image(s) wait for review",
                         f"The safety gate held back {held} image(s); they cost GPU time but nobody sees them "
                         "until you approve or delete them in avatargen-tui.")
        fallback = now.buckets.get("fallback")
        was = None if last is None else last.buckets.get("fallback")
        if fallback is not None and fallback.count == 0 and (was is None or was.count > 0):
            unique = now.buckets.get("unique")
            left = f"; {unique.count} unique(s) are left for visitors due one" if unique is not None else ""
            self._notify("bucket_empty", "avatargen: visitors are getting placeholders",
                         f"The fallback bucket is empty{left}. A refill costs about {self._rate()} while it "
                         "runs; start one (`avatargen refill`) if the automatic run does not.")

    def _storage(self, now: Status, last: Status | None) -> None:
        problem = now.cost.ledger_problem
        if problem and (last is None or last.cost.ledger_problem != problem):
            self._notify("storage", "avatargen: the cost ledger cannot be written",
                         f"{problem}. Spend is still counted in memory, but a restart would lose it and the "
                         "budget could be overspent: free the disk or fix Redis.")
        errors = now.visitors
        if errors.errors and (last is None or errors.errors > last.visitors.errors):
            self._notify("storage", "avatargen: visitors hit a storage problem",
                         f"{errors.errors} visitor request(s) got another avatar because of an error; the last: "
                         f"{errors.last_error}. Nothing is billed, but uniques are not served: check the disk "
                         "or Redis.")


def _failed_text(ended: LastRun) -> str:
    run = ended.run
    return (f"Run {run.id} ({run.trigger}) failed: {ended.error or 'no reason given'}. It cost {money(run.cost)} for "
            f"{run.done} stored image(s); its machine was stopped. See `avatargen status` and the log; "
            "automatic runs try again later, less often after each failure.")
