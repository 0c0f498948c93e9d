"""The GPU machine as the generator knows it: its last reported state, and a stop retried until confirmed.

Both a run's end and the start-up recovery of a machine found running stop it the same way: for as long
as it takes, because every minute it is not `off` costs the owner money.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

from avatargen.durations import format_duration
from avatargen.gpu.base import Provider
from avatargen.retry import backoff_delay

log = logging.getLogger("avatargen.generator")

STOP_RETRY_MAX = 60.0


class Machine:
    def __init__(self, provider: Provider, on_change: Callable[[str], None]) -> None:
        self.provider = provider
        self.state: str | None = None
        self._on_change = on_change

    def observe(self, state: str) -> None:
        """A state the provider reported while starting or stopping the machine."""
        self.state = state
        log.info("machine is %s", state)
        self._on_change(state)

    async def read(self) -> str:
        """Ask the provider for the machine's state now."""
        self.state = await self.provider.machine_state()
        return self.state

    async def stop(self) -> None:
        """Stop the machine and return once it is confirmed off, retrying (with backoff) until it is."""
        for attempt in itertools.count():
            try:
                await self.provider.stop(self.observe)
                return
            except Exception as exc:
                delay = backoff_delay(attempt, base=1.0, cap=STOP_RETRY_MAX)
                log.error("stopping the machine failed, retrying in %s: %s", format_duration(delay), exc)
                await asyncio.sleep(delay)
