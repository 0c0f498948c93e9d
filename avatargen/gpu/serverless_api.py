"""A RunPod Serverless queue-based endpoint: its API client, the journal of our jobs, and what a run owes.

The routes (`{api_url}/{endpoint_id}`): `POST /run` queues a job (`{"input": ...}` -> `{"id", "status"}`),
`GET /status/{id}` follows it (IN_QUEUE, IN_PROGRESS, then COMPLETED, FAILED, CANCELLED or TIMED_OUT,
with `delayTime` and `executionTime` in milliseconds), `POST /cancel/{id}`, `POST /purge-queue` (every
queued job goes) and `GET /health` (workers idle and running, jobs in queue). Retries and errors are
those of every cloud API client (`avatargen.gpu.api`).

Our job ids are written to a journal in the data folder (`avatargen.journal`) before a job is sent (a
placeholder) and as soon as its id is known, and struck off once the job has ended: a server killed mid-run leaves the
journal behind, and the next start cancels what it lists and purges the queue instead of paying for
jobs nobody will collect.

RunPod bills each worker per second from its start to its stop, rounded up, including the cold start
and the endpoint's idle timeout after its last job; `executionTime` alone under-counts. `WorkerTime`
estimates it from what the job statuses say (see its docstring): an estimate, and said to be one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from avatargen.gpu.api import ApiError, CloudApiClient

log = logging.getLogger("avatargen.gpu.serverless")

QUEUED, RUNNING = "IN_QUEUE", "IN_PROGRESS"
COMPLETED, FAILED, CANCELLED, TIMED_OUT = "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"
ENDED = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})
JOURNAL = "runpod-serverless-jobs.json"


class ServerlessError(ApiError):
    """A request the RunPod Serverless API refused or could not answer."""

    vendor = "RunPod Serverless"


class ServerlessClient(CloudApiClient):
    """The routes of one queue-based endpoint, with retries."""

    error = ServerlessError

    def __init__(self, api_url: str, endpoint_id: str, *args: Any, **options: Any) -> None:
        self.url = f"{api_url.rstrip('/')}/{endpoint_id}"
        super().__init__(self.url, *args, **options)

    async def run(self, job_input: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", "/run", json={"input": job_input})

    async def status(self, job_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/status/{job_id}")

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._request("POST", f"/cancel/{job_id}")

    async def purge_queue(self) -> dict[str, Any]:
        return await self._request("POST", "/purge-queue")

    async def health(self) -> dict[str, Any]:
        return await self._request("GET", "/health")


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


@dataclass(frozen=True)
class Health:
    """What `/health` says of the endpoint, for the owner's panel."""

    workers_idle: int
    workers_running: int
    workers_initializing: int
    jobs_in_queue: int
    jobs_in_progress: int

    @classmethod
    def of(cls, body: dict[str, Any]) -> Health:
        workers, jobs = body.get("workers") or {}, body.get("jobs") or {}
        if not isinstance(workers, dict) or not isinstance(jobs, dict):
            workers, jobs = {}, {}
        return cls(_count(workers.get("idle")), _count(workers.get("running")), _count(workers.get("initializing")),
                   _count(jobs.get("inQueue")), _count(jobs.get("inProgress")))

    def to_json(self) -> dict[str, int]:
        return {"workers_idle": self.workers_idle, "workers_running": self.workers_running,
                "workers_initializing": self.workers_initializing, "jobs_in_queue": self.jobs_in_queue,
                "jobs_in_progress": self.jobs_in_progress}


@dataclass
class WorkerTime:
    """Worker seconds RunPod bills for a run's jobs, estimated from their final statuses.

    A worker is billed from its start to its stop, rounded up to the second: here from the start of its
    first job less that job's `delayTime` (the worker boots while the job waits; a wait behind a busy worker
    counts too, erring high), to the moment we saw its last job end (late by up to a poll, erring high),
    plus the endpoint's idle timeout. Waits between its jobs are inside that span, as they are billed. A job
    that ran but names no worker counts as a worker of its own; one that never left the queue bills nothing
    we can know of, nor does a worker that started for a job another worker then took.
    """

    idle_timeout: float
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # worker id -> (started, last job seen ended)
    jobs: int = 0

    @property
    def seconds(self) -> float:
        return float(sum(math.ceil(end - start + self.idle_timeout) for start, end in self.spans.values()))

    def add(self, status: dict[str, Any], seen_at: float | None = None) -> None:
        """A job's final status, read at `seen_at` (default: now)."""
        seen_at = time.time() if seen_at is None else seen_at
        execution, delay = _ms(status.get("executionTime")), _ms(status.get("delayTime"))
        worker = status.get("workerId")
        self.jobs += 1
        if not (isinstance(worker, str) and worker) and not execution:
            return  # it never reached a worker (cancelled or purged in the queue): RunPod names none to bill
        worker = worker if isinstance(worker, str) and worker else f"job-{status.get('id')}"
        started = seen_at - (execution + delay) / 1000
        first, last = self.spans.get(worker, (started, seen_at))
        self.spans[worker] = (min(first, started), max(last, seen_at))


def _ms(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and value > 0 else 0.0
