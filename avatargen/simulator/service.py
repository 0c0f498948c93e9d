"""How every simulated service is put together: the vendor's route table behind the vendor's gate, errors
in the vendor's shape, and the simulator's own `/_sim/` routes beside them.

A gate is what stands before a vendor's routes on the real service (an API key, routes not mounted
yet while the web UI boots, a rate limit or an outage injected as a fault): it answers for the route
when the request does not get through, else returns None. The `/_sim/` routes (switching faults, the
machine's billed time) pass `sim_gate` only, so an injected outage never hides the simulator's controls.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from avatargen.simulator.faults import Faults, faults_from_body

if TYPE_CHECKING:
    from avatargen.simulator.machine import SimulatedMachine

Handler = Callable[[Request], Awaitable[Response]]
Gate = Callable[[Request], Response | None]
ErrorShape = Callable[[int, str], Response]  # (status, message) -> the vendor's error answer


@dataclass(frozen=True)
class SimRoute:
    path: str
    handler: Handler
    methods: tuple[str, ...] = ("GET",)


def bearer_key_matches(request: Request, api_key: str) -> bool:
    """Whether the request carries `Authorization: Bearer <api_key>` (compared in constant time)."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(key.encode(), api_key.encode())


def api_fault(faults: Faults) -> int | None:
    """The status an injected cloud-API fault answers this request with (429 or 500), or None.

    `api_429` and `api_500` strike every third request, the first included, so they are deterministic.
    """
    if (faults.hit("api_429") or 0) % 3 == 1:
        return 429
    if (faults.hit("api_500") or 0) % 3 == 1:
        return 500
    return None


def refuse_runpod_request(request: Request, api_key: str, faults: Faults, error: ErrorShape) -> Response | None:
    """What RunPod's APIs (pods, serverless) answer a request that does not get through: 401 without the key,
    an injected 429 (with `Retry-After: 1`) or 500; None when it gets through."""
    if not bearer_key_matches(request, api_key):
        return error(401, "Unauthorized")
    if status := api_fault(faults):
        response = error(status, "rate limit exceeded" if status == 429 else "internal server error")
        if status == 429:
            response.headers["Retry-After"] = "1"
        return response
    return None


def machine_report(machine: SimulatedMachine) -> Handler:
    """`GET /_sim/machine`: what only the simulator knows, the machine's state in its own words and the
    seconds a cloud would bill (vendors' objects have no room for it: their schemas allow no extra field), and
    the start and stop calls it received, oldest first (who touched the machine when)."""

    async def report(request: Request) -> Response:
        return JSONResponse({"id": machine.id, "state": machine.state,
                             "billedSeconds": round(machine.billed_seconds, 3),
                             "calls": [event["name"] for event in machine.events(newest_first=False)]})

    return report


def simulated_app(routes: Sequence[SimRoute], *, faults: Faults, gate: Gate, sim_gate: Gate, error: ErrorShape,
                  sim_routes: Sequence[SimRoute] = ()) -> Starlette:
    """A Starlette app serving `routes` behind `gate`, plus `GET|PUT /_sim/faults` and `sim_routes` behind
    `sim_gate`; unknown routes and methods answer in the vendor's error shape."""

    def behind(check: Gate, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            return check(request) or await handler(request)

        return endpoint

    async def switch_faults(request: Request) -> Response:
        if request.method == "PUT":
            try:
                faults.set(faults_from_body(await request.body()))
            except ValueError as exc:
                return error(400, str(exc))
        # How often each fault struck since the set last changed: the soak benchmark reads it before switching.
        return JSONResponse({"faults": faults.names, "hits": {name: faults.hits(name) for name in faults.names}})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error(exc.status_code, str(exc.detail))

    own = [SimRoute("/_sim/faults", switch_faults, ("GET", "PUT")), *sim_routes]
    return Starlette(
        routes=[Route(route.path, behind(gate, route.handler), methods=list(route.methods)) for route in routes]
        + [Route(route.path, behind(sim_gate, route.handler), methods=list(route.methods)) for route in own],
        exception_handlers={HTTPException: http_error},
    )
