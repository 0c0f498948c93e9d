"""A machine the owner keeps running themselves (a home GPU, a server paid by the month).

Nothing to start or stop and nothing billed per minute: a run goes straight to probing the SD web UI.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from avatargen.gpu.base import READY, HourlyRate


class AlwaysOnProvider:
    """A provider whose machine is always ready and never stopped."""

    name = "always_on"
    bills = False

    def __init__(self, sd_url: str) -> None:
        self._sd_url = sd_url

    def __repr__(self) -> str:
        return f"AlwaysOnProvider(sd_url={self._sd_url!r})"

    async def machine_state(self) -> str:
        return READY

    async def check(self) -> list[str]:
        """Nothing to look at: the SD backend's own probe says whether the machine is there."""
        return []

    async def start(self) -> float:
        """Nothing to boot (and nothing billed)."""
        return time.time()

    async def wait_ready(self, timeout: float, on_state: Callable[[str], None]) -> None:
        on_state(READY)

    async def stop(self, on_state: Callable[[str], None]) -> None:
        """Leave the machine running: the owner runs it anyway and it costs nothing extra."""

    def hourly_rate(self) -> HourlyRate:
        """Nothing extra is billed for a machine the owner runs anyway."""
        return HourlyRate(0.0, "provider")

    def sd_url(self) -> str:
        return self._sd_url

    async def aclose(self) -> None:
        """No connections to release."""
