"""The `comfyui` backend on a RunPod Serverless endpoint running worker-comfyui (`runpod-workers/worker-comfyui`).

A request is one job: `POST /run` with `input.workflow`, the API-format graph avatargen builds for ComfyUI
(`avatargen.sd.workflow.job_graph`), followed on `/status/{id}` every `gpu.poll_every` until it ends. A
COMPLETED job carries `output.images[]`, each base64 (`"type": "base64"`) or the URL of an upload
(`"type": "s3_url"`); older workers answered `output.message` instead. Each end is reported as what it
is: FAILED with the worker's error (a model missing from the volume fails ComfyUI's validation there),
TIMED_OUT (the endpoint's execution timeout or the job's TTL), CANCELLED by someone else. A job no
worker takes within `gpu.ready_timeout` (no GPU free, workers throttled, an image that never starts) is
cancelled and reported as such. Nothing can say which models a worker has, so the checkpoint must be
named (`sd.checkpoint` or the workflow's own).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import random
import time
import uuid
from typing import Any

import httpx

from avatargen.config import SdSettings
from avatargen.durations import format_duration
from avatargen.gpu.serverless import Endpoint, cancel_quietly
from avatargen.gpu.serverless_api import CANCELLED, COMPLETED, ENDED, FAILED, QUEUED, TIMED_OUT, ServerlessError
from avatargen.http_client import HttpClient
from avatargen.imaging import sniff_format
from avatargen.sd.base import Generated, SdError, SdNotReady, SdProgress, quote, send
from avatargen.sd.samplers import comfyui_sampler
from avatargen.sd.workflow import Workflow, job_graph

MAX_SEED = 2**32 - 1
NO_CHECKPOINT = ("a serverless worker cannot be asked which models it has: name the checkpoint file on the "
                 "network volume in sd.checkpoint (or in the workflow's loader)")


def _sd_error(exc: ServerlessError) -> SdError:
    return SdError(exc.status, str(exc), retryable=exc.retryable)


class ServerlessComfyUi(HttpClient):
    """The `comfyui` backend (`avatargen.sd.base.SdBackend`) whose jobs run on a serverless endpoint."""

    name = "comfyui"

    def __init__(self, settings: SdSettings, workflow: Workflow, endpoint: Endpoint, *, checkpoint: str = "",
                 http: httpx.AsyncClient | None = None) -> None:
        super().__init__(http, timeout=httpx.Timeout(60.0, connect=10.0))  # for S3 links only
        self._settings = settings
        self._workflow = workflow
        self._endpoint = endpoint
        self._checkpoint = settings.checkpoint or workflow.checkpoint or checkpoint
        self._health_at = 0.0

    def __repr__(self) -> str:
        return f"ServerlessComfyUi({self._endpoint.client.url!r}, workflow={self._workflow.name!r})"

    async def probe(self, checkpoint: str) -> None:
        """Ready when the endpoint's `/health` answers (no worker needs to run for that)."""
        if not (checkpoint or self._checkpoint):
            raise SdError(None, NO_CHECKPOINT, retryable=False)
        self._checkpoint = checkpoint or self._checkpoint
        try:
            await self._endpoint.read_health()
        except ServerlessError as exc:
            if exc.retryable:
                raise SdNotReady(f"the endpoint does not answer: {exc}", exc.status) from exc
            raise _sd_error(exc) from exc

    async def generate(self, prompt: str, *, count: int, seed: int = -1) -> Generated:
        """One job of `count` images, once one of the `max_in_flight` slots is free."""
        seed = random.randint(0, MAX_SEED) if seed < 0 else seed
        graph = job_graph(self._workflow, self._settings, prompt=prompt, count=count, seed=seed,
                          checkpoint=self._checkpoint)
        async with self._endpoint.slots:
            job_id = await self._send(graph)
            status = await self._until_ended(job_id)
        images = await self._images(job_id, status.get("output"))
        sampler_name, scheduler = comfyui_sampler(self._settings.sampler, self._settings.comfyui.scheduler)
        return Generated(images=images, seeds=[seed] * len(images), metadata={
            "backend": self.name, "workflow": self._workflow.name, "model": self._checkpoint,
            "sampler_name": sampler_name, "scheduler": scheduler, "serverless_job": job_id})

    async def _send(self, graph: dict[str, Any]) -> str:
        """Queue the job, in the journal before it goes and under its id once RunPod gave it."""
        endpoint, key = self._endpoint, uuid.uuid4().hex
        endpoint.journal.sending(key)
        try:
            answer = await endpoint.client.run({"workflow": graph})
        except ServerlessError as exc:
            if exc.status is not None and not exc.retryable:  # refused: nothing was queued
                endpoint.journal.sent(key, None)
            raise _sd_error(exc) from exc  # else it may have been queued: the stop purges the queue
        job_id = answer.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise SdError(200, f"the endpoint queued a job but sent no id: {quote(str(answer))}", retryable=True)
        endpoint.journal.sent(key, job_id)
        endpoint.seen(job_id, str(answer.get("status") or QUEUED))
        return job_id

    async def _until_ended(self, job_id: str) -> dict[str, Any]:
        """The job's last status once it ended; a job no worker took within the queue timeout is cancelled."""
        endpoint = self._endpoint
        queued_since = time.monotonic()
        while True:
            await asyncio.sleep(endpoint.poll_every)
            try:
                status = {**await endpoint.client.status(job_id), "id": job_id}
            except ServerlessError as exc:
                if exc.status == 404:  # results are kept 30 minutes; the job is not ours to follow any more
                    endpoint.journal.ended(job_id)
                    endpoint.seen(job_id, CANCELLED)
                raise _sd_error(exc) from exc
            state = str(status.get("status"))
            if state in ENDED:
                endpoint.finished(status)
                self._raise_for_end(job_id, state, status)
                return status
            endpoint.seen(job_id, state)
            if state != QUEUED:
                continue
            if time.monotonic() - queued_since >= endpoint.queue_timeout:
                await cancel_quietly(endpoint, job_id)
                health = endpoint.health.to_json() if endpoint.health else "unknown"
                raise SdError(None, f"no worker took serverless job {job_id} within gpu.ready_timeout "
                                    f"({format_duration(endpoint.queue_timeout)}): it was cancelled. The endpoint's "
                                    f"health: {health}; check its GPU availability, max workers and worker image",
                              retryable=False)

    @staticmethod
    def _raise_for_end(job_id: str, state: str, status: dict[str, Any]) -> None:
        where = f"serverless job {job_id}" + (f" (worker {status['workerId']})" if status.get("workerId") else "")
        if state == FAILED:
            raise SdError(None, f"{where} FAILED: {quote(str(status.get('error') or 'no error given'))}",
                          retryable=False)
        if state == TIMED_OUT:
            ran = format_duration(float(status.get("executionTime") or 0) / 1000)
            raise SdError(None, f"{where} TIMED_OUT after running {ran}: it exceeded the endpoint's execution "
                                "timeout (or its time to live ran out in the queue)", retryable=False)
        if state == CANCELLED:
            raise SdError(None, f"{where} was CANCELLED on the endpoint, not by this run (from RunPod's console "
                                "or API)", retryable=True)
        assert state == COMPLETED

    async def _images(self, job_id: str, output: Any) -> list[bytes]:
        """The images of a COMPLETED job: `output.images[]` (base64 or an S3 URL), or an old worker's
        `output.message`."""
        if isinstance(output, dict) and output.get("error"):
            raise SdError(200, f"serverless job {job_id} ended with an error: {quote(str(output['error']))}",
                          retryable=False)
        items: Any = output.get("images") if isinstance(output, dict) else None
        if items is None and isinstance(output, dict) and isinstance(output.get("message"), str):
            message = output["message"]
            items = [{"type": "s3_url" if message.startswith("http") else "base64", "data": message}]
        if not isinstance(items, list) or not items:
            raise SdError(200, f"serverless job {job_id} completed without images: {quote(str(output))}",
                          retryable=True)
        return [await self._image(job_id, item) for item in items]

    async def _image(self, job_id: str, item: Any) -> bytes:
        kind, data = (item.get("type"), item.get("data")) if isinstance(item, dict) else (None, None)
        if not isinstance(data, str):
            raise SdError(200, f"serverless job {job_id} listed an unusable image: {quote(str(item))}", retryable=True)
        if kind == "s3_url":
            response = await send(self._http, "GET", data, server=f"the upload of job {job_id}")
            if not response.is_success:
                raise SdError(response.status_code, f"the image of serverless job {job_id} cannot be fetched from "
                                                    f"its upload: HTTP {response.status_code}", retryable=True)
            content = response.content
        else:
            try:
                content = base64.b64decode(data.partition(",")[2] if data.startswith("data:") else data, validate=True)
            except (binascii.Error, ValueError):
                content = b""
        if sniff_format(content) is None:
            raise SdError(200, f"serverless job {job_id} sent something that is not an image "
                               f"({item.get('filename') or kind})", retryable=True)
        return content

    async def progress(self, *, preview: bool = False) -> SdProgress:
        """No step progress comes from a queue; the endpoint's health is refreshed for the panel instead."""
        endpoint = self._endpoint
        if time.monotonic() - self._health_at >= max(endpoint.poll_every, 1.0):
            self._health_at = time.monotonic()
            with contextlib.suppress(ServerlessError):
                await endpoint.read_health()
        return SdProgress(progress=0.0, eta_relative=0.0, sampling_step=0, sampling_steps=0,
                          job_count=len(endpoint.jobs))

    async def cancel(self) -> None:
        with contextlib.suppress(ServerlessError):
            await self._endpoint.cancel_all()
