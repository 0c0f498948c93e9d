"""A simulated Paperspace machine and the Paperspace v1 API around it (demo mode and tests).

It speaks the same HTTP as `https://api.paperspace.com/v1` for the routes avatargen uses (paths under
`/v1`, Bearer auth, the `{"code", "message"}` error bodies, state and event names), so the real
Paperspace client runs against it unchanged. The machine moves with time: start takes it off ->
starting -> serviceready -> ready over `boot_delay`, stop takes it stopping -> off over `stop_delay`,
and every operation has an event going new -> in progress -> done. It counts billed seconds (time in
any state but off), shown as the extra field `billedSeconds`. Faults are described in
`avatargen.simulator.faults`.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from avatargen.config import SimulatedSettings
from avatargen.simulator.faults import Faults, faults_from_body
from avatargen.timestamps import utc_iso

NO_CAPACITY = "There is no capacity for this machine type in this region right now; try again later"
_SERVICEREADY_SHARE = 0.2  # the last fifth of a boot is spent in "serviceready"
_START_ERROR_AFTER = 0.3  # a start that fails does so after this share of boot_delay
_EVENT_LIMIT_MAX = 100


def _now() -> str:
    return utc_iso(time.time(), timespec="milliseconds")


class MachineConflict(Exception):
    """An operation the machine cannot do in its current state (answered 409 CONFLICT)."""


class SimulatedMachine:
    """One Paperspace machine whose state moves with time, plus the events of its operations.

    Tests read `state` and `billed_seconds` directly and can await a state with `wait_for`.
    """

    def __init__(self, settings: SimulatedSettings, faults: Faults, *, machine_id: str, public_ip: str) -> None:
        self.id = machine_id
        self.state = "off"
        self._settings = settings
        self._faults = faults
        self._public_ip = public_ip
        self._events: dict[str, dict[str, Any]] = {}
        self._transition: asyncio.Task[None] | None = None
        self._pending: dict[str, Any] | None = None  # the event of the transition in progress
        self._billed = 0.0
        self._on_since: float | None = None
        self._modified = _now()
        self._changed = asyncio.Event()

    @property
    def billed_seconds(self) -> float:
        """Seconds spent in any state but off, the part of a machine's time Paperspace bills."""
        running = time.monotonic() - self._on_since if self._on_since is not None else 0.0
        return self._billed + running

    def to_json(self) -> dict[str, Any]:
        """The machine object as `GET /machines/{id}` returns it (flat)."""
        return {
            "id": self.id,
            "name": "avatargen-simulated",
            "state": self.state,
            "machineType": "A4000",
            "region": "East Coast (NY2)",
            "publicIp": None if self.state == "off" else self._public_ip,
            "publicIpType": "dynamic",
            "autoShutdownEnabled": True,
            "autoShutdownTimeout": 1,
            "dtModified": self._modified,
            "billedSeconds": round(self.billed_seconds, 3),
        }

    def next_change(self) -> asyncio.Event:
        """An event set at the next state change: take it before looking at `state` so no change is missed."""
        return self._changed

    async def wait_for(self, state: str) -> None:
        """Return once the machine is in `state`."""
        while self.state != state:
            await self.next_change().wait()

    def events(self, *, newest_first: bool = True) -> list[dict[str, Any]]:
        items = list(self._events.values())
        return items[::-1] if newest_first else items

    def event(self, event_id: str) -> dict[str, Any] | None:
        return self._events.get(event_id)

    def start(self) -> dict[str, Any]:
        """Begin a boot and return its event; starting a machine that is already on changes nothing."""
        if self.state == "stopping":
            raise MachineConflict("the machine is stopping; start it again once it is off")
        event = self._new_event("start")
        if self.state != "off":
            self._set_event(event, "done")
            return event
        self._set_state("starting")
        self._begin(self._boot(event), event)
        return event

    def stop(self) -> dict[str, Any]:
        """Begin a shutdown and return its event; stopping an off machine is harmless."""
        if self.state == "stopping" and self._pending is not None:
            return self._pending
        event = self._new_event("stop")
        if self.state == "off":
            self._set_event(event, "done")
            return event
        if self._pending is not None:  # a boot in progress is abandoned
            self._set_event(self._pending, "cancelled")
        self._set_state("stopping")
        self._begin(self._halt(event), event)
        return event

    async def aclose(self) -> None:
        """Cancel a transition in progress (the simulator is going away)."""
        if self._transition is not None:
            self._transition.cancel()
            await asyncio.gather(self._transition, return_exceptions=True)

    def _begin(self, transition: Coroutine[Any, Any, None], event: dict[str, Any]) -> None:
        """Run a transition in the background, replacing (cancelling) the one in progress."""
        if self._transition is not None:
            self._transition.cancel()
        self._pending = event
        self._transition = asyncio.create_task(transition)

    def _finish(self, event: dict[str, Any], state: str, *, error: str | None = None) -> None:
        self._set_event(event, state, error=error)
        self._pending = None

    async def _boot(self, event: dict[str, Any]) -> None:
        delay = self._settings.boot_delay
        self._set_event(event, "in progress")
        if "start_error" in self._faults:
            await asyncio.sleep(delay * _START_ERROR_AFTER)
            self._finish(event, "error", error=NO_CAPACITY)
            self._set_state("off")
            return
        if "never_ready" in self._faults:
            await asyncio.Event().wait()
        await asyncio.sleep(delay * (1 - _SERVICEREADY_SHARE))
        self._set_state("serviceready")
        await asyncio.sleep(delay * _SERVICEREADY_SHARE)
        self._finish(event, "done")
        self._set_state("ready")

    async def _halt(self, event: dict[str, Any]) -> None:
        self._set_event(event, "in progress")
        await asyncio.sleep(self._settings.stop_delay)
        self._finish(event, "done")
        self._set_state("off")

    def _set_state(self, state: str) -> None:
        now = time.monotonic()
        if self.state == "off" and state != "off":
            self._on_since = now
        elif state == "off" and self._on_since is not None:
            self._billed += now - self._on_since
            self._on_since = None
        self.state = state
        self._modified = _now()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _new_event(self, name: str) -> dict[str, Any]:
        event = {"id": f"es{uuid.uuid4().hex[:10]}", "machineId": self.id, "name": name, "state": "new",
                 "error": None, "dtCreated": _now(), "dtStarted": None, "dtFinished": None}
        self._events[event["id"]] = event
        return event

    @staticmethod
    def _set_event(event: dict[str, Any], state: str, *, error: str | None = None) -> None:
        event["state"] = state
        if state == "in progress":
            event["dtStarted"] = _now()
        else:
            event["dtFinished"] = _now()
            event["error"] = error


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


class SimulatedPaperspace:
    """The Paperspace v1 API over one simulated machine, as a Starlette app (`.app`)."""

    def __init__(self, machine: SimulatedMachine, faults: Faults, *, api_key: str) -> None:
        self.machine = machine
        self._faults = faults
        self._api_key = api_key
        self.app = Starlette(
            routes=[
                Route("/v1/machines/{machine_id}", self._get_machine, methods=["GET"]),
                Route("/v1/machines/{machine_id}/start", self._start, methods=["PATCH"]),
                Route("/v1/machines/{machine_id}/stop", self._stop, methods=["PATCH"]),
                Route("/v1/machine-events", self._list_events, methods=["GET"]),
                Route("/v1/machine-events/{event_id}", self._get_event, methods=["GET"]),
                Route("/_sim/faults", self._faults_route, methods=["GET", "PUT"]),
            ],
            exception_handlers={HTTPException: self._http_error},
        )

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "BAD_REQUEST")
        return _error(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")

    def _refuse(self, request: Request) -> Response | None:
        """The answer for a request that does not get through (bad key, injected fault), else None."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.encode(), self._api_key.encode()):
            return _error(401, "UNAUTHORIZED", "Missing or invalid API key: send Authorization: Bearer <key>")
        if request.url.path.startswith("/_sim/"):
            return None
        if (self._faults.hit("paperspace_429") or 0) % 3 == 1:
            return _error(429, "TOO_MANY_REQUESTS", "Too many requests, slow down", {"Retry-After": "1"})
        if (self._faults.hit("paperspace_500") or 0) % 3 == 1:
            return _error(500, "INTERNAL_SERVER_ERROR", "Internal server error")
        machine_id = request.path_params.get("machine_id")
        if machine_id is not None and machine_id != self.machine.id:
            return _error(404, "NOT_FOUND", f"Machine {machine_id} not found")
        return None

    async def _get_machine(self, request: Request) -> Response:
        return self._refuse(request) or JSONResponse(self.machine.to_json())

    async def _start(self, request: Request) -> Response:
        if refusal := self._refuse(request):
            return refusal
        try:
            event = self.machine.start()
        except MachineConflict as exc:
            return _error(409, "CONFLICT", str(exc))
        return JSONResponse({"data": self.machine.to_json(), "event": event})

    async def _stop(self, request: Request) -> Response:
        if refusal := self._refuse(request):
            return refusal
        if (self._faults.hit("stop_500") or 0) % 4 != 0:
            return _error(500, "INTERNAL_SERVER_ERROR", "Internal server error while stopping the machine")
        event = self.machine.stop()
        return JSONResponse({"data": self.machine.to_json(), "event": event})

    async def _get_event(self, request: Request) -> Response:
        if refusal := self._refuse(request):
            return refusal
        event = self.machine.event(request.path_params["event_id"])
        if event is None:
            return _error(404, "NOT_FOUND", f"Machine event {request.path_params['event_id']} not found")
        return JSONResponse(event)

    async def _list_events(self, request: Request) -> Response:
        """Events newest first, `limit` at a time; `nextPage` is the cursor to pass as `after`."""
        if refusal := self._refuse(request):
            return refusal
        raw_limit = request.query_params.get("limit", "20")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= _EVENT_LIMIT_MAX:
            return _error(400, "BAD_REQUEST", f"limit must be an integer from 1 to {_EVENT_LIMIT_MAX}, "
                                              f"got {raw_limit!r}")
        limit = int(raw_limit)
        items = self.machine.events()
        wanted = request.query_params.get("machineId")
        if wanted is not None:
            items = [item for item in items if item["machineId"] == wanted]
        after = request.query_params.get("after")
        if after is not None:
            ids = [item["id"] for item in items]
            if after not in ids:
                return _error(400, "BAD_REQUEST", f"unknown page cursor {after!r}")
            items = items[ids.index(after) + 1:]
        page, more = items[:limit], len(items) > limit
        return JSONResponse({"hasMore": more, "items": page, "nextPage": page[-1]["id"] if more else None})

    async def _faults_route(self, request: Request) -> Response:
        if refusal := self._refuse(request):
            return refusal
        if request.method == "PUT":
            try:
                self._faults.set(faults_from_body(await request.body()))
            except ValueError as exc:
                return _error(400, "BAD_REQUEST", str(exc))
        return JSONResponse({"faults": self._faults.names})
