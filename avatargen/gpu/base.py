"""What the refill engine needs from a GPU machine, whoever rents it out.

A run starts the machine, waits until it is ready, generates, and stops it, so each provider offers
exactly that, with state names taken from Paperspace. Every failure a provider reports is a
`MachineError` worded for the owner, so the engine never deals with one cloud's error types.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

READY = "ready"
OFF = "off"


class MachineError(Exception):
    """The machine could not be started, reached or stopped; the message says why, for the owner."""


class MachineTimeout(MachineError):
    """The machine did not become ready within the allowed time."""


class Provider(Protocol):
    """A GPU machine that can be started, waited for and stopped (see each method's promise)."""

    name: str  # "paperspace" | "always_on" | "simulated"
    bills: bool  # whether time on the machine costs money (False for a machine the owner runs anyway)

    async def machine_state(self) -> str:
        """The machine's state in Paperspace's words ("off", "starting", "ready", ...)."""
        ...

    async def start(self) -> None:
        """Ask for the machine to boot; returns as soon as the request is accepted."""
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

    def sd_url(self) -> str:
        """Where the Stable Diffusion web UI answers once the machine is ready."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
