"""RunPod pods: the REST API v1 client and the provider the generator drives.

Three routes do the job (`GET /pods/{id}`, `POST /pods/{id}/start`, `POST /pods/{id}/stop`, Bearer key),
with the retries of `avatargen.gpu.api`. A pod has no "ready" state: `desiredStatus = RUNNING` says only
what RunPod drives it towards, so the provider calls a pod ready once it is RUNNING, has its GPU, and its
address (what `sd.url` needs of it) is known; the generator then probes the SD backend itself.

The traps it guards against: a stopped pod stays tied to its host, so when someone rented that host's GPU
meanwhile it resumes without one (the pod object says 0 GPUs) and must be stopped before anything is
generated; a TERMINATED pod or a wrong id can never start, which is the owner's to fix, not a thing to
retry; and a stopped pod still pays for its volume, which the owner is told at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from avatargen.api.money import money
from avatargen.config import SdSettings
from avatargen.gpu.address import Address, fill
from avatargen.gpu.api import ApiError, CloudApiClient
from avatargen.gpu.base import (
    OFF,
    READY,
    HourlyRate,
    MachineError,
    MachineUnusable,
    StateWatch,
    poll_until_ready,
    poll_until_stopped,
)

PLACEHOLDERS = ("pod_id", "public_ip", "port:N")  # what sd.url may use with a RunPod pod
TERMINATED = "terminated"
PROXY_LIMIT = 100.0  # seconds: RunPod's HTTP proxy (Cloudflare) cuts every request there, with a 524
VOLUME_PRICE = 0.20  # per GB and month, what RunPod bills for a stopped pod's volume disk
# One sampling step of one 512x512 image on a mid-range GPU (RTX A4000 class, SD 1.5): a rough figure for
# warning about the proxy's limit, not a promise.
SECONDS_PER_STEP = 0.1
_PROXY_URL = re.compile(r"^https://[^/]+\.proxy\.runpod\.net(:\d+)?(/|$)", re.IGNORECASE)


class RunPodError(ApiError):
    """A request the RunPod API refused or could not answer."""

    vendor = "RunPod"


class RunPodClient(CloudApiClient):
    """The RunPod REST v1 pod routes avatargen uses, with retries."""

    error = RunPodError

    async def get_pod(self, pod_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/pods/{pod_id}")

    async def start(self, pod_id: str) -> float:
        """Ask for the pod to start (or resume); returns once RunPod accepted it (its answer has no body), with
        when the pod may have started (`_send_since`)."""
        return (await self._send_since("POST", f"/pods/{pod_id}/start"))[1]

    async def stop(self, pod_id: str) -> None:
        """Ask for the pod to stop; harmless when it already is."""
        await self._send("POST", f"/pods/{pod_id}/stop")


def gpu_count(pod: dict[str, Any]) -> int:
    """How many GPUs the pod has now; a pod object without the GPU part has none."""
    gpu = pod.get("gpu")
    count = gpu.get("count") if isinstance(gpu, dict) else None
    return count if isinstance(count, int) else 0


def pod_rate(pod: dict[str, Any]) -> float | None:
    """The pod's real price per hour: `adjustedCostPerHr` (after savings plans), else `costPerHr`; None
    when the pod object says neither (then the ledger falls back to `gpu.hourly_cost`)."""
    for key in ("adjustedCostPerHr", "costPerHr"):
        try:
            rate = float(pod.get(key) or 0)  # the spec's own example is a string: "0.74"
        except (TypeError, ValueError):
            continue
        if rate > 0:
            return rate
    return None


def proxy_warning(sd: SdSettings, concurrency: int) -> str | None:
    """A warning when `sd.url` goes through RunPod's proxy and one txt2img may not answer well within its
    100 s limit: the web UI answers only once a whole batch is done, and a request waits for the ones
    queued before it (`concurrency` in flight)."""
    if not _PROXY_URL.match(sd.url):
        return None
    estimate = sd.steps * SECONDS_PER_STEP * sd.batch_size * sd.width * sd.height / 512**2 * concurrency
    if estimate <= PROXY_LIMIT / 2:
        return None
    return (f"sd.url goes through the RunPod proxy, which cuts every request at {PROXY_LIMIT:.0f} s (HTTP 524): a "
            f"txt2img of {sd.batch_size} images of {sd.width}x{sd.height} at {sd.steps} steps, with "
            f"{concurrency} in flight, may take about {estimate:.0f} s on a mid-range GPU. Lower sd.batch_size, "
            "sd.steps or generator.concurrency, or expose the port over TCP "
            "(sd.url = \"http://{public_ip}:{port:7860}\")")


class RunPodProvider:
    """A RunPod pod (or the simulated one, which speaks the same API) as a generator `Provider`.

    `sd_url` may contain `{pod_id}` (the proxy's address), `{public_ip}` and `{port:N}` (a port exposed
    over TCP). The ledger's rate is the pod's own price, `hourly_cost` only until the pod has said it.
    """

    bills = True

    def __init__(self, client: RunPodClient, pod_id: str, *, sd_url: str, poll_every: float, stop_timeout: float,
                 name: str = "runpod", hourly_cost: float = 0.0) -> None:
        self.name = name
        self._client = client
        self._pod_id = pod_id
        self._label = f"pod {pod_id}"
        self._sd_url = sd_url
        self._poll_every = poll_every
        self._stop_timeout = stop_timeout
        self._hourly_cost = hourly_cost
        self._rate: float | None = None
        self._address = Address(pod_id)

    def __repr__(self) -> str:
        return f"RunPodProvider(name={self.name!r}, pod_id={self._pod_id!r}, client={self._client!r})"

    async def machine_state(self) -> str:
        return self._state(await self._read_pod())

    async def check(self) -> list[str]:
        pod = await self._read_pod()
        self._refuse_terminated(pod)
        volume = pod.get("volumeInGb")
        if isinstance(volume, int) and volume > 0:
            return [f"{self._label} keeps its {volume} GB volume while stopped: RunPod bills it at about "
                    f"{money(VOLUME_PRICE)} per GB per month ({money(volume * VOLUME_PRICE)} a month), running or not"]
        return []

    async def start(self) -> float:
        self._refuse_terminated(await self._read_pod())
        try:
            return await self._client.start(self._pod_id)
        except RunPodError as exc:
            raise MachineError(f"cannot start {self._label}: {exc}") from exc

    async def wait_ready(self, timeout: float, on_state: Callable[[str], None]) -> None:
        watch = StateWatch(on_state)

        async def ready() -> bool:
            pod = await self._read_pod()
            state = self._state(pod)
            watch(state)
            self._refuse_terminated(pod)
            if state == OFF:
                raise MachineError(f"{self._label} is stopped: its start did not take, or someone stopped it")
            if gpu_count(pod) < 1:
                raise MachineError(
                    f"{self._label} came back without its GPU: RunPod resumed it on its old host, whose GPU someone "
                    "else rented while the pod was stopped. It is stopped again and nothing was generated. The fix: "
                    "keep the model on a network volume, create a new pod with that volume (any host with a free "
                    "GPU can run it), and set gpu.runpod.pod_id to the new pod's id")
            return state == READY

        await poll_until_ready(self._label, timeout, self._poll_every, watch, ready)

    async def stop(self, on_state: Callable[[str], None]) -> None:
        watch = StateWatch(on_state)
        requested = False

        async def stopped() -> str | None:
            nonlocal requested
            try:
                pod = await self._client.get_pod(self._pod_id)
            except RunPodError as exc:
                if exc.status != 404:
                    raise
                watch(TERMINATED)  # a pod that no longer exists bills nothing
                return None
            self._remember(pod)
            state = self._state(pod)
            if state in (OFF, TERMINATED):
                watch(state)
                return None
            if requested:  # RunPod accepted a stop, yet still drives the pod towards RUNNING: ask again
                watch(state)
                requested = False
                return "the pod is still RUNNING after its stop was accepted"
            await self._client.stop(self._pod_id)  # the state it had is no news: the generator knows it
            requested = True
            return ""

        await poll_until_stopped(self._label, self._stop_timeout, self._poll_every, watch, stopped, RunPodError)

    def hourly_rate(self) -> HourlyRate:
        if self._rate is None:
            return HourlyRate(self._hourly_cost, "config")
        return HourlyRate(self._rate, "provider")

    def sd_url(self) -> str:
        url = fill(self._sd_url, self._address)
        if url is None:
            raise MachineError(f"sd.url {self._sd_url!r} needs an address {self._label} does not have yet")
        return url

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _read_pod(self) -> dict[str, Any]:
        try:
            pod = await self._client.get_pod(self._pod_id)
        except RunPodError as exc:
            if exc.status == 404:
                raise MachineUnusable(f"{self._label} does not exist on RunPod ({exc}): check gpu.runpod.pod_id"
                                      ) from exc
            if exc.status in (401, 403):
                raise MachineUnusable(f"RunPod refuses the API key ({exc}): check the key in the environment "
                                      "variable gpu.runpod.api_key_env names") from exc
            raise MachineError(f"cannot read {self._label}: {exc}") from exc
        self._remember(pod)
        return pod

    def _remember(self, pod: dict[str, Any]) -> None:
        """Keep what the pod says about its price and address (both may change at each start)."""
        self._rate = pod_rate(pod) or self._rate
        mappings = pod.get("portMappings") or {}
        ports = {int(inside): int(outside) for inside, outside in mappings.items()
                 if str(inside).isdigit() and isinstance(outside, int)} if isinstance(mappings, dict) else {}
        self._address = Address(self._pod_id, pod.get("publicIp") or None, ports)

    def _state(self, pod: dict[str, Any]) -> str:
        """The pod's state in the words every provider uses: off, starting, ready, or terminated."""
        status = pod.get("desiredStatus")
        if status == "TERMINATED":
            return TERMINATED
        if status != "RUNNING":
            return OFF
        return READY if fill(self._sd_url, self._address) is not None else "starting"

    def _refuse_terminated(self, pod: dict[str, Any]) -> None:
        if pod.get("desiredStatus") == "TERMINATED":
            raise MachineUnusable(f"{self._label} is TERMINATED: it can never start again. Create a new pod from "
                                  "the same template (a network volume keeps the model between pods) and set "
                                  "gpu.runpod.pod_id to its id")
