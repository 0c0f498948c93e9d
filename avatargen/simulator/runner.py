"""Run the simulated GPU: the Paperspace API and the SD web UI served on loopback, inside this event loop.

The SD web UI is served only while the simulated machine is `ready`: before that a connection to it
is refused, as with a machine that is off, and after each start its routes answer 404 for
`sd_boot_delay`. Stopping the machine drops the web UI's connections, requests in flight included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import socket
import sys
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from avatargen.config import SimulatedSettings
from avatargen.simulator.comfyui import SimulatedComfyUi
from avatargen.simulator.faults import Faults
from avatargen.simulator.paperspace import SimulatedMachine, SimulatedPaperspace
from avatargen.simulator.sdwebui import SimulatedSdWebUi
from avatargen.sockets import bound_socket


def http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound and listening: connections queue in the kernel from now on, none is refused."""
    sock = bound_socket(host, port)
    try:
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process embedding it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class LoopbackServer:
    """An ASGI app served by uvicorn as a task of the running event loop.

    The socket is bound and listening before uvicorn starts, so the server is reachable as soon as
    `start()` returns, with no waiting for uvicorn's start-up flag. `stop()` is abrupt, like a machine
    losing power: the port closes and open connections drop at once; requests in flight get `grace`
    seconds to notice their client is gone (a simulated service ends them itself), then are cancelled.
    """

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, grace: float = 1.0) -> None:
        self._app = app
        self.host = host
        self.port = port
        self._grace = grace
        self._sock: socket.socket | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        self._sock = _listening_socket(self.host, self.port)
        self.port = self._sock.getsockname()[1]
        # No log_config or log_level: uvicorn would reconfigure the embedding process's logging.
        config = uvicorn.Config(self._app, lifespan="off", log_config=None, log_level=None, access_log=False)
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))

    async def stop(self) -> None:
        """Stop serving; every step may be repeated, so a stop interrupted by cancellation can be finished."""
        server, task, sock = self._server, self._task, self._sock
        if server is None or task is None or sock is None:
            return
        task.cancel()  # uvicorn's own shutdown waits politely; a power cut does not
        await asyncio.gather(task, return_exceptions=True)
        for listener in getattr(server, "servers", []):
            listener.close()
        sock.close()  # in case uvicorn was cancelled before it took the socket over
        for connection in list(server.server_state.connections):
            connection.transport.close()
        requests = set(server.server_state.tasks)
        if requests:
            _, stuck = await asyncio.wait(requests, timeout=self._grace)
            for request in stuck:
                request.cancel()
        self._server = self._task = self._sock = None

    async def __aenter__(self) -> LoopbackServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class SimulatedGpu:
    """The simulated GPU machine: a Paperspace-like API and an SD server that lives while the machine is on:
    the web UI, or ComfyUI with `backend="comfyui"` (what `sd.backend` names).

        async with SimulatedGpu(settings.gpu.simulated) as sim:
            provider = make_provider(settings, simulated=sim)

    Exposes `paperspace_url` (ending in /v1), `api_key`, `machine_id`, `sd_url`, the live `machine`
    (`machine.state`, `machine.billed_seconds`), the SD server's state `sd` and the shared `faults`.
    """

    def __init__(self, settings: SimulatedSettings, *, host: str = "127.0.0.1", paperspace_port: int = 0,
                 sd_port: int = 0, machine_id: str = "pssim42", sd_auth: tuple[str, str] | None = None,
                 backend: str = "a1111") -> None:
        self.faults = Faults(settings.faults)
        self.api_key = secrets.token_urlsafe(24)
        self.machine_id = machine_id
        self.machine = SimulatedMachine(settings, self.faults, machine_id=machine_id, public_ip=host)
        self.sd: SimulatedSdWebUi | SimulatedComfyUi = (
            SimulatedComfyUi(settings, self.faults, auth=sd_auth, after_delivery=self._after_txt2img)
            if backend == "comfyui" else
            SimulatedSdWebUi(settings, self.faults, auth=sd_auth, after_txt2img=self._after_txt2img))
        self.backend = backend
        paperspace = SimulatedPaperspace(self.machine, self.faults, api_key=self.api_key)
        self._paperspace_server = LoopbackServer(paperspace.app, host=host, port=paperspace_port)
        self._sd_server = LoopbackServer(self.sd.app, host=host, port=sd_port)
        self._follower: asyncio.Task[None] | None = None

    @property
    def paperspace_url(self) -> str:
        return self._paperspace_server.url + "/v1"

    @property
    def sd_url(self) -> str:
        return self._sd_server.url

    def set_faults(self, names: Iterable[str]) -> None:
        """Switch on exactly these faults (an unknown name raises ValueError)."""
        self.faults.set(names)

    def describe(self) -> dict[str, Any]:
        """Where to reach the simulator: what a separate process needs to talk to it."""
        return {"paperspace_url": self.paperspace_url, "sd_url": self.sd_url, "api_key": self.api_key,
                "machine_id": self.machine_id, "backend": self.backend}

    async def __aenter__(self) -> SimulatedGpu:
        await self._paperspace_server.start()
        if self._sd_server.port == 0:  # pick the web UI's port now, so its URL is known while it is down
            with _listening_socket(self._sd_server.host, 0) as probe:
                self._sd_server.port = probe.getsockname()[1]
        self._follower = asyncio.create_task(self._follow_machine())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
        await self._sd_down()
        await self._paperspace_server.stop()
        await self.machine.aclose()

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
        if "external_stop" in self.faults and self.machine.state == "ready":
            self.machine.stop()


async def run_simulator(settings: SimulatedSettings, host: str = "127.0.0.1", paperspace_port: int = 0,
                        sd_port: int = 0, backend: str = "a1111") -> None:
    """Serve the simulated GPU until cancelled, after printing where it is as one JSON line on stdout
    (`paperspace_url`, `sd_url`, `api_key`, `machine_id`, `backend`), for a separate process or the owner."""
    async with SimulatedGpu(settings, host=host, paperspace_port=paperspace_port, sd_port=sd_port,
                            backend=backend) as sim:
        print(json.dumps(sim.describe()), flush=True)
        await asyncio.Event().wait()


def serve_simulator(settings: SimulatedSettings, host: str = "127.0.0.1", paperspace_port: int = 0,
                    sd_port: int = 0, backend: str = "a1111") -> int:
    """Run the simulated GPU as a process of its own until SIGTERM or Ctrl-C; the exit status."""

    async def until_signalled() -> None:
        serving = asyncio.create_task(run_simulator(settings, host, paperspace_port, sd_port, backend))
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
