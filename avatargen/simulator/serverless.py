"""A simulated RunPod Serverless queue-based endpoint running worker-comfyui (demo mode and tests).

It speaks the routes of `https://api.runpod.ai/v2/{endpoint_id}` avatargen uses (`POST /run`,
`GET /status/{id}`, `POST /cancel/{id}`, `POST /purge-queue`, `GET /health`, Bearer auth) with RunPod's
shapes: job states IN_QUEUE -> IN_PROGRESS -> COMPLETED | FAILED | CANCELLED | TIMED_OUT, `delayTime` and
`executionTime` in milliseconds, the worker's id, and worker-comfyui's output (`output.images[]` of
`{"filename", "type": "base64", "data"}`) or its error.

Workers scale from zero up to `MAX_WORKERS`: a job that finds no idle worker starts one, which boots for
`boot_delay` (the cold start) and stays up `stop_delay` after its last job (the endpoint's idle timeout).
Jobs run first in first out; the graph is validated and drawn as by the simulated ComfyUI (`comfyui_nodes`),
sampling taking `steps * step_time * batch_factor`. Billed seconds are counted as RunPod bills them: per
worker, from its start to its stop, rounded up. Faults (see `faults.SERVERLESS`): `api_429`/`api_500` on
the API, `never_ready` (a worker that never finishes booting), `sd_500` (every job FAILED, out of memory),
`comfyui_validation` (FAILED: the graph refused), `sd_slow_first`, `serverless_timeout` (TIMED_OUT).
"""

from __future__ import annotations

import asyncio
import base64
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from avatargen.config import SimulatedSettings
from avatargen.simulator.comfyui_nodes import (
    SAMPLING_CLASSES,
    execution_order,
    png,
    resolve,
    run_node,
    sampled,
    validate,
)
from avatargen.simulator.faults import Faults
from avatargen.simulator.sdwebui import SLOW_FIRST_FACTOR, batch_factor
from avatargen.simulator.service import SimRoute, bearer_key_matches, refuse_runpod_request, simulated_app

MAX_WORKERS = 3
TIMEOUT_AFTER = 0.05  # seconds a job runs before the serverless_timeout fault ends it
QUEUED, RUNNING = "IN_QUEUE", "IN_PROGRESS"
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
OOM = "torch.OutOfMemoryError: Allocation on device 0 would exceed allowed memory. (out of memory)"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@dataclass
class _Job:
    id: str
    workflow: Any
    queued_at: float = field(default_factory=time.monotonic)
    status: str = QUEUED
    started_at: float | None = None
    ended_at: float | None = None
    worker: str | None = None
    output: dict[str, Any] | None = None
    error: str | None = None
    task: asyncio.Task[None] | None = None

    def to_json(self) -> dict[str, Any]:
        now = time.monotonic()
        answer: dict[str, Any] = {"id": self.id, "status": self.status}
        waited_until = self.started_at if self.started_at is not None else (self.ended_at or now)
        answer["delayTime"] = round((waited_until - self.queued_at) * 1000)
        if self.started_at is not None:
            answer["executionTime"] = round(((self.ended_at or now) - self.started_at) * 1000)
        if self.worker is not None:
            answer["workerId"] = self.worker
        if self.output is not None:
            answer["output"] = self.output
        if self.error is not None:
            answer["error"] = self.error
        return answer


@dataclass
class _Worker:
    id: str
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    busy: bool = False
    started: float = field(default_factory=time.monotonic)
    idle_since: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None


class SimulatedServerless:
    """The endpoint's state (jobs, workers, billed seconds) and its Starlette app (`.app`).

    Tests read `completed` (positive prompts of the jobs that completed), `billed_seconds`, `jobs`,
    `workers`, `workers_started`, `busy_seconds` and `peak_in_flight`; `cancelled` and `purged` count what
    the client took back.
    """

    def __init__(self, settings: SimulatedSettings, faults: Faults, *, endpoint_id: str, api_key: str) -> None:
        self.endpoint_id = endpoint_id
        self._settings = settings
        self._faults = faults
        self._api_key = api_key
        self.jobs: dict[str, _Job] = {}
        self.workers: dict[str, _Worker] = {}
        self.completed: list[str] = []
        self.cancelled = 0
        self.purged = 0
        self.peak_in_flight = 0  # the most jobs queued or running at once
        self.workers_started = 0
        self.busy_seconds = 0.0  # time workers spent running jobs
        self._billed = 0.0
        self._exact = 0.0
        self._first_job = True
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        base = f"/v2/{endpoint_id}"
        self.app: Starlette = simulated_app(
            [
                SimRoute(base + "/run", self._run, ("POST",)),
                SimRoute(base + "/status/{job_id}", self._status),
                SimRoute(base + "/cancel/{job_id}", self._cancel, ("POST",)),
                SimRoute(base + "/purge-queue", self._purge, ("POST",)),
                SimRoute(base + "/health", self._health),
            ],
            faults=faults, gate=self._refuse, sim_gate=self._unauthorized, error=_error,
            sim_routes=[SimRoute("/_sim/endpoint", self._report), SimRoute("/_sim/machine", self._machine)],
        )

    @property
    def billed_seconds(self) -> float:
        """Worker seconds RunPod would bill: each worker from start to stop, rounded up."""
        now = time.monotonic()
        return self._billed + sum(math.ceil(now - worker.started) for worker in self.workers.values())

    @property
    def worker_seconds(self) -> float:
        """Worker seconds so far, before RunPod's rounding."""
        now = time.monotonic()
        return self._exact + sum(now - worker.started for worker in self.workers.values())

    @property
    def queued(self) -> list[_Job]:
        return [job for job in self.jobs.values() if job.status == QUEUED]

    async def aclose(self) -> None:
        tasks = [task for task in (self._dispatcher, *(job.task for job in self.jobs.values()),
                                   *(worker.task for worker in self.workers.values())) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the gate ------------------------------------------------------------------------------------

    def _unauthorized(self, request: Request) -> Response | None:
        return None if bearer_key_matches(request, self._api_key) else _error(401, "Unauthorized")

    def _refuse(self, request: Request) -> Response | None:
        """The answer for a request that does not get through (bad key, injected fault, unknown job), else None."""
        if refusal := refuse_runpod_request(request, self._api_key, self._faults, _error):
            return refusal
        job_id = request.path_params.get("job_id")
        if job_id is not None and job_id not in self.jobs:
            return _error(404, f"job {job_id} not found")
        return None

    # --- the routes ----------------------------------------------------------------------------------

    async def _run(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        job_input = body.get("input") if isinstance(body, dict) else None
        if not isinstance(job_input, dict):
            return _error(400, "the body has no input object")
        job_id = f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-{secrets.token_hex(2)}-u1"  # RunPod's style
        job = _Job(job_id, job_input.get("workflow"))
        self.jobs[job.id] = job
        self.peak_in_flight = max(self.peak_in_flight, sum(job.status not in ENDED for job in self.jobs.values()))
        self._wake.set()
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch())
        return JSONResponse({"id": job.id, "status": QUEUED})

    async def _status(self, request: Request) -> Response:
        return JSONResponse(self.jobs[request.path_params["job_id"]].to_json())

    async def _cancel(self, request: Request) -> Response:
        job = self.jobs[request.path_params["job_id"]]
        if job.status not in ENDED:
            self.cancelled += 1
            if job.task is not None:
                job.task.cancel()
            self._end(job, "CANCELLED")
        return JSONResponse({"id": job.id, "status": job.status})

    async def _purge(self, request: Request) -> Response:
        queued = self.queued
        for job in queued:
            self._end(job, "CANCELLED")
        self.purged += len(queued)
        return JSONResponse({"removed": len(queued), "status": "completed"})

    async def _health(self, request: Request) -> Response:
        workers = list(self.workers.values())
        ready = [worker for worker in workers if worker.ready.is_set()]
        counts = {state: sum(job.status == state for job in self.jobs.values()) for state in (*ENDED, QUEUED, RUNNING)}
        return JSONResponse({
            "jobs": {"completed": counts["COMPLETED"], "failed": counts["FAILED"] + counts["TIMED_OUT"],
                     "inProgress": counts[RUNNING], "inQueue": counts[QUEUED], "retried": 0},
            "workers": {"idle": sum(not worker.busy for worker in ready), "running": sum(w.busy for w in ready),
                        "initializing": len(workers) - len(ready), "ready": len(ready), "throttled": 0,
                        "unhealthy": 0}})

    async def _machine(self, request: Request) -> Response:
        """What the fault matrix reads of any simulated GPU: "off" once no job is queued or running (workers
        idling out their idle timeout are the endpoint's own), and the worker seconds so far, unrounded (so
        that time billed after a run shows as it accrues)."""
        busy = any(job.status not in ENDED for job in self.jobs.values())
        return JSONResponse({"id": self.endpoint_id, "state": "busy" if busy else "off",
                             "billedSeconds": self.worker_seconds, "idleTimeout": self._settings.stop_delay,
                             "workers": self.workers_started})

    async def _report(self, request: Request) -> Response:
        return JSONResponse({"id": self.endpoint_id, "billedSeconds": self.billed_seconds,
                             "workers": len(self.workers), "cancelled": self.cancelled, "purged": self.purged})

    # --- the workers ---------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Hand queued jobs to idle workers, starting a worker (a cold start) when none is idle."""
        while True:
            self._wake.clear()
            for job in self.queued:
                idle = next((w for w in self.workers.values() if w.ready.is_set() and not w.busy), None)
                if idle is None:
                    booting = sum(not w.ready.is_set() for w in self.workers.values())
                    if booting < len(self.queued) and len(self.workers) < MAX_WORKERS:
                        self._start_worker()
                    break
                idle.busy = True
                job.task = asyncio.create_task(self._execute(job, idle))
            await self._wake.wait()

    def _start_worker(self) -> None:
        self.workers_started += 1
        worker = _Worker(f"simworker{self.workers_started}")
        self.workers[worker.id] = worker
        worker.task = asyncio.create_task(self._live(worker))

    async def _live(self, worker: _Worker) -> None:
        """Boot (under never_ready: until no job waits any more, as RunPod scales an endpoint to its queue),
        then stay up until idle for the endpoint's idle timeout."""
        try:
            if "never_ready" in self._faults:
                while self.queued:
                    await asyncio.sleep(self._settings.stop_delay)
                return
            await asyncio.sleep(self._settings.boot_delay)
            worker.ready.set()
            self._wake.set()
            worker.idle_since = time.monotonic()
            while worker.busy or (left := worker.idle_since + self._settings.stop_delay - time.monotonic()) > 0:
                await asyncio.sleep(self._settings.stop_delay if worker.busy else left)
        finally:
            self._billed += math.ceil(time.monotonic() - worker.started)
            self._exact += time.monotonic() - worker.started
            self.workers.pop(worker.id, None)

    async def _execute(self, job: _Job, worker: _Worker) -> None:
        job.status, job.started_at, job.worker = RUNNING, time.monotonic(), worker.id
        try:
            if "serverless_timeout" in self._faults:
                await asyncio.sleep(TIMEOUT_AFTER)
                self._end(job, "TIMED_OUT")
                return
            images, drawn = await self._comfyui(job.workflow)
        except _JobFailed as exc:
            job.error = str(exc)
            self._end(job, "FAILED")
        else:
            job.output = {"images": [{"filename": f"ComfyUI_{index:05}_.png", "type": "base64",
                                      "data": base64.b64encode(image).decode()}
                                     for index, image in enumerate(images, 1)]}
            self.completed.append(drawn)
            self._end(job, "COMPLETED")
        finally:
            worker.busy = False
            worker.idle_since = time.monotonic()
            self.busy_seconds += worker.idle_since - job.started_at
            self._wake.set()

    async def _comfyui(self, workflow: Any) -> tuple[list[bytes], str]:
        """What worker-comfyui's ComfyUI makes of the graph: its saved images, and the text it was drawn from."""
        error, node_errors, outputs = validate(workflow)
        if error is None and self._faults.hit("comfyui_validation"):
            error = {"message": "Prompt outputs failed validation", "details": "sampler_name: value not in list"}
        if error is not None:
            raise _JobFailed(f"Workflow validation failed: {error['message']}: {error.get('details', '')} "
                             f"{node_errors or ''}".strip())
        slow = SLOW_FIRST_FACTOR if self._first_job and "sd_slow_first" in self._faults else 1.0
        self._first_job = False
        values: dict[str, tuple[Any, ...]] = {}
        images: list[bytes] = []
        drawn = ""
        for node_id in execution_order(workflow, outputs):
            node = workflow[node_id]
            args = resolve(node["inputs"], values)
            if node["class_type"] in SAMPLING_CLASSES:
                if self._faults.hit("sd_500"):
                    raise _JobFailed(f"Job failed: node {node_id} ({node['class_type']}): {OOM}")
                latent = args["latent_image"]
                await asyncio.sleep(int(args["steps"]) * self._settings.step_time * batch_factor(latent.batch) * slow)
                values[node_id] = (sampled(args, int(args["steps"])),)
                drawn = drawn or values[node_id][0].prompt or ""
                continue
            values[node_id] = await asyncio.to_thread(run_node, node["class_type"], args)
            if node["class_type"] == "SaveImage":
                images += [await asyncio.to_thread(png, image) for image in args["images"]]
        return images, drawn

    def _end(self, job: _Job, status: str) -> None:
        job.status, job.ended_at = status, time.monotonic()


class _JobFailed(Exception):
    """The handler raised: the job is FAILED with this error."""
