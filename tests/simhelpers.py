"""Helpers for the GPU, SD client and simulator tests: tiny delays, servers on loopback ports."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import replace
from typing import Any

import httpx
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from avatargen.config import SdSettings, SimulatedSettings
from avatargen.sd import SdBackend, SdNotReady
from avatargen.simulator import Faults, LoopbackServer, SimulatedGpu
from avatargen.simulator.comfyui import SimulatedComfyUi
from avatargen.simulator.sdwebui import SimulatedSdWebUi

FAST = SimulatedSettings(boot_delay=0.3, stop_delay=0.1, sd_boot_delay=0.0, step_time=0.001)


def sim_settings(**changes: Any) -> SimulatedSettings:
    """The simulator with tiny delays (a boot takes 0.3 s, a 20-step image 20 ms)."""
    return replace(FAST, **changes)


def sd_settings(**changes: Any) -> SdSettings:
    return replace(SdSettings(steps=20, width=128, height=96, batch_size=2), **changes)


def decode_image(encoded: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    image.load()
    return image


@contextlib.asynccontextmanager
async def sd_webui(settings: SimulatedSettings = FAST, *, faults: Iterable[str] = (),
                   auth: tuple[str, str] | None = None) -> AsyncIterator[tuple[SimulatedSdWebUi, str]]:
    """The simulated web UI alone (no machine around it), booted now, and its URL."""
    webui = SimulatedSdWebUi(settings, Faults(faults), auth=auth)
    async with LoopbackServer(webui.app) as server:
        try:
            yield webui, server.url
        finally:
            webui.power_off()  # end a job still computing, as a machine going off does


@contextlib.asynccontextmanager
async def comfyui(settings: SimulatedSettings = FAST, *, faults: Iterable[str] = (),
                  auth: tuple[str, str] | None = None, token: str | None = None, jobs_api: bool = True
                  ) -> AsyncIterator[tuple[SimulatedComfyUi, str]]:
    """The simulated ComfyUI alone (no machine around it), booted now, and its URL; `jobs_api=False`: one from
    before `/api/jobs`."""
    server_state = SimulatedComfyUi(settings, Faults(faults), auth=auth, token=token, jobs_api=jobs_api)
    async with LoopbackServer(server_state.app) as server:
        try:
            yield server_state, server.url
        finally:
            server_state.power_off()


@contextlib.asynccontextmanager
async def fixed_answers(answers: Mapping[str, Response]) -> AsyncIterator[str]:
    """A server answering each path with a fixed response, for shapes no simulator fault produces."""
    async def answer(request: Request) -> Response:
        return answers[request.url.path]

    app = Starlette(routes=[Route(path, answer, methods=["GET", "POST", "PATCH"]) for path in answers])
    async with LoopbackServer(app) as server:
        yield server.url


async def wait_sd_ready(sd: SdBackend, checkpoint: str = "", timeout: float = 5.0) -> None:
    """Probe until the SD server is ready, as the generator does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await sd.probe(checkpoint)
        except SdNotReady:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def cloud_api(sim: SimulatedGpu) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the simulated provider's API (Paperspace or RunPod), with its key."""
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    async with httpx.AsyncClient(base_url=sim.api_url, headers=headers) as client:
        yield client
