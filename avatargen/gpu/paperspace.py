"""Paperspace machines: the v1 API client and the provider the generator drives.

The client speaks `https://api.paperspace.com/v1` (Bearer auth; the older `api.paperspace.io` with
`X-Api-Key` was retired in July 2024), with the retries of `avatargen.gpu.api`.

The provider turns that into start / wait until ready / stop. It waits for the state "ready" exactly
(`serviceready` comes earlier: the OS is up, Paperspace's agent is not), follows the start event so a
start that fails (no capacity) ends the wait at once rather than at the timeout, and keeps asking for
a stop until the machine is confirmed off, because an idle machine left on costs the owner money.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

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

log = logging.getLogger(__name__)

PLACEHOLDERS = ("public_ip",)  # what sd.url may use with a Paperspace machine
_ENDED = ("done", "error", "cancelled")  # event states after which nothing more happens


class PaperspaceError(ApiError):
    """A request the Paperspace API refused or could not answer."""

    vendor = "Paperspace"


class PaperspaceClient(CloudApiClient):
    """The Paperspace v1 machine routes avatargen uses, with retries."""

    error = PaperspaceError

    async def get_machine(self, machine_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/machines/{machine_id}")

    async def start(self, machine_id: str) -> tuple[dict[str, Any], dict[str, Any], float]:
        """Ask for a boot; returns at once with the machine, the event to follow, and when the machine may
        have started (`_send_since`)."""
        path = f"/machines/{machine_id}/start"
        response, since = await self._send_since("PATCH", path)
        return (*self._machine_and_event(self._object(response, "PATCH", path)), since)

    async def stop(self, machine_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Ask for a shutdown; returns at once with the machine and the event to follow."""
        return self._machine_and_event(await self._request("PATCH", f"/machines/{machine_id}/stop"))

    async def get_event(self, event_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/machine-events/{event_id}")

    async def update_machine(self, machine_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change machine settings (`PUT /machines/{id}`); the machine as it is now."""
        body = await self._request("PUT", f"/machines/{machine_id}", json=changes)
        if not isinstance(body.get("data"), dict):
            raise PaperspaceError(200, "BAD_RESPONSE", f"expected {{\"data\"}}, got keys {sorted(body)}")
        return body["data"]

    @staticmethod
    def _machine_and_event(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        if not isinstance(body.get("data"), dict) or not isinstance(body.get("event"), dict):
            raise PaperspaceError(200, "BAD_RESPONSE", f"expected {{\"data\", \"event\"}}, got keys {sorted(body)}")
        return body["data"], body["event"]


class PaperspaceProvider:
    """A Paperspace machine (or the simulated one, which speaks the same API) as a generator `Provider`.

    `sd_url` may contain `{public_ip}`, replaced by the machine's current public address: a dynamic
    address changes at each start. Paperspace's machine object has no price the ledger could trust, so
    the rate is `gpu.hourly_cost`. `auto_shutdown` (seconds, 0: leave it) is the machine's own backstop,
    set at start-up: it is the one safety net left if avatargen dies for good while the machine runs.
    """

    bills = True

    def __init__(self, client: PaperspaceClient, machine_id: str, *, sd_url: str, poll_every: float,
                 stop_timeout: float, name: str = "paperspace", hourly_cost: float = 0.0,
                 auto_shutdown: float = 0.0) -> None:
        self.name = name
        self._client = client
        self._machine_id = machine_id
        self._label = f"machine {machine_id}"
        self._sd_url = sd_url
        self._poll_every = poll_every
        self._stop_timeout = stop_timeout
        self._hourly_cost = hourly_cost
        self._auto_shutdown = auto_shutdown
        self._start_event: str | None = None
        self._public_ip: str | None = None

    def __repr__(self) -> str:
        return f"PaperspaceProvider(name={self.name!r}, machine_id={self._machine_id!r}, client={self._client!r})"

    async def machine_state(self) -> str:
        return (await self._read_machine())["state"]

    async def check(self) -> list[str]:
        """Read the machine's auto-shutdown backstop; set it when `auto_shutdown` asks; warn when it is off."""
        machine = await self._read_machine()
        hours = self._auto_shutdown / 3600
        wanted = {"autoShutdownEnabled": True, "autoShutdownTimeout": hours}
        if hours and {key: machine.get(key) for key in wanted} != wanted:
            try:
                machine = await self._client.update_machine(self._machine_id, wanted)
            except PaperspaceError as exc:
                raise MachineError(f"cannot set the auto-shutdown of {self._label}: {exc}") from exc
            log.info("%s: auto-shutdown set to %gh (gpu.paperspace.auto_shutdown)", self._label, hours)
        if not machine.get("autoShutdownEnabled"):
            return [f"auto-shutdown is off on {self._label}: if avatargen dies for good while the machine runs, "
                    "nothing stops it and it is billed until someone does. Set gpu.paperspace.auto_shutdown "
                    "(e.g. \"3h\") or enable it in the Paperspace console"]
        return []

    async def start(self) -> float:
        try:
            machine, event, since = await self._client.start(self._machine_id)
        except PaperspaceError as exc:
            raise MachineError(f"cannot start {self._label}: {exc}") from exc
        self._public_ip = machine.get("publicIp") or self._public_ip
        self._start_event = event.get("id")
        return since

    async def wait_ready(self, timeout: float, on_state: Callable[[str], None]) -> None:
        watch = StateWatch(on_state)

        async def ready() -> bool:
            state = (await self._read_machine())["state"]
            watch(state)
            if state != READY:
                await self._check_boot(state)
            return state == READY

        await poll_until_ready(self._label, timeout, self._poll_every, watch, ready)

    async def stop(self, on_state: Callable[[str], None]) -> None:
        watch = StateWatch(on_state)
        stop_event: str | None = None

        async def stopped() -> str | None:
            nonlocal stop_event
            if stop_event is None:
                _, event = await self._client.stop(self._machine_id)
                stop_event = event.get("id") or ""
            state = (await self._client.get_machine(self._machine_id))["state"]
            watch(state)
            if state == OFF:
                return None
            if stop_event:
                event = await self._client.get_event(stop_event)
                if event.get("state") in _ENDED:  # the stop is over: off by now, or ask again
                    state = (await self._client.get_machine(self._machine_id))["state"]  # it may have just gone off
                    watch(state)
                    if state == OFF:
                        return None
                    stop_event = None
                    return f"the stop ended {event.get('state')}: {event.get('error') or 'no reason'}"
            return ""

        await poll_until_stopped(self._label, self._stop_timeout, self._poll_every, watch, stopped, PaperspaceError)

    def hourly_rate(self) -> HourlyRate:
        return HourlyRate(self._hourly_cost, "config")

    def sd_url(self) -> str:
        url = fill(self._sd_url, Address(self._machine_id, self._public_ip))
        if url is None:
            raise MachineError(f"sd.url uses {{public_ip}} but {self._label} has no public address")
        return url

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _read_machine(self) -> dict[str, Any]:
        try:
            machine = await self._client.get_machine(self._machine_id)
        except PaperspaceError as exc:
            if exc.status in (401, 403, 404):
                raise MachineUnusable(f"cannot read {self._label}: {exc} (check gpu.paperspace.machine_id and "
                                      "the API key)") from exc
            raise MachineError(f"cannot read {self._label}: {exc}") from exc
        self._public_ip = machine.get("publicIp") or self._public_ip
        return machine

    async def _check_boot(self, state: str) -> None:
        """Fail the wait at once when the boot is over without the machine being ready."""
        event_state: str | None = "done"
        error: str | None = None
        if self._start_event is not None:
            try:
                event = await self._client.get_event(self._start_event)
            except PaperspaceError as exc:
                raise MachineError(f"cannot follow the start of {self._label}: {exc}") from exc
            event_state, error = event.get("state"), event.get("error")
        if event_state == "error":
            raise MachineError(f"{self._label} could not start: {error or 'no reason given'}")
        if event_state == "cancelled" or (event_state == "done" and state in (OFF, "stopping")):
            raise MachineError(f"{self._label} is {state}: its start was cancelled or someone stopped it")
