"""What the generator needs from a GPU machine, whoever rents it out.

A run starts the machine, waits until it is ready, generates, and stops it, so each provider offers
exactly that, with state names taken from Paperspace. Every failure a provider reports is a
`MachineError` worded for the owner, so the generator never deals with one cloud's error types. The
waiting loops every renting provider runs (until ready, until confirmed off) live here once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from avatargen.durations import format_duration
from avatargen.retry import backoff_delay

if TYPE_CHECKING:
    from avatargen.config import Settings
    from avatargen.sd.base import SdBackend

READY = "ready"
OFF = "off"

log = logging.getLogger(__name__)


class MachineError(Exception):
    """The machine could not be started, reached or stopped; the message says why, for the owner."""


class MachineTimeout(MachineError):
    """The machine did not become ready within the allowed time."""


class MachineUnusable(MachineError):
    """The machine can never run as configured (no such machine, terminated, the key refused): the owner
    must fix the configuration; asking again would only fail again."""


@dataclass(frozen=True)
class HourlyRate:
    """What an hour of the machine costs, and who said so: the provider's own API, or `gpu.hourly_cost`."""

    amount: float
    source: Literal["provider", "config"]


class Provider(Protocol):
    """A GPU machine that can be started, waited for and stopped (see each method's promise)."""

    name: str  # "paperspace" | "runpod" | "always_on" | "simulated"
    bills: bool  # whether time on the machine costs money (False for a machine the owner runs anyway)

    async def machine_state(self) -> str:
        """The machine's state in Paperspace's words ("off", "starting", "ready", ...)."""
        ...

    async def check(self) -> list[str]:
        """Look at the machine once, at start-up: raise MachineUnusable when it can never run as configured,
        else return what the owner should know (a safety net that is off, storage billed while it is off)."""
        ...

    async def start(self) -> float:
        """Ask for the machine to boot; returns as soon as the request is accepted, with when (epoch seconds)
        the provider's billing may have started: the accepted request's sending, or an earlier one whose
        outcome is unknown (a refused request starts nothing)."""
        ...

    async def wait_ready(self, timeout: float, on_state: Callable[[str], None]) -> None:
        """Return once the machine is exactly "ready"; `on_state` hears every state change.

        Raises MachineError at once when the boot fails, MachineTimeout after `timeout` seconds.
        """
        ...

    async def stop(self, on_state: Callable[[str], None]) -> None:
        """Stop the machine and return once it is confirmed off (harmless when it already is).

        Retries until the provider's stop timeout, then raises MachineError: the owner must step in.
        """
        ...

    def hourly_rate(self) -> HourlyRate:
        """The price of an hour on the machine, for the cost ledger."""
        ...

    def sd_url(self) -> str:
        """Where the Stable Diffusion web UI answers once the machine is ready."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class Serverless(Protocol):
    """A provider with no machine of its own: it runs jobs on workers a cloud starts and stops (RunPod
    Serverless). It supplies the SD backend that sends the jobs, bills worker time rather than the run's
    wall-clock time, and has more to tell the owner than a machine state."""

    def sd_backend(self, settings: Settings) -> Callable[[str], SdBackend]:
        """What makes the run's SD backend (the address `sd_url` gives is the endpoint's)."""
        ...

    def worker_seconds(self) -> float:
        """Worker seconds billed for the jobs of the run under way (or the last one), as far as known."""
        ...

    def detail(self) -> dict[str, Any]:
        """What the status says beside the machine state: the phase in the cloud's words, its health, how
        the cost is estimated."""
        ...

    def last_activity(self) -> float | None:
        """When a job of ours was last sent or seen ending, as the journal on disk says (None: never): for a
        run a crash interrupted, the end of its billing, rather than the hour the server came back."""
        ...


class StateWatch:
    """Passes a machine state on to `on_state` only when it differs from the last one seen."""

    def __init__(self, on_state: Callable[[str], None]) -> None:
        self._on_state = on_state
        self.last: str | None = None

    def __call__(self, state: str) -> None:
        if state != self.last:
            self.last = state
            self._on_state(state)


async def poll_until_ready(machine: str, timeout: float, poll_every: float, watch: StateWatch,
                           ready: Callable[[], Awaitable[bool]]) -> None:
    """Ask `ready()` every `poll_every` until it says yes (it raises MachineError when the boot failed);
    MachineTimeout after `timeout` seconds. `machine` names it in the message ("machine ps123")."""
    try:
        async with asyncio.timeout(timeout):
            while not await ready():
                await asyncio.sleep(poll_every)
    except TimeoutError:
        raise MachineTimeout(f"{machine} was not ready after {format_duration(timeout)} "
                             f"(still {watch.last or 'unknown'})") from None


async def poll_until_stopped(machine: str, timeout: float, poll_every: float, watch: StateWatch,
                             stopped: Callable[[], Awaitable[str | None]], api_error: type[Exception]) -> None:
    """Ask `stopped()` every `poll_every` until it returns None (confirmed off); meanwhile it returns "" while
    the stop is on its way, or what went wrong (kept for the final message, e.g. "the stop ended in error").

    An `api_error` is retried with backoff: an idle machine left on costs the owner money, so only the
    stop timeout ends the attempts, with a MachineError telling the owner to step in.
    """
    problem = "no answer from the API yet"
    failures = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    outcome = await stopped()
                except api_error as exc:
                    problem = str(exc)
                    delay = backoff_delay(failures, base=poll_every)
                    log.warning("stopping %s: %s; trying again in %.1fs", machine, exc, delay)
                    failures += 1
                    await asyncio.sleep(delay)
                    continue
                if outcome is None:
                    return
                problem, failures = outcome or problem, 0
                await asyncio.sleep(poll_every)
    except TimeoutError:
        raise MachineError(
            f"could not confirm that {machine} stopped within {format_duration(timeout)} "
            f"(last state: {watch.last or 'unknown'}; {problem}): stop it by hand, it is billed while it is on"
        ) from None
