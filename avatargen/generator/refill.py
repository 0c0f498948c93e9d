"""One refill run, from the start request to the confirmed stop: booting -> generating -> shutting_down.

Whatever happens inside a run (an error, an abort, a timeout, a bug of ours), the machine is stopped in a
`finally` that cannot be skipped, after all requests have finished or been cancelled, and the stop is
retried until it is confirmed: the owner pays for every minute the machine is not `off`.

An automatic run also keeps within the daily budget (`avatargen.generator.budget`): it sends no image
request that could not be paid for with the stop after it, and it is cut, like an abort, once its spend
and the stop would go over the budget (checked every `gpu.poll_every`); it ends "aborted" with the reason
"daily budget reached: ...".

While it generates, the run watches the SD job computing: its step for the progress bar, and a small live
preview of the image for the owner's panel (`preview` events, at least `generator.preview_every` apart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from avatargen.api.wire import BucketLevel, ImageHeld, NewImage, Preview, Step, encode_event
from avatargen.config import ConfigError, PromptSettings, Settings
from avatargen.durations import format_duration
from avatargen.events import EventHub
from avatargen.generator.billing import Billing
from avatargen.generator.budget import Budget
from avatargen.generator.errors import RunFailed
from avatargen.generator.imaging_pool import Avatar, ImagingPool
from avatargen.generator.machine import Machine
from avatargen.generator.states import States
from avatargen.generator.views import image_info
from avatargen.gpu.base import MachineUnusable, Serverless
from avatargen.metrics import IMAGES_GENERATED
from avatargen.prompts import compose
from avatargen.retry import backoff_delay
from avatargen.run import Run
from avatargen.sd import SdBackend, SdError, SdNotReady, SdProgress, make_backend
from avatargen.storage.errors import LeaseLost
from avatargen.storage.protocols import StoredBucket

log = logging.getLogger("avatargen.generator")

PROGRESS_POLL = 0.5


def _innermost(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups from the request workers."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


@dataclass(frozen=True)
class _Job:
    """A txt2img request sent and not answered yet."""

    bucket: str
    prompt: str


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


@dataclass
class RunContext:
    """What a run works with, owned by the generator and shared by its runs."""

    settings: Settings
    buckets: Mapping[str, StoredBucket]
    machine: Machine
    states: States
    billing: Billing
    budget: Budget
    imaging: ImagingPool
    events: EventHub
    prompts: Callable[[], PromptSettings]  # the owner may change them between two prompts
    levels: Callable[[], dict[str, BucketLevel]]
    ended: Callable[[Run], None]  # told once the machine is confirmed off, before the generator is idle


class Refill:
    """A run under way: `task` does it, `abort` ends it early (the machine is stopped all the same)."""

    def __init__(self, run: Run, context: RunContext) -> None:
        self.run = run
        self._context = context
        self._settings = context.settings
        self._rng = random.Random()
        self._abort_reason: str | None = None
        self._budget_reason: str | None = None  # why the run sends no more image requests: the daily budget
        # This process lost the generator lease: the SD server is the new holder's too, and is left alone.
        self._lease_lost = False
        self._started = False
        self._jobs: list[_Job] = []  # in the order they were sent: the SD server computes them in that order
        self.task = asyncio.create_task(self._execute(), name=f"run-{run.id}")

    def abort(self, reason: str, *, lease_lost: bool = False) -> None:
        self._abort_reason = reason
        self._lease_lost = self._lease_lost or lease_lost
        log.warning("aborting run %s: %s", self.run.id, reason)
        if self._started:  # a task cancelled before its first step would skip the `finally` that stops the machine
            self.task.cancel()

    async def _execute(self) -> None:
        self._started = True
        run = self.run
        sd: SdBackend | None = None
        run_limit = asyncio.timeout(self._settings.generator.max_run_duration)
        budget_watch = asyncio.create_task(self._watch_budget()) if self._budgeted() else None
        try:
            try:
                if self._abort_reason is not None:
                    raise asyncio.CancelledError
                async with run_limit:
                    await self._check_gate()
                    sd = await self._boot()
                    await self._generate(sd)
                run.outcome = "completed"
                if self._budget_reason is not None:  # it stopped short of its targets
                    run.outcome, run.error = "aborted", self._budget_reason
            except asyncio.CancelledError:
                if self._abort_reason is None:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                run.outcome, run.error = "aborted", self._abort_reason
            except Exception as exc:  # anything at all: the machine must still be stopped
                cause = _innermost(exc)
                run.outcome = "failed"
                if isinstance(cause, TimeoutError) and run_limit.expired():
                    limit = format_duration(self._settings.generator.max_run_duration)
                    run.error = f"the run exceeded max_run_duration ({limit})"
                else:
                    run.error = str(cause) or type(cause).__name__
                    if isinstance(cause, MachineUnusable):  # a pod terminated, say: no run will start again
                        self._context.machine.found_unusable(cause)
                    self._lease_lost = self._lease_lost or isinstance(cause, LeaseLost)
                    if not isinstance(cause, RunFailed | SdError | LeaseLost):
                        log.error("run %s failed", run.id, exc_info=cause)
        finally:
            if budget_watch is not None:
                budget_watch.cancel()
            if run.outcome is None:
                run.outcome, run.error = "aborted", "cancelled"
            await asyncio.shield(self._shut_down(sd))

    def _budgeted(self) -> bool:
        """Whether the daily budget may cut this run: an automatic one that bills (a manual run is the owner's)."""
        return self.run.trigger == "auto" and self.run.bills

    async def _watch_budget(self) -> None:
        """Cut the run, as an abort would, once its spend and the stop would go over the daily budget."""
        every = self._settings.gpu.poll_every
        while True:
            await asyncio.sleep(every)
            if (reason := self._context.budget.stop_now(self.run.hourly_cost, every)) is not None:
                self.abort(reason)
                return

    def _may_send(self) -> bool:
        """Whether another image request fits in the daily budget: it and those before it answered (the SD
        server computes them in turn), then the stop. Once one does not, none is sent again."""
        if self._budget_reason is None and self._budgeted():
            ahead = (len(self._jobs) + 1) * self._context.budget.seconds("request")
            self._budget_reason = self._context.budget.stop_now(self.run.hourly_cost, ahead)
            if self._budget_reason is not None:
                log.warning("run %s sends no more image requests: %s", self.run.id, self._budget_reason)
        return self._budget_reason is None

    async def _check_gate(self) -> None:
        """With the safety gate on, load its detector before the machine boots: a gate that cannot run
        would hold back every image made, so the run fails at once, with nothing billed."""
        if self._settings.review.enabled and (problem := await self._context.imaging.gate_problem()):
            raise RunFailed(f"the safety gate cannot run, so the machine was not started: {problem}")

    async def _boot(self) -> SdBackend:
        provider = self._context.machine.provider
        try:  # before the machine is paid for: a broken workflow costs nothing
            connect = make_backend(self._settings, provider)
        except ConfigError as exc:
            raise RunFailed(str(exc)) from None
        run, gpu = self.run, self._settings.gpu
        loop = asyncio.get_running_loop()
        deadline = loop.time() + gpu.ready_timeout
        if run.bills:  # opened now, so that a crash while the start is retried leaves the time billed
            run.billing_since = time.time()
            self._context.billing.start(run.id, run.billing_since, run.hourly_cost)
        accepted = await provider.start()
        if run.bills:  # the provider bills from the start it accepted: refused attempts started nothing
            run.billing_since = accepted
            self._context.billing.accepted(run.id, run.billing_since)
        await provider.wait_ready(max(0.0, deadline - loop.time()), self._context.machine.observe)
        sd = connect(provider.sd_url())
        log.info("machine ready; waiting for the Stable Diffusion API (%s)", sd.name)
        while True:
            try:
                await sd.probe(self._settings.sd.checkpoint)
                if run.billing_since is not None:
                    self._context.budget.saw("boot", time.time() - run.billing_since)
                break
            except SdNotReady as exc:
                if loop.time() >= deadline:
                    raise RunFailed(
                        f"the SD server ({sd.name}) was not ready within ready_timeout "
                        f"({format_duration(gpu.ready_timeout)}): {exc}"
                    ) from None
                await asyncio.sleep(gpu.poll_every)
            except SdError as exc:
                raise RunFailed(str(exc)) from None
        return sd

    async def _generate(self, sd: SdBackend) -> None:
        run = self.run
        self._context.states.move("generating")
        run.generating_since = time.time()
        log.info("generating %d images", run.total)
        unassigned = dict(run.targets)
        failures = _Failures()

        def reserve() -> tuple[str, int] | None:
            for name, missing in unassigned.items():
                if missing > 0:
                    if not self._may_send():
                        return None
                    count = min(self._settings.sd.batch_size, missing)
                    unassigned[name] -= count
                    return name, count
            return None

        async def worker() -> None:
            while (job := reserve()) is not None:
                await self._fill(sd, *job, failures)

        pollers = [asyncio.create_task(self._poll_step(sd))]
        if (every := self._settings.generator.preview_every) > 0:
            pollers.append(asyncio.create_task(self._poll_preview(sd, every)))
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self._settings.generator.concurrency):
                    group.create_task(worker())
        finally:
            for poller in pollers:
                poller.cancel()
            run.step = None
        if run.done + run.held == 0 and run.failed > 0:
            raise RunFailed(f"no image could be made; last error: {failures.last}")
        if run.mostly_held:  # a problem for the owner, not a success: see the scheduler's pause
            raise RunFailed(f"the safety gate held back {run.held} of the {run.done + run.held} images made; "
                            "review them (GET /admin/api/images?held=true)")

    async def _fill(self, sd: SdBackend, bucket_name: str, count: int, failures: _Failures) -> None:
        """One request of `count` images for a bucket, retried with backoff; never more than reserved."""
        run, generator = self.run, self._settings.generator
        for attempt in range(generator.image_retries + 1):
            prompt = compose(self._context.prompts(), self._rng)
            run.current_prompt = prompt.text
            started = time.monotonic()
            try:
                with self._in_flight(_Job(bucket_name, prompt.text)):
                    result = await sd.generate(prompt.text, count=count)
                avatars = await self._context.imaging.make_avatars(bucket_name, result.images[:count])
            except (SdError, ValueError) as exc:
                if isinstance(exc, SdError) and not exc.retryable:  # refused as asked (a validation 400): final
                    run.failed += count
                    raise RunFailed(f"{exc}; not asked again: the same request cannot succeed") from None
                failures.consecutive += 1
                failures.last = str(exc)
                log.warning("image request failed (%d in a row): %s", failures.consecutive, exc)
                if failures.consecutive >= generator.max_consecutive_failures:
                    self._failed(bucket_name, count)
                    raise RunFailed(f"{failures.consecutive} image requests failed in a row; last error: {exc}"
                                    ) from None
                if attempt < generator.image_retries:
                    await asyncio.sleep(backoff_delay(attempt, base=0.5, cap=30.0))
                continue
            failures.consecutive = 0
            self._context.budget.saw("request", time.monotonic() - started)
            seconds = (time.monotonic() - started) / max(1, len(avatars))
            for index, avatar in enumerate(avatars):
                seed = result.seeds[index] if index < len(result.seeds) else -1
                await _uncancellable(self._store(bucket_name, avatar, prompt.text, seed, seconds, result.metadata))
            self._failed(bucket_name, count - len(avatars))
            self._stop_if_the_gate_failed(avatars)
            return
        self._failed(bucket_name, count)
        self._publish_progress()

    def _failed(self, bucket_name: str, count: int) -> None:
        """`count` images of a request for the bucket could not be made."""
        self.run.failed += count
        IMAGES_GENERATED.labels(bucket_name, "failed").inc(count)

    def _stop_if_the_gate_failed(self, avatars: list[Avatar]) -> None:
        """A gate that failed on a batch (its detector raised or crashed) would fail on the next one too:
        the images are held, and the run ends rather than pay for more images nobody can publish."""
        problems = [avatar.verdict.gate_failed for avatar in avatars if avatar.verdict and avatar.verdict.gate_failed]
        if problems:
            raise RunFailed(f"the safety gate failed ({problems[0]}); the run stopped, "
                            f"{self.run.held} image(s) held back for review")

    async def _store(self, bucket_name: str, avatar: Avatar, prompt: str, seed: int, seconds: float,
                     generated: Mapping[str, Any]) -> None:
        sd = self._settings.sd
        metadata = {
            "prompt": prompt,
            "seed": seed,
            "sampler": sd.sampler,
            "steps": sd.steps,
            "cfg_scale": sd.cfg_scale,
            "size": self._settings.generator.image_size,
            "generated_size": [sd.width, sd.height],
            "provider": self._context.machine.provider.name,
            "generation_seconds": round(seconds, 3),
            "run_id": self.run.id,
            **generated,  # the SD backend's name ("a1111", "comfyui"), the model, ComfyUI's workflow
        }
        bucket = self._context.buckets[bucket_name]
        if avatar.verdict is not None:
            metadata["review"] = avatar.verdict.to_dict()
        if avatar.held:
            record = await bucket.hold(avatar.webp, metadata)
            self.run.held += 1
            IMAGES_GENERATED.labels(bucket_name, "held").inc()
            log.info("image %s of the %s bucket held back for review: %s", record.id, bucket_name, avatar.verdict)
            event: NewImage | ImageHeld = ImageHeld(image_info(record), self._context.levels())
        else:
            record = await bucket.publish(avatar.webp, metadata, prepared=avatar.framed)
            self.run.stored_image()
            IMAGES_GENERATED.labels(bucket_name, "stored").inc()
            if self.run.bills:
                self._context.billing.count_image(self.run.id)
                self._bill_worker_time()
            event = NewImage(image_info(record), self._context.levels())
        self._context.events.publish(*encode_event(event))
        self._publish_progress()

    def _bill_worker_time(self) -> None:
        """A serverless run is billed its workers' time, not its own: spread over the run's time so far, that
        is a rate (higher than one worker's with several working at once, far lower while jobs wait)."""
        provider, run = self._context.machine.provider, self.run
        if not isinstance(provider, Serverless) or run.billing_since is None:
            return
        elapsed = max(1e-3, (run.billing_until or time.time()) - run.billing_since)  # a run may take under 1 s
        run.hourly_cost = provider.hourly_rate().amount * provider.worker_seconds() / elapsed
        self._context.billing.reprice(run.id, run.hourly_cost)

    def _publish_progress(self) -> None:
        self._context.events.publish(*encode_event(self.run.view()))

    @contextlib.contextmanager
    def _in_flight(self, job: _Job) -> Iterator[None]:
        self._jobs.append(job)
        try:
            yield
        finally:
            self._jobs.remove(job)

    async def _poll_step(self, sd: SdBackend) -> None:
        """The SD job's own step progress, for the live progress bar (failures here are harmless)."""
        while True:
            await asyncio.sleep(PROGRESS_POLL)
            with contextlib.suppress(Exception):  # only the live progress bar depends on it
                progress = await sd.progress()
                self.run.step = Step(progress.sampling_step, progress.sampling_steps, round(progress.progress, 3),
                                     progress.node)
                self._publish_progress()

    async def _poll_preview(self, sd: SdBackend, every: float) -> None:
        """The live preview of the job computing, sent on when it is a new one, `every` seconds after the
        last one was sent (and made small). A try that sends nothing (the SD server has no newer picture yet,
        or a job ended meanwhile and whose picture it is cannot be told) is followed by another half a
        period later: each try may fetch a full-size image. Failures here are harmless: only the owner's
        panel depends on them."""
        shown: bytes | None = None
        wait = every
        while True:
            await asyncio.sleep(wait)
            wait = every / 2
            with contextlib.suppress(Exception):
                job = self._jobs[0] if self._jobs else None
                progress = await sd.progress(preview=True)
                if job is None or not self._jobs or self._jobs[0] is not job:
                    continue
                if progress.preview is not None and progress.preview != shown:
                    shown = progress.preview
                    await self._publish_preview(job, progress, progress.preview)
                    wait = every

    async def _publish_preview(self, job: _Job, progress: SdProgress, image: bytes) -> None:
        small = await self._context.imaging.preview(image)
        self._context.events.publish(*encode_event(Preview(
            self.run.id, job.bucket, job.prompt, progress.sampling_step, progress.sampling_steps, "image/webp", small)))

    async def _shut_down(self, sd: SdBackend | None) -> None:
        """Stop the machine and confirm it is off, retrying for as long as it takes; then back to idle."""
        run = self.run
        stopping_since = time.time()
        self._context.states.move("shutting_down")
        if sd is not None:
            if not self._lease_lost:  # else what the SD server computes is the new holder's
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await sd.cancel()  # an always-on GPU stops computing what nobody will store
            with contextlib.suppress(Exception):
                await sd.aclose()
        await self._context.machine.stop()
        if run.bills:
            run.billing_until = time.time()
            self._context.budget.saw("stop", run.billing_until - stopping_since)
            self._bill_worker_time()
            self._context.billing.stop(run.id, run.billing_until)
        run.ended_at = time.time()
        self._context.ended(run)
        level = logging.INFO if run.outcome == "completed" else logging.WARNING
        log.log(level, "run %s %s: %d images stored, %d held back, %d failed, %s billed, cost %.4f%s", run.id,
                run.outcome, run.done, run.held, run.failed, format_duration(run.billed_seconds()),
                run.cost(), f" ({run.error})" if run.error else "")
        self._context.states.move("idle")
