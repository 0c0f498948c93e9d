"""Run the simulated GPU: a cloud machine API and the SD web UI served on loopback, inside this event loop.

The machine API is Paperspace's or RunPod's (`gpu.simulated.api`), over the same simulated machine; or a
RunPod Serverless endpoint (`runpod_serverless`), whose workers run ComfyUI themselves (no machine starts).
The SD web UI is served only while that machine is `ready`: before that a connection to it is refused,
as with a machine that is off, and after each start its routes answer 404 for `sd_boot_delay`.
Stopping the machine drops the web UI's connections, requests in flight included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from avatargen.config import GpuSettings, Secret, SimulatedSettings
from avatargen.gpu import Provider, RunPodServerlessProvider, api_provider
from avatargen.simulator.comfyui import SimulatedComfyUi
from avatargen.simulator.comfyui_nodes import CHECKPOINTS
from avatargen.simulator.faults import Faults
from avatargen.simulator.loopback import LoopbackServer
from avatargen.simulator.machine import SimulatedMachine
from avatargen.simulator.paperspace import SimulatedPaperspace
from avatargen.simulator.runpod import SimulatedRunPod
from avatargen.simulator.sdwebui import SimulatedSdWebUi
from avatargen.simulator.serverless import SimulatedServerless
from avatargen.sockets import bound_socket

SD_PORT = 7860  # the web UI's port inside the machine (RunPod maps it to a public one)
# ids in each vendor's style (a serverless endpoint's id names the endpoint)
MACHINE_IDS = {"paperspace": "pssim42", "runpod": "simpod42xyz", "runpod_serverless": "simendpoint42"}
DEFAULT_PRICE = 0.44  # per hour, what the simulated RunPod pod says it costs unless told otherwise


class SimulatedGpu:
    """The simulated GPU machine: a cloud API (`settings.api`) and an SD server that lives while the machine is
    on: the web UI, or ComfyUI with `backend="comfyui"` (what `sd.backend` names).

        async with SimulatedGpu(settings.gpu.simulated) as sim:
            provider = sim.provider(settings.gpu)

    Exposes `api` ("paperspace" | "runpod"), `api_url` (ending in /v1), `api_key`, `machine_id` (the pod's
    id on RunPod), `sd_url`, the live `machine` (`machine.state`, `machine.billed_seconds`), the SD
    server's state `sd` and the shared `faults`. `hourly_price` is what the machine's API says an hour costs.
    """

    def __init__(self, settings: SimulatedSettings, *, host: str = "127.0.0.1", api_port: int = 0,
                 sd_port: int = 0, machine_id: str | None = None, sd_auth: tuple[str, str] | None = None,
                 hourly_price: float = DEFAULT_PRICE, backend: str = "a1111") -> None:
        self.api = settings.api
        self.backend = backend
        self.faults = Faults(settings.faults)
        self.api_key = secrets.token_urlsafe(24)
        self.machine_id = machine_id or MACHINE_IDS[self.api]
        self.machine = SimulatedMachine(settings, self.faults, machine_id=self.machine_id, public_ip=host,
                                        stop_delay=0.0 if self.api == "runpod" else None)
        self.sd: SimulatedSdWebUi | SimulatedComfyUi = (
            SimulatedComfyUi(settings, self.faults, auth=sd_auth, after_delivery=self._after_txt2img)
            if backend == "comfyui" else
            SimulatedSdWebUi(settings, self.faults, auth=sd_auth, after_txt2img=self._after_txt2img))
        self._pod: SimulatedRunPod | None = None
        self.endpoint: SimulatedServerless | None = None  # the serverless endpoint, when that is the API
        if self.api == "runpod_serverless":
            self.endpoint = SimulatedServerless(settings, self.faults, endpoint_id=self.machine_id,
                                                api_key=self.api_key)
            app = self.endpoint.app
        elif self.api == "runpod":
            self._pod = SimulatedRunPod(self.machine, self.faults, api_key=self.api_key, hourly_price=hourly_price)
            app = self._pod.app
        else:
            app = SimulatedPaperspace(self.machine, self.faults, api_key=self.api_key, hourly_price=hourly_price).app
        self._api_server = LoopbackServer(app, host=host, port=api_port)
        self._sd_server = LoopbackServer(self.sd.app, host=host, port=sd_port, reuse_port=True)
        self._sd_port_held: socket.socket | None = None
        self._follower: asyncio.Task[None] | None = None

    @property
    def api_url(self) -> str:
        return self._api_server.url + ("/v2" if self.endpoint is not None else "/v1")

    @property
    def sd_url(self) -> str:
        return self._sd_server.url

    def provider(self, gpu: GpuSettings, *, sd_url: str | None = None, data_dir: Path | None = None,
                 **client_options: Any) -> Provider:
        """The provider production uses for this API, pointed at the simulator (named "simulated", or
        "simulated_serverless" for the serverless endpoint, which keeps its journal of jobs in `data_dir`).

        `sd_url` may hold the provider's placeholders, e.g. `{public_ip}`; by default a pod is reached as a
        port exposed over TCP (its address known once the container runs), any other machine at `sd_url`.
        `client_options` tune the client's retries.
        """
        default = f"http://{{public_ip}}:{{port:{SD_PORT}}}" if self.api == "runpod" else self.sd_url
        name = "simulated_serverless" if self.endpoint is not None else "simulated"
        provider = api_provider(gpu, self.api, api_url=self.api_url, api_key=Secret(self.api_key),
                                machine_id=self.machine_id, sd_url=sd_url or default, name=name, data_dir=data_dir,
                                **client_options)
        if isinstance(provider, RunPodServerlessProvider):
            provider.volume_checkpoint = CHECKPOINTS[0]  # what the simulated workers' network volume holds
        return provider

    def set_faults(self, names: Iterable[str]) -> None:
        """Switch on exactly these faults (an unknown name raises ValueError)."""
        self.faults.set(names)

    def describe(self) -> dict[str, Any]:
        """Where to reach the simulator: what a separate process needs to talk to it."""
        return {"api": self.api, "api_url": self.api_url, "sd_url": self.sd_url, "api_key": self.api_key,
                "machine_id": self.machine_id, "backend": self.backend}

    async def __aenter__(self) -> SimulatedGpu:
        # The SD server's port is held from now on, not listening while the machine is off (connections are
        # refused, as by a machine that is down), so its URL is known and no other process takes the port
        # between two boots (a test would then talk to a stranger's server). A port the owner chose keeps
        # SO_REUSEADDR, so a simulator started again at once is not refused for the last one's connections.
        port = self._sd_server.port
        self._sd_port_held = bound_socket(self._sd_server.host, port, reuse_address=port != 0, reuse_port=True)
        self._sd_server.port = self._sd_port_held.getsockname()[1]
        try:
            await self._api_server.start()
        except BaseException:
            self._sd_port_held.close()
            raise
        if self._pod is not None:
            self._pod.ports[SD_PORT] = self._sd_server.port
        self._follower = asyncio.create_task(self._follow_machine())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if self._follower is not None:
                self._follower.cancel()
                await asyncio.gather(self._follower, return_exceptions=True)
            await self._sd_down()
            await self._api_server.stop()
            await self.machine.aclose()
            if self.endpoint is not None:
                await self.endpoint.aclose()
        finally:
            if self._sd_port_held is not None:
                self._sd_port_held.close()

    async def _follow_machine(self) -> None:
        """Serve the web UI exactly while the machine is ready."""
        while True:
            changed = self.machine.next_change()
            ready = self.machine.state == "ready"
            if ready and not self._sd_server.running:
                self.sd.boot()
                await self._sd_server.start()
            elif not ready and self._sd_server.running:
                await self._sd_down()
            await changed.wait()

    async def _sd_down(self) -> None:
        """The web UI process dies with the machine: its jobs end, its port closes."""
        self.sd.power_off()
        await self._sd_server.stop()

    async def _after_txt2img(self) -> None:
        """Runs once an answer is sent (async: Starlette would run a plain function in a thread)."""
        if self.machine.state != "ready":
            return
        if "external_terminate" in self.faults and self.api == "runpod":
            self.machine.terminate()
        elif "external_stop" in self.faults:
            self.machine.stop()


async def run_simulator(settings: SimulatedSettings, host: str = "127.0.0.1", api_port: int = 0,
                        sd_port: int = 0, backend: str = "a1111", hourly_price: float = DEFAULT_PRICE) -> None:
    """Serve the simulated GPU until cancelled, after printing where it is as one JSON line on stdout
    (`api`, `api_url`, `sd_url`, `api_key`, `machine_id`, `backend`), for a separate process or the owner."""
    async with SimulatedGpu(settings, host=host, api_port=api_port, sd_port=sd_port, backend=backend,
                            hourly_price=hourly_price) as sim:
        print(json.dumps(sim.describe()), flush=True)
        await asyncio.Event().wait()


def serve_simulator(settings: SimulatedSettings, host: str = "127.0.0.1", api_port: int = 0,
                    sd_port: int = 0, backend: str = "a1111", hourly_price: float = DEFAULT_PRICE) -> int:
    """Run the simulated GPU as a process of its own until SIGTERM or Ctrl-C; the exit status."""

    async def until_signalled() -> None:
        serving = asyncio.create_task(run_simulator(settings, host, api_port, sd_port, backend, hourly_price))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, serving.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serving

    try:
        asyncio.run(until_signalled())
    except OSError as exc:  # the port is taken, the host is not ours, ...
        print(f"simulator: cannot listen on {host}: {exc}", file=sys.stderr)
        return 1
    return 0
