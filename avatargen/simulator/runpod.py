"""The RunPod REST API v1 over a simulated machine, seen as a pod (demo mode and tests).

It speaks the same HTTP as `https://rest.runpod.io/v1` for the routes avatargen uses (`GET /pods/{id}`,
`POST /pods/{id}/start`, `POST /pods/{id}/stop`, Bearer auth), and every answer is valid under the
response schema of the same route in RunPod's OpenAPI document. The pod object is what RunPod shows:
`desiredStatus` (RUNNING / EXITED / TERMINATED: what RunPod drives the pod towards), no `publicIp`
and empty `portMappings` while the pod initialises, the price per hour, and the GPU count, which
reads 0 after a resume on a host whose GPU was rented meanwhile (the `zero_gpu` fault).
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from avatargen.simulator.faults import Faults
from avatargen.simulator.machine import TERMINATED, MachineConflict, SimulatedMachine
from avatargen.simulator.service import (
    SimRoute,
    bearer_key_matches,
    machine_report,
    refuse_runpod_request,
    simulated_app,
)

NO_FREE_GPU = "There are not enough free GPUs on the host machine to start this pod."
_RUNNING = ("starting", "serviceready", "ready")
_ADDRESSED = ("serviceready", "ready")  # the container runs: its public address and ports are known
_VOLUME_GB = 50


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def desired_status(state: str) -> str:
    if state == TERMINATED:
        return "TERMINATED"
    return "RUNNING" if state in _RUNNING else "EXITED"


class SimulatedRunPod:
    """The RunPod pod routes over one simulated machine, as a Starlette app (`.app`).

    `ports` maps the pod's internal ports to the public ones (the runner fills in the web UI's port).
    """

    def __init__(self, machine: SimulatedMachine, faults: Faults, *, api_key: str, hourly_price: float) -> None:
        self.machine = machine
        self.ports: dict[int, int] = {}
        self._faults = faults
        self._api_key = api_key
        self._hourly_price = hourly_price
        self.app: Starlette = simulated_app(
            [
                SimRoute("/v1/pods/{pod_id}", self._get_pod),
                SimRoute("/v1/pods/{pod_id}/start", self._start, ("POST",)),
                SimRoute("/v1/pods/{pod_id}/stop", self._stop, ("POST",)),
            ],
            faults=faults, gate=self._refuse, sim_gate=self._unauthorized, error=_error,
            sim_routes=[SimRoute("/_sim/machine", machine_report(machine))],
        )

    def to_json(self) -> dict[str, Any]:
        """The Pod object as `GET /pods/{id}` returns it."""
        machine = self.machine
        status = desired_status(machine.state)
        addressed = machine.state in _ADDRESSED
        change = {"RUNNING": "Rented by User", "EXITED": "Exited by User", "TERMINATED": "Terminated by User"}
        return {
            "id": machine.id,
            "name": "avatargen-simulated",
            "desiredStatus": status,
            "lastStatusChange": f"{change[status]}: {machine.modified}",
            "lastStartedAt": machine.started or machine.created,
            "publicIp": machine.public_ip if addressed else None,  # "" would not be the ipv4 the schema asks
            "portMappings": {str(inside): outside for inside, outside in self.ports.items()} if addressed else {},
            "ports": [f"{inside}/tcp" for inside in self.ports],
            "costPerHr": self._hourly_price,
            "adjustedCostPerHr": self._hourly_price,
            "gpu": {"id": "NVIDIA RTX A4000", "count": machine.gpus, "displayName": "RTX A4000",
                    "securePrice": self._hourly_price, "communityPrice": self._hourly_price},
            "machineId": "simhost01",
            "image": "avatargen/sd-webui:simulated",
            "env": {},
            "interruptible": False,
            "locked": False,
            "containerDiskInGb": 20,
            "volumeInGb": _VOLUME_GB,
            "volumeMountPath": "/workspace",
            "memoryInGb": 31,
            "vcpuCount": 8,
            "savingsPlans": [],
        }

    def _unauthorized(self, request: Request) -> Response | None:
        return None if bearer_key_matches(request, self._api_key) else _error(401, "Unauthorized")

    def _refuse(self, request: Request) -> Response | None:
        """The answer for a request that does not get through (bad key, injected fault, wrong pod), else None."""
        if refusal := refuse_runpod_request(request, self._api_key, self._faults, _error):
            return refusal
        pod_id = request.path_params.get("pod_id")
        if pod_id is not None and pod_id != self.machine.id:
            return _error(404, "pod not found") if request.method == "GET" else _error(400, "Invalid Pod ID.")
        return None

    async def _get_pod(self, request: Request) -> Response:
        return JSONResponse(self.to_json())

    async def _start(self, request: Request) -> Response:
        """200 once accepted (no body: the spec promises none); the pod object tells the rest."""
        if self.machine.state == TERMINATED:
            return _error(400, f"pod {self.machine.id} has been terminated and cannot be started")
        if self.machine.state == "off" and self._faults.hit("start_error") is not None:
            return _error(400, NO_FREE_GPU)
        try:
            self.machine.start()
        except MachineConflict as exc:
            return _error(400, str(exc))
        return Response(status_code=200)

    async def _stop(self, request: Request) -> Response:
        if (self._faults.hit("stop_500") or 0) % 4 != 0:
            return _error(500, "internal server error while stopping the pod")
        self.machine.stop()
        return Response(status_code=200)
