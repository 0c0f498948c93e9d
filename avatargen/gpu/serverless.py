"""RunPod Serverless as a provider: no machine to start or stop, jobs sent to a queue-based endpoint.

A run "boots" by asking the endpoint's `/health` (the key and the endpoint id are right), then sends each
image request as a job (`avatargen.sd.serverless`), at most `max_in_flight` queued or running at once.
Its machine state reads as the endpoint's phase for the run: "waiting for a worker" while our jobs are
IN_QUEUE (a cold start happens there), "generating" while one is IN_PROGRESS. Stopping cancels every job
of ours still out and purges the queue; a journal in the data folder (`avatargen.journal.JobJournal`)
lets the next start do the same for jobs a killed server left behind.

The cost: `gpu.hourly_cost` is the price of an hour of one worker of the endpoint's GPU (RunPod's price
per second times 3600); the run is billed the worker time `WorkerTime` estimates, not its wall-clock
time. Only worker-comfyui workers are supported: the job's input is the ComfyUI graph avatargen builds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avatargen.gpu.base import OFF, READY, HourlyRate, MachineError, MachineUnusable
from avatargen.gpu.serverless_api import (
    CANCELLED,
    ENDED,
    JOURNAL,
    QUEUED,
    RUNNING,
    Health,
    ServerlessClient,
    ServerlessError,
    WorkerTime,
)
from avatargen.journal import JobJournal

if TYPE_CHECKING:
    from avatargen.config import Settings
    from avatargen.sd.base import SdBackend

UNREADABLE = "its jobs, if any, are purged with the queue at the next stop"  # for the journal's log line
log = logging.getLogger("avatargen.gpu.serverless")

WAITING = "waiting for a worker"
GENERATING = "generating"
CANCELLING = "cancelling jobs"
LEFT_OVER = "jobs left by an earlier run"
BILLING_BASIS = ("estimate: per worker, from its first job's start less that job's delayTime (its cold start) to "
                 "its last job's end as seen here, plus the endpoint's idle timeout, rounded up to the second, at "
                 "gpu.hourly_cost per worker hour; RunPod's invoice is the truth")


class Endpoint:
    """What the provider and the SD backend of a run share: the API, the journal, the jobs in flight."""

    def __init__(self, client: ServerlessClient, journal: JobJournal, *, max_in_flight: int, poll_every: float,
                 queue_timeout: float, idle_timeout: float) -> None:
        self.client = client
        self.journal = journal
        self.max_in_flight = max_in_flight
        self.poll_every = poll_every
        self.queue_timeout = queue_timeout
        self.slots = asyncio.Semaphore(max_in_flight)
        self.jobs: dict[str, str] = {}  # ours in flight -> the status last seen
        self.worker_time = WorkerTime(idle_timeout)
        self.idle_timeout = idle_timeout
        self.health: Health | None = None
        self.observe: Callable[[str], None] | None = None  # the generator's ear for machine states
        self.stopping = False

    @property
    def phase(self) -> str:
        if self.stopping:
            return CANCELLING
        states = set(self.jobs.values())
        if RUNNING in states:
            return GENERATING
        return WAITING if QUEUED in states else READY

    def seen(self, job_id: str, status: str) -> None:
        """A status read for one of our jobs: the phase may have changed."""
        if status in ENDED:
            self.jobs.pop(job_id, None)
        else:
            self.jobs[job_id] = status
        if self.observe is not None:
            self.observe(self.phase)

    def finished(self, status: dict[str, Any]) -> None:
        """A job of ours ended: its worker time is counted, and it is struck off the journal."""
        job_id = str(status.get("id"))
        self.worker_time.add(status)
        self.journal.ended(job_id)
        self.seen(job_id, str(status.get("status")))

    async def read_health(self) -> Health:
        self.health = Health.of(await self.client.health())
        return self.health

    async def cancel_all(self) -> int:
        """Cancel every job of ours still out (this run's and any a killed server left), purge the queue, and
        count what the cancelled jobs ran; the number of jobs that were cancelled."""
        cancelled = 0
        for job_id in list(dict.fromkeys([*self.jobs, *self.journal.job_ids])):
            try:
                answer = await self.client.cancel(job_id)
            except ServerlessError as exc:
                if exc.status != 404:  # kept 30 minutes: a job long gone is no longer billed either
                    raise
                self.journal.ended(job_id)
                self.jobs.pop(job_id, None)
                continue
            status = {**await self.client.status(job_id), "id": job_id}
            cancelled += status.get("status") == CANCELLED or answer.get("status") == CANCELLED
            self.finished(status)
        if self.jobs or self.journal.job_ids or self.journal.has_unknown or cancelled:
            await self.client.purge_queue()  # jobs whose id never came back, and any sent meanwhile
            self.journal.forget_unknown()
        self.jobs.clear()
        return cancelled


class RunPodServerlessProvider:
    """A RunPod Serverless endpoint (or the simulated one) as a generator `Provider` and `Serverless`."""

    bills = True

    def __init__(self, client: ServerlessClient, endpoint_id: str, *, data_dir: Path, max_in_flight: int,
                 poll_every: float, queue_timeout: float, idle_timeout: float, hourly_cost: float,
                 name: str = "runpod_serverless") -> None:
        self.name = name
        self._endpoint_id = endpoint_id
        self._label = f"endpoint {endpoint_id}"
        self._hourly_cost = hourly_cost
        journal = JobJournal(data_dir / JOURNAL, unreadable=UNREADABLE)
        self._endpoint = Endpoint(client, journal, max_in_flight=max_in_flight,
                                  poll_every=poll_every, queue_timeout=queue_timeout, idle_timeout=idle_timeout)
        self._phase = OFF
        self.volume_checkpoint = ""  # the model a worker has when sd.checkpoint and the workflow name none

    def __repr__(self) -> str:
        return f"RunPodServerlessProvider(name={self.name!r}, endpoint_id={self._endpoint_id!r})"

    async def machine_state(self) -> str:
        """"off" unless the journal lists jobs (a killed server's): then they are what is left to stop."""
        if not self._endpoint.jobs:
            self._endpoint.journal.reload()
        self._phase = LEFT_OVER if self._endpoint.journal else OFF
        return self._phase

    async def check(self) -> list[str]:
        await self._health()
        return []

    async def start(self) -> float:
        """Nothing to boot: the endpoint's workers start with the first job (the run's cost is worker time)."""
        began = time.time()
        self._endpoint.worker_time = WorkerTime(self._endpoint.idle_timeout)
        await self._health()
        return began

    async def wait_ready(self, timeout: float, on_state: Callable[[str], None]) -> None:
        self._endpoint.observe = self._watch(on_state)
        self._endpoint.observe(READY)

    async def stop(self, on_state: Callable[[str], None]) -> None:
        watch = self._endpoint.observe = self._watch(on_state)
        if self._endpoint.jobs or self._endpoint.journal:
            self._endpoint.stopping = True
            watch(CANCELLING)
        try:
            cancelled = await self._endpoint.cancel_all()
        except ServerlessError as exc:
            raise MachineError(f"cannot cancel the jobs on {self._label} (they are billed while they run): {exc}"
                               ) from exc
        finally:
            self._endpoint.observe, self._endpoint.stopping = None, False
        if cancelled:
            log.warning("%d job(s) cancelled on %s", cancelled, self._label)
        watch(OFF)

    def hourly_rate(self) -> HourlyRate:
        return HourlyRate(self._hourly_cost, "config")

    def sd_url(self) -> str:
        return self._endpoint.client.url

    def sd_backend(self, settings: Settings) -> Callable[[str], SdBackend]:
        from avatargen.sd.serverless import ServerlessComfyUi
        from avatargen.sd.workflow import load_workflow

        workflow = load_workflow(settings)  # before anything is sent: a broken workflow costs nothing
        return lambda _url: ServerlessComfyUi(settings.sd, workflow, self._endpoint, checkpoint=self.volume_checkpoint)

    def worker_seconds(self) -> float:
        return self._endpoint.worker_time.seconds

    def last_activity(self) -> float | None:
        return self._endpoint.journal.changed_at

    def detail(self) -> dict[str, Any]:
        endpoint = self._endpoint
        return {"kind": "serverless", "endpoint_id": self._endpoint_id, "phase": self._phase,
                "jobs_in_flight": len(endpoint.jobs), "max_in_flight": endpoint.max_in_flight,
                "health": endpoint.health.to_json() if endpoint.health else None,
                "worker_seconds": endpoint.worker_time.seconds, "billing": BILLING_BASIS}

    async def aclose(self) -> None:
        await self._endpoint.client.aclose()

    def _watch(self, on_state: Callable[[str], None]) -> Callable[[str], None]:
        """The phase kept for the status, then passed on to the generator when it changed."""

        def watch(phase: str) -> None:
            if phase != self._phase:
                self._phase = phase
                on_state(phase)

        return watch

    async def _health(self) -> Health:
        try:
            return await self._endpoint.read_health()
        except ServerlessError as exc:
            if exc.status in (401, 403):
                raise MachineUnusable(f"RunPod refuses the API key ({exc}): check the key in the environment "
                                      "variable gpu.runpod_serverless.api_key_env names") from exc
            if exc.status == 404:
                raise MachineUnusable(f"{self._label} does not exist on RunPod ({exc}): check "
                                      "gpu.runpod_serverless.endpoint_id") from exc
            raise MachineError(f"cannot reach {self._label}: {exc}") from exc


async def cancel_quietly(endpoint: Endpoint, job_id: str) -> None:
    """Cancel one job, as a courtesy: what cannot be cancelled now is cancelled at the run's stop."""
    with contextlib.suppress(ServerlessError):
        await endpoint.client.cancel(job_id)
