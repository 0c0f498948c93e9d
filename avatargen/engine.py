"""The refill engine: keeps the buckets between min and max while spending as little GPU time as possible.

A run is booting -> generating -> shutting_down -> idle. Whatever happens inside a run (an error, an
abort, a timeout, a bug of ours), the machine is stopped in a `finally` that cannot be skipped, after
all requests have finished or been cancelled, and the stop is retried until it is confirmed: the owner
pays for every minute the machine is not `off`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import random
import signal
import time
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from avatargen.buckets import Bucket
from avatargen.config import ConfigError, PromptSettings, Settings
from avatargen.durations import format_duration
from avatargen.events import EventHub
from avatargen.gpu.base import Provider
from avatargen.imaging import make_avatars
from avatargen.ledger import CostLedger
from avatargen.prompts import compose
from avatargen.retry import backoff_delay
from avatargen.run import Run, State, Step, Trigger, iso
from avatargen.sd import SdBackend, SdError, SdNotReady, make_backend

log = logging.getLogger("avatargen.engine")

STOP_RETRY_MAX = 60.0
PROGRESS_POLL = 0.5


class RunActive(Exception):
    """A run is already under way."""


class NothingToDo(Exception):
    """Every bucket asked for is already at its max: booting a machine would only cost money."""


class NotRunning(Exception):
    """There is no run to abort."""


class RunFailed(Exception):
    """The run cannot go on; the message is what the owner reads as the run's error."""


def _innermost(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups from the request workers."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def bucket_levels(settings: Settings, buckets: Mapping[str, Bucket]) -> dict[str, dict[str, int]]:
    """Each bucket's count against its min and max, as status and events report them."""
    return {name: {"count": buckets[name].count(), "min": conf.min, "max": conf.max}
            for name, conf in settings.buckets.items()}


def cost_summary(settings: Settings, ledger: CostLedger) -> dict[str, float]:
    spend = ledger.spend()
    return {
        "today": round(spend.today, 4),
        "month": round(spend.month, 4),
        "daily_budget": settings.gpu.daily_budget,
        "hourly_cost": settings.gpu.hourly_cost,
        "billed_seconds_today": round(spend.billed_seconds_today, 1),
        "billed_seconds_month": round(spend.billed_seconds_month, 1),
    }


def _leave_interrupts_to_the_server() -> None:
    """In the imaging process: Ctrl-C reaches the whole process group, but it is the server's to handle
    (it aborts the run and stops the machine, then shuts this process down)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class _Failures:
    """Failed image requests, shared by a run's request workers."""

    consecutive: int = 0
    last: str = ""


async def _uncancellable(work: Coroutine[Any, Any, None]) -> None:
    """Finish work even when the caller is cancelled meanwhile (then pass the cancellation on).

    Publishing runs in a thread that an abort cannot stop: without this, an image could land in the bucket
    after the run was counted and reported as over.
    """
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


class RefillEngine:
    def __init__(
        self,
        settings: Settings,
        buckets: Mapping[str, Bucket],
        provider: Provider,
        ledger: CostLedger,
        events: EventHub,
    ) -> None:
        self.settings = settings
        self.buckets = buckets
        self.provider = provider
        self.ledger = ledger
        self.events = events
        self.prompts: PromptSettings = settings.prompts
        self._rng = random.Random()
        self.run: Run | None = None
        self.last_run: Run | None = None
        self._state: State = "idle"
        self._task: asyncio.Task[None] | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._auto_failures = 0
        self._abort_reason: str | None = None
        self._closing = False
        self._imaging: ProcessPoolExecutor | None = None
        self.next_check_at: float | None = None
        self.paused_reason: str | None = None
        self.machine_state: str | None = None

    # --- what the owner sees ---------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.run.state if self.run is not None else self._state

    def levels(self) -> dict[str, dict[str, int]]:
        return bucket_levels(self.settings, self.buckets)

    def _runs(self) -> dict[str, Any]:
        """The state and the runs, as both the status and `state` events report them."""
        return {
            "state": self.state,
            "run": self.run.to_dict() if self.run else None,
            "last_run": self.last_run.to_dict() if self.last_run else None,
        }

    def status(self) -> dict[str, Any]:
        return {
            **self._runs(),
            "buckets": self.levels(),
            "gpu": {"provider": self.provider.name, "machine_state": self.machine_state},
            "cost": cost_summary(self.settings, self.ledger),
            "next_check_at": iso(self.next_check_at),
            "paused_reason": self.paused_reason,
        }

    def _publish_state(self) -> None:
        self.events.publish("state", {**self._runs(), "machine_state": self.machine_state})

    def _publish_progress(self, run: Run) -> None:
        self.events.publish("progress", run.to_dict())

    def _on_machine_state(self, state: str) -> None:
        self.machine_state = state
        if self.run is not None:
            self.run.machine_state = state
        log.info("machine is %s", state)
        self._publish_state()

    # --- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Look for a machine a crash left running (stopped in the background before anything else), then
        check the buckets now and every check_every."""
        orphaned = await self._find_orphan()
        self._scheduler = asyncio.create_task(self._schedule(orphaned), name="refill-scheduler")

    async def close(self) -> None:
        """Abort the active run and wait until its machine is confirmed off (Ctrl-C, SIGTERM)."""
        if self.run is not None and self.run.state != "shutting_down":
            self._abort("the server is shutting down")
        self._closing = True
        if self._task is not None:
            await asyncio.shield(self._task)
        await self._idle.wait()  # an orphaned machine being stopped at start-up
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
        await self.provider.aclose()
        if self._imaging is not None:
            self._imaging.shutdown(cancel_futures=True)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # --- what the owner does ---------------------------------------------------------------------

    def refill(self, buckets: list[str] | None = None, trigger: Trigger = "manual") -> Run:
        """Start a run that fills the named buckets (default: all) to max."""
        if self._closing:
            raise RunActive("the server is shutting down")
        if self.run is not None or self._state != "idle":
            raise RunActive(f"a run is already {self.state.replace('_', ' ')}")
        names = buckets or list(self.buckets)
        unknown = [name for name in names if name not in self.buckets]
        if unknown:
            raise ValueError(f"unknown bucket {unknown[0]!r}; buckets are unique and fallback")
        levels = self.levels()
        targets = {name: max(0, levels[name]["max"] - levels[name]["count"]) for name in names}
        if not any(targets.values()):
            raise NothingToDo(f"{' and '.join(names)} already at max: nothing to generate")
        if trigger == "manual":
            self._auto_failures = 0
        run = Run(trigger=trigger, targets=targets, hourly_cost=self.settings.gpu.hourly_cost,
                  bills=self.provider.bills)
        self.run = run
        self._idle.clear()
        self._abort_reason = None
        log.info("%s run %s started: %s", trigger, run.id,
                 ", ".join(f"{n} {name}" for name, n in targets.items()))
        self._task = asyncio.create_task(self._execute(run), name=f"run-{run.id}")
        self._publish_state()
        return run

    def abort(self, reason: str = "aborted by the owner") -> Run:
        """Abort the active run; its machine is stopped and images already stored are kept."""
        if self.run is None:
            raise NotRunning("no run is active")
        if self.run.state != "shutting_down":
            self._abort(reason)
        return self.run

    def _abort(self, reason: str) -> None:
        self._abort_reason = reason
        log.warning("aborting run %s: %s", self.run.id if self.run else "-", reason)
        if self._task is not None:
            self._task.cancel()

    # --- the run ---------------------------------------------------------------------------------

    async def _execute(self, run: Run) -> None:
        sd: SdBackend | None = None
        run_limit = asyncio.timeout(self.settings.generator.max_run_duration)
        try:
            try:
                async with run_limit:
                    sd = await self._boot(run)
                    await self._generate(run, sd)
                run.outcome = "completed"
            except asyncio.CancelledError:
                if self._abort_reason is None:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                run.outcome, run.error = "aborted", self._abort_reason
            except Exception as exc:  # anything at all: the machine must still be stopped
                cause = _innermost(exc)
                run.outcome = "failed"
                if isinstance(cause, TimeoutError) and run_limit.expired():
                    limit = format_duration(self.settings.generator.max_run_duration)
                    run.error = f"the run exceeded max_run_duration ({limit})"
                else:
                    run.error = str(cause) or type(cause).__name__
                    if not isinstance(cause, RunFailed | SdError):
                        log.error("run %s failed", run.id, exc_info=cause)
        finally:
            if run.outcome is None:
                run.outcome, run.error = "aborted", "cancelled"
            await asyncio.shield(self._shut_down(run, sd))

    async def _boot(self, run: Run) -> SdBackend:
        try:
            connect = make_backend(self.settings)
        except ConfigError as exc:
            raise RunFailed(str(exc)) from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.gpu.ready_timeout
        if run.bills:
            run.billing_since = time.time()
            self.ledger.open(run.id, run.billing_since)
        self._publish_state()
        await self.provider.start()
        await self.provider.wait_ready(max(0.0, deadline - loop.time()), self._on_machine_state)
        sd = connect(self.provider.sd_url())
        log.info("machine ready; waiting for the Stable Diffusion API (%s)", sd.name)
        while True:
            try:
                await sd.probe(self.settings.sd.checkpoint)
                break
            except SdNotReady as exc:
                if loop.time() >= deadline:
                    raise RunFailed(
                        f"the SD server ({sd.name}) was not ready within ready_timeout "
                        f"({format_duration(self.settings.gpu.ready_timeout)}): {exc}"
                    ) from None
                await asyncio.sleep(self.settings.gpu.poll_every)
            except SdError as exc:
                raise RunFailed(str(exc)) from None
        return sd

    async def _generate(self, run: Run, sd: SdBackend) -> None:
        run.state = "generating"
        run.generating_since = time.time()
        self._publish_state()
        log.info("generating %d images", run.total)
        unassigned = dict(run.targets)
        failures = _Failures()

        def reserve() -> tuple[str, int] | None:
            for name, missing in unassigned.items():
                if missing > 0:
                    count = min(self.settings.sd.batch_size, missing)
                    unassigned[name] -= count
                    return name, count
            return None

        async def worker() -> None:
            while (job := reserve()) is not None:
                await self._fill(run, sd, *job, failures)

        poller = asyncio.create_task(self._poll_step(run, sd))
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.settings.generator.concurrency):
                    group.create_task(worker())
        finally:
            poller.cancel()
            run.step = None
        if run.done == 0 and run.failed > 0:
            raise RunFailed(f"no image could be made; last error: {failures.last}")

    async def _fill(self, run: Run, sd: SdBackend, bucket_name: str, count: int, failures: _Failures) -> None:
        """One request of `count` images for a bucket, retried with backoff; never more than reserved."""
        retries = self.settings.generator.image_retries
        for attempt in range(retries + 1):
            prompt = compose(self.prompts, self._rng)
            run.current_prompt = prompt.text
            started = time.monotonic()
            try:
                result = await sd.generate(prompt.text, count=count)
                avatars = await self._make_avatars(bucket_name, result.images[:count])
            except (SdError, ValueError) as exc:
                failures.consecutive += 1
                failures.last = str(exc)
                log.warning("image request failed (%d in a row): %s", failures.consecutive, exc)
                if failures.consecutive >= self.settings.generator.max_consecutive_failures:
                    run.failed += count
                    raise RunFailed(f"{failures.consecutive} image requests failed in a row; last error: {exc}"
                                    ) from None
                if attempt < retries:
                    await asyncio.sleep(backoff_delay(attempt, base=0.5, cap=30.0))
                continue
            failures.consecutive = 0
            seconds = (time.monotonic() - started) / max(1, len(avatars))
            for index, (webp, framed) in enumerate(avatars):
                seed = result.seeds[index] if index < len(result.seeds) else -1
                await _uncancellable(self._store(run, bucket_name, webp, framed, prompt.text, seed, seconds,
                                                 result.metadata))
            run.failed += count - len(avatars)
            return
        run.failed += count
        self._publish_progress(run)

    async def _make_avatars(self, bucket_name: str, images: Sequence[str | bytes]
                            ) -> list[tuple[bytes, bytes | None]]:
        """Decode, resize, encode (and frame, for uniques) in the imaging process: CPU work that would
        otherwise hold the GIL against the event loop serving visitors."""
        if self._imaging is None:
            self._imaging = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_leave_interrupts_to_the_server)
        generator = self.settings.generator
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._imaging, make_avatars, images, generator.image_size, generator.webp_quality,
                self.buckets[bucket_name].prepare)
        except BrokenProcessPool:
            self._imaging = None  # the next request starts a fresh one
            raise RunFailed("the imaging process died") from None

    async def _store(self, run: Run, bucket_name: str, webp: bytes, framed: bytes | None, prompt: str, seed: int,
                     seconds: float, generated: Mapping[str, Any]) -> None:
        sd = self.settings.sd
        metadata = {
            "prompt": prompt,
            "seed": seed,
            "sampler": sd.sampler,
            "steps": sd.steps,
            "cfg_scale": sd.cfg_scale,
            "size": self.settings.generator.image_size,
            "generated_size": [sd.width, sd.height],
            "provider": self.provider.name,
            "generation_seconds": round(seconds, 3),
            "run_id": run.id,
            **generated,  # the backend's name, the model, ComfyUI's workflow
        }
        bucket = self.buckets[bucket_name]
        record = await asyncio.to_thread(bucket.publish, webp, metadata, prepared=framed)
        run.done += 1
        self.events.publish("image", {
            "id": record.id,
            "bucket": bucket_name,
            "prompt": prompt,
            "created_at": record.metadata.get("created_at"),
            "url": f"/admin/api/images/{bucket_name}/{record.id}",
            "metadata": record.metadata,
            "buckets": self.levels(),
        })
        self._publish_progress(run)

    async def _poll_step(self, run: Run, sd: SdBackend) -> None:
        """The SD job's own step progress, for the live progress bar (failures here are harmless)."""
        while True:
            await asyncio.sleep(PROGRESS_POLL)
            with contextlib.suppress(Exception):  # only the live progress bar depends on it
                progress = await sd.progress()
                run.step = Step(progress.sampling_step, progress.sampling_steps, round(progress.progress, 3))
                self._publish_progress(run)

    async def _shut_down(self, run: Run, sd: SdBackend | None) -> None:
        """Stop the machine and confirm it is off, retrying for as long as it takes."""
        run.state = "shutting_down"
        self._publish_state()
        if sd is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await sd.cancel()  # an always-on GPU stops computing what nobody will store
            with contextlib.suppress(Exception):
                await sd.aclose()
        await self._stop_machine()
        if run.bills:
            run.billing_until = time.time()
            self.ledger.close(run.id, run.billing_until)
        run.ended_at = time.time()
        run.state = "idle"
        self.last_run, self.run = run, None
        if run.trigger == "auto":
            self._auto_failures = self._auto_failures + 1 if run.outcome == "failed" else 0
            self.next_check_at = time.time() + self._check_delay()
            self._wake.set()
        level = logging.INFO if run.outcome == "completed" else logging.WARNING
        log.log(level, "run %s %s: %d stored, %d failed, %s billed, cost %.4f%s", run.id, run.outcome,
                run.done, run.failed, format_duration(run.billed_seconds()),
                run.cost(), f" ({run.error})" if run.error else "")
        self._idle.set()
        self._publish_state()

    async def _stop_machine(self) -> None:
        for attempt in itertools.count():
            try:
                await self.provider.stop(self._on_machine_state)
                return
            except Exception as exc:
                delay = backoff_delay(attempt, base=1.0, cap=STOP_RETRY_MAX)
                log.error("stopping the machine failed, retrying in %s: %s", format_duration(delay), exc)
                await asyncio.sleep(delay)

    # --- automatic checks ------------------------------------------------------------------------

    def _check_delay(self) -> float:
        every = self.settings.generator.check_every
        return min(every * 2**self._auto_failures, every * 24)

    async def _schedule(self, orphaned: bool) -> None:
        if orphaned:
            await self._stop_orphan()
        self.next_check_at = time.time()
        while True:
            wait = self.next_check_at - time.time()
            if wait > 0:
                self._wake.clear()
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow close()'s cancel when the
                # wake-up and the cancel arrive together, and the scheduler would never end.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            self.next_check_at = time.time() + self._check_delay()
            if self.run is None:
                try:
                    self.auto_check()
                except Exception:
                    log.exception("the automatic check failed")

    def auto_check(self) -> Run | None:
        """Start an automatic run for the buckets below their min, unless today's budget is spent."""
        due = [name for name, level in self.levels().items() if level["min"] > 0 and level["count"] < level["min"]]
        if not due:
            self.paused_reason = None
            return None
        spend = self.ledger.spend()
        budget = self.settings.gpu.daily_budget
        if self.provider.bills and spend.today >= budget:
            reason = f"daily budget reached: {spend.today:.2f} of {budget:.2f} spent today"
            if reason != self.paused_reason:
                log.warning("automatic refill paused, %s", reason)
            self.paused_reason = reason
            self._publish_state()
            return None
        self.paused_reason = None
        return self.refill(due, trigger="auto")

    async def _find_orphan(self) -> bool:
        """True when the machine is on while no run is active: a crash left it running."""
        try:
            self.machine_state = await self.provider.machine_state()
        except Exception as exc:
            log.error("cannot read the machine's state at start-up: %s", exc)
            return False
        if not self.provider.bills:
            return False  # a machine that is always on is no orphan
        if self.machine_state == "off":
            self._close_interrupted_billing()
            return False
        log.warning("the machine is %s but no run is active: stopping it", self.machine_state)
        self._state = "shutting_down"  # no run can start until it is off
        self._idle.clear()
        return True

    async def _stop_orphan(self) -> None:
        self._publish_state()
        await self._stop_machine()
        self._close_interrupted_billing()
        self._state = "idle"
        self._idle.set()
        self._publish_state()

    def _close_interrupted_billing(self) -> None:
        closed = self.ledger.close_open()
        if closed:
            log.warning("billed time of interrupted run(s) %s closed at the confirmed stop", ", ".join(closed))
