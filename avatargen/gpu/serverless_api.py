"""A RunPod Serverless queue-based endpoint: its API client, the journal of our jobs, and what a run owes.

The routes (`{api_url}/{endpoint_id}`): `POST /run` queues a job (`{"input": ...}` -> `{"id", "status"}`),
`GET /status/{id}` follows it (IN_QUEUE, IN_PROGRESS, then COMPLETED, FAILED, CANCELLED or TIMED_OUT,
with `delayTime` and `executionTime` in milliseconds), `POST /cancel/{id}`, `POST /purge-queue` (every
queued job goes) and `GET /health` (workers idle and running, jobs in queue). Retries and errors are
those of every cloud API client (`avatargen.gpu.api`).

Our job ids are written to a journal in the data folder before a job is sent (a placeholder) and as
soon as its id is known, and struck off once the job has ended: a server killed mid-run leaves the
journal behind, and the next start cancels what it lists and purges the queue instead of paying for
jobs nobody will collect.

RunPod bills each worker per second from its start to its stop, rounded up, including the cold start
and the endpoint's idle timeout after its last job; `executionTime` alone under-counts. `WorkerTime`
estimates it from what the job statuses say (see its docstring): an estimate, and said to be one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatargen.files import write_atomically
from avatargen.gpu.api import ApiError, CloudApiClient

log = logging.getLogger("avatargen.gpu.serverless")

QUEUED, RUNNING = "IN_QUEUE", "IN_PROGRESS"
COMPLETED, FAILED, CANCELLED, TIMED_OUT = "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"
ENDED = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})
JOURNAL = "runpod-serverless-jobs.json"
PENDING = "pending"  # a job being sent: its id is not known yet


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


class JobJournal:
    """Our jobs not known to have ended, in a file of the data folder (written atomically, owner only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, float] = self._read()  # job id (or a pending key) -> when it was sent

    def reload(self) -> None:
        """Read the file again (at start-up, before anything is sent: what the last process left)."""
        self._entries = self._read()

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("the serverless job journal %s cannot be read (%s): its jobs, if any, are purged with the "
                      "queue at the next stop", self.path, exc)
            return {f"{PENDING}-unreadable": time.time()}
        jobs = data.get("jobs") if isinstance(data, dict) else None
        return {str(key): float(value) for key, value in jobs.items()} if isinstance(jobs, dict) else {}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(self.path, json.dumps({"jobs": self._entries}, indent=1).encode(), mode=0o600)

    @property
    def changed_at(self) -> float | None:
        """When the file was last written (a job sent or ended), None when there is none."""
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    @property
    def job_ids(self) -> list[str]:
        """The ids of jobs that may still be queued or running (pending placeholders left out)."""
        return [key for key in self._entries if not key.startswith(PENDING)]

    @property
    def has_unknown(self) -> bool:
        """Whether a job was being sent when the server stopped: its id never came back, only a purge of the
        queue can reach it."""
        return any(key.startswith(PENDING) for key in self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def sending(self, key: str) -> None:
        """A job is about to be sent (written first: the server may die before its id comes back)."""
        self._entries[f"{PENDING}-{key}"] = time.time()
        self._write()

    def sent(self, key: str, job_id: str | None) -> None:
        """The job was queued as `job_id` (None: it was not queued after all)."""
        since = self._entries.pop(f"{PENDING}-{key}", time.time())
        if job_id is not None:
            self._entries[job_id] = since
        self._write()

    def ended(self, *job_ids: str) -> None:
        for job_id in job_ids:
            self._entries.pop(job_id, None)
        self._write()

    def forget_unknown(self) -> None:
        """The queue was purged: jobs whose id never came back are gone (or ran; nothing can tell)."""
        self._entries = {key: since for key, since in self._entries.items() if not key.startswith(PENDING)}
        self._write()


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
