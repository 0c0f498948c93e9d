"""The Paperspace v1 API over a simulated machine (demo mode and tests).

It speaks the same HTTP as `https://api.paperspace.com/v1` for the routes avatargen uses (paths under
`/v1`, Bearer auth, the `{"code", "message"}` error bodies, state and event names), and every answer
is valid under the response schema of the same route in Paperspace's OpenAPI document (the machine
object carries all of its required fields), so the real client could not tell it apart. The machine's
billed seconds are the simulator's own: `GET /_sim/machine`.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from avatargen.simulator.faults import Faults
from avatargen.simulator.machine import MachineConflict, SimulatedMachine
from avatargen.simulator.service import SimRoute, api_fault, bearer_key_matches, machine_report, simulated_app

_EVENT_LIMIT_MAX = 100
_CODES = {400: "BAD_REQUEST", 401: "UNAUTHORIZED", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 409: "CONFLICT",
          429: "TOO_MANY_REQUESTS", 500: "INTERNAL_SERVER_ERROR"}
_GIB = 1024**3
# What `PUT /machines/{id}` may change here, with the JSON type each takes (bool is no number here).
_UPDATABLE: dict[str, tuple[type, ...]] = {"name": (str,), "autoShutdownEnabled": (bool,),
                                           "autoShutdownTimeout": (int, float), "autoShutdownForce": (bool,)}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": _CODES.get(status, "ERROR"), "message": message}, status_code=status,
                        headers=headers)


class SimulatedPaperspace:
    """The Paperspace v1 API over one simulated machine, as a Starlette app (`.app`)."""

    def __init__(self, machine: SimulatedMachine, faults: Faults, *, api_key: str, hourly_price: float) -> None:
        self.machine = machine
        self._faults = faults
        self._api_key = api_key
        self._hourly_price = hourly_price
        self.app: Starlette = simulated_app(
            [
                SimRoute("/v1/machines/{machine_id}", self._get_machine),
                SimRoute("/v1/machines/{machine_id}", self._update_machine, ("PUT",)),
                SimRoute("/v1/machines/{machine_id}/start", self._start, ("PATCH",)),
                SimRoute("/v1/machines/{machine_id}/stop", self._stop, ("PATCH",)),
                SimRoute("/v1/machine-events", self._list_events),
                SimRoute("/v1/machine-events/{event_id}", self._get_event),
            ],
            faults=faults, gate=self._refuse, sim_gate=self._unauthorized, error=_error,
            sim_routes=[SimRoute("/_sim/machine", machine_report(machine))],
        )

    def to_json(self) -> dict[str, Any]:
        """The machine object as `GET /machines/{id}` returns it (flat)."""
        machine = self.machine
        hours = machine.auto_shutdown_hours
        return {
            "id": machine.id,
            "name": "avatargen-simulated",
            "state": machine.state,
            "os": "Ubuntu 22.04",
            "machineType": "A4000",
            "agentType": "LinuxAgent",
            "cpus": 8,
            "ram": 45 * _GIB,
            "storageTotal": 100 * _GIB,
            "storageUsed": 38 * _GIB,
            "accelerators": [{"name": "A4000", "memory": 16 * _GIB, "count": 1}],
            "region": "ny2",
            "privateIp": None,
            "networkId": None,
            "publicIp": machine.public_ip if machine.on else None,
            "publicIpType": "dynamic",
            "autoShutdownEnabled": hours is not None,
            "autoShutdownTimeout": hours,
            "autoShutdownForce": False if hours is not None else None,
            "autoSnapshotEnabled": False,
            "autoSnapshotFrequency": "daily",  # the document's enum has no null, though it says nullable
            "autoSnapshotSaveCount": None,
            "updatesPending": False,
            "restorePointEnabled": False,
            "restorePointFrequency": "shutdown",
            "restorePointSnapshotId": None,
            "usageRate": self._hourly_price,
            "storageRate": 7.0,
            "dtCreated": machine.created,
            "dtModified": machine.modified,
            "dtDeleted": None,
            "reservation": None,
        }

    def _unauthorized(self, request: Request) -> Response | None:
        if bearer_key_matches(request, self._api_key):
            return None
        return _error(401, "Missing or invalid API key: send Authorization: Bearer <key>")

    def _refuse(self, request: Request) -> Response | None:
        """The answer for a request that does not get through (bad key, injected fault), else None."""
        if refusal := self._unauthorized(request):
            return refusal
        if status := api_fault(self._faults):
            if status == 429:
                return _error(429, "Too many requests, slow down", {"Retry-After": "1"})
            return _error(500, "Internal server error")
        machine_id = request.path_params.get("machine_id")
        if machine_id is not None and machine_id != self.machine.id:
            return _error(404, f"Machine {machine_id} not found")
        return None

    async def _get_machine(self, request: Request) -> Response:
        return JSONResponse(self.to_json())

    async def _update_machine(self, request: Request) -> Response:
        """`PUT /machines/{id}`: the auto-shutdown backstop and the name (the parts avatargen may change)."""
        try:
            changes = json.loads(await request.body())
        except ValueError:
            changes = None
        if not isinstance(changes, dict):
            return _error(400, "send a JSON object of the machine settings to change")
        for key, value in changes.items():
            kinds = _UPDATABLE.get(key)
            if kinds is None:
                return _error(400, f"{key!r} cannot be changed here (the simulator changes {', '.join(_UPDATABLE)})")
            if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
                return _error(400, f"{key} must be a {kinds[0].__name__}, got {value!r}")
        if "autoShutdownTimeout" in changes and changes["autoShutdownTimeout"] <= 0:
            return _error(400, "autoShutdownTimeout must be a positive number of hours")
        enabled = changes.get("autoShutdownEnabled", self.machine.auto_shutdown_hours is not None)
        hours = changes.get("autoShutdownTimeout", self.machine.auto_shutdown_hours or 1)
        self.machine.auto_shutdown_hours = float(hours) if enabled else None
        return JSONResponse({"data": self.to_json()})

    async def _start(self, request: Request) -> Response:
        try:
            event = self.machine.start()
        except MachineConflict as exc:
            return _error(409, str(exc))
        return JSONResponse({"data": self.to_json(), "event": event})

    async def _stop(self, request: Request) -> Response:
        if (self._faults.hit("stop_500") or 0) % 4 != 0:
            return _error(500, "Internal server error while stopping the machine")
        event = self.machine.stop()
        return JSONResponse({"data": self.to_json(), "event": event})

    async def _get_event(self, request: Request) -> Response:
        event = self.machine.event(request.path_params["event_id"])
        if event is None:
            return _error(404, f"Machine event {request.path_params['event_id']} not found")
        return JSONResponse(event)

    async def _list_events(self, request: Request) -> Response:
        """Events newest first, `limit` at a time; `nextPage` is the cursor to pass as `after`."""
        raw_limit = request.query_params.get("limit", "20")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= _EVENT_LIMIT_MAX:
            return _error(400, f"limit must be an integer from 1 to {_EVENT_LIMIT_MAX}, got {raw_limit!r}")
        limit = int(raw_limit)
        items = self.machine.events()
        wanted = request.query_params.get("machineId")
        if wanted is not None:
            items = [item for item in items if item["machineId"] == wanted]
        after = request.query_params.get("after")
        if after is not None:
            ids = [item["id"] for item in items]
            if after not in ids:
                return _error(400, f"unknown page cursor {after!r}")
            items = items[ids.index(after) + 1:]
        page, more = items[:limit], len(items) > limit
        return JSONResponse({"hasMore": more, "items": page, "nextPage": page[-1]["id"] if more else None})
