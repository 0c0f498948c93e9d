"""A simulated GPU machine whose state moves with time, whichever cloud API it is seen through.

Start takes it off -> starting -> serviceready -> ready over `boot_delay`, stop takes it stopping -> off
over `stop_delay`, and every operation has an event going new -> in progress -> done (Paperspace shows
them; RunPod has none). It counts billed seconds: time in any state but off and terminated (a machine
deleted for good). The faults that happen to the machine itself (a start that fails, a boot that never
ends, a boot without its GPU) are decided here; see `avatargen.simulator.faults`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from avatargen.config import SimulatedSettings
from avatargen.simulator.faults import Faults
from avatargen.timestamps import utc_iso

NO_CAPACITY = "There is no capacity for this machine type in this region right now; try again later"
TERMINATED = "terminated"
UNBILLED = ("off", TERMINATED)
_SERVICEREADY_SHARE = 0.2  # the last fifth of a boot is spent in "serviceready"
_START_ERROR_AFTER = 0.3  # a start that fails does so after this share of boot_delay


def now_iso() -> str:
    return utc_iso(time.time(), timespec="milliseconds")


class MachineConflict(Exception):
    """An operation the machine cannot do in its current state."""


class SimulatedMachine:
    """One machine whose state moves with time, plus the events of its operations.

    Tests read `state` and `billed_seconds` directly and can await a state with `wait_for`. `stop_delay`
    overrides the settings' (a RunPod pod reads EXITED as soon as its stop is accepted, and its billing ends
    there, so the simulated pod stops at once). `gpus` is how
    many GPUs the last boot came with (none under the `zero_gpu` fault); `auto_shutdown_hours` is the
    provider-side backstop Paperspace offers (None: off).
    """

    def __init__(self, settings: SimulatedSettings, faults: Faults, *, machine_id: str, public_ip: str,
                 stop_delay: float | None = None) -> None:
        self.id = machine_id
        self.state = "off"
        self.public_ip = public_ip
        self.gpus = 1
        self.auto_shutdown_hours: float | None = 1.0
        self.created = now_iso()
        self.modified = self.created
        self.started: str | None = None
        self._settings = settings
        self._stop_delay = settings.stop_delay if stop_delay is None else stop_delay
        self._faults = faults
        self._events: dict[str, dict[str, Any]] = {}
        self._transition: asyncio.Task[None] | None = None
        self._pending: dict[str, Any] | None = None  # the event of the transition in progress
        self._billed = 0.0
        self._on_since: float | None = None
        self._changed = asyncio.Event()

    @property
    def billed_seconds(self) -> float:
        """Seconds spent in any state but off or terminated: the time a cloud bills for compute."""
        running = time.monotonic() - self._on_since if self._on_since is not None else 0.0
        return self._billed + running

    @property
    def on(self) -> bool:
        """Whether the machine is anywhere from starting to stopping (billed, and with an address)."""
        return self.state not in UNBILLED

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
        if self.state == TERMINATED:
            raise MachineConflict("the machine was terminated; it cannot be started again")
        event = self._new_event("start")
        if self.state != "off":
            self._set_event(event, "done")
            return event
        # The host's GPU may have been rented meanwhile (counted as a hit of the fault, as every fault is).
        self.gpus = 0 if self._faults.hit("zero_gpu") is not None else 1
        self.started = now_iso()
        self._set_state("starting")
        self._begin(self._boot(event), event)
        return event

    def stop(self) -> dict[str, Any]:
        """Begin a shutdown and return its event; stopping an off (or terminated) machine is harmless."""
        if self.state == "stopping" and self._pending is not None:
            return self._pending
        event = self._new_event("stop")
        if not self.on:
            self._set_event(event, "done")
            return event
        if self._pending is not None:  # a boot in progress is abandoned
            self._set_event(self._pending, "cancelled")
        self._set_state("stopping")
        self._begin(self._halt(event), event)
        return event

    def terminate(self) -> None:
        """Delete the machine for good, as its owner can from the console: it goes at once, is never billed
        again, and cannot start any more."""
        if self._transition is not None:
            self._transition.cancel()
        if self._pending is not None:
            self._finish(self._pending, "cancelled")
        self._set_state(TERMINATED)

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
        if self._faults.hit("start_error") is not None:
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
        await asyncio.sleep(self._stop_delay)
        self._finish(event, "done")
        self._set_state("off")

    def _set_state(self, state: str) -> None:
        now = time.monotonic()
        if self.state in UNBILLED and state not in UNBILLED:
            self._on_since = now
        elif state in UNBILLED and self._on_since is not None:
            self._billed += now - self._on_since
            self._on_since = None
        self.state = state
        self.modified = now_iso()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _new_event(self, name: str) -> dict[str, Any]:
        event_id = f"es{uuid.uuid4().hex[:10]}"
        event = {"id": event_id, "machineId": self.id, "name": name, "state": "new", "error": None,
                 "dtCreated": now_iso(), "dtStarted": None, "dtFinished": None}
        self._events[event_id] = event
        return event

    @staticmethod
    def _set_event(event: dict[str, Any], state: str, *, error: str | None = None) -> None:
        event["state"] = state
        if state == "in progress":
            event["dtStarted"] = now_iso()
        else:
            event["dtFinished"] = now_iso()
            event["error"] = error
