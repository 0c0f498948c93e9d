"""The GPU machine as the generator knows it: its last reported state, what the provider's start-up look at
it found, and a stop retried until confirmed.

Both a run's end and the start-up recovery of a machine found running stop it the same way: for as long
as it takes, because every minute it is not `off` costs the owner money. A machine that can never run as
configured (a terminated pod, a wrong id, a refused key) is remembered as such, so that no run is started
on it again: the owner must fix the configuration, and a retry loop would only fail again.

The one stop that is not retried: one refused because this process lost the generator lease (LeaseLost,
from the provider's fence). The machine is then the new holder's, maybe in the middle of its run; the new
holder stopped what this one left on when it took over. A lease that only could not be confirmed (Redis
did not answer for its ttl) is no reason to leave the machine billing: nobody holds it, so the stop goes
ahead without the fence.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable

from avatargen.durations import format_duration
from avatargen.gpu.api import without_the_lease
from avatargen.gpu.base import MachineUnusable, Provider
from avatargen.retry import backoff_delay
from avatargen.storage.errors import LeaseLost, LeaseUnconfirmed

log = logging.getLogger("avatargen.generator")

STOP_RETRY_MAX = 60.0


class Machine:
    def __init__(self, provider: Provider, on_change: Callable[[str], None]) -> None:
        self.provider = provider
        self.state: str | None = None
        self.notes: list[str] = []  # what the provider's start-up check says the owner should know
        self.cannot_run: str | None = None  # why no run may start on it, for the owner
        self._on_change = on_change

    def observe(self, state: str) -> None:
        """A state the provider reported while starting or stopping the machine."""
        self.state = state
        log.info("machine is %s", state)
        self._on_change(state)

    async def check(self) -> None:
        """The provider's look at the machine at start-up: notes for the owner (logged, and in the status), or
        the reason it can never run as configured."""
        try:
            self.notes = await self.provider.check()
        except MachineUnusable as exc:
            self.found_unusable(exc)
        except Exception as exc:  # an API that does not answer now may well answer at the first run
            log.warning("cannot check the machine at start-up: %s", exc)
        for note in self.notes:
            log.warning("%s", note)

    def found_unusable(self, exc: MachineUnusable) -> None:
        self.cannot_run = f"the machine cannot run: {exc}"
        log.error("%s; no run starts until the configuration is fixed and the server restarted", exc)

    async def read(self) -> str:
        """Ask the provider for the machine's state now."""
        self.state = await self.provider.machine_state()
        return self.state

    async def stop(self) -> None:
        """Stop the machine and return once it is confirmed off, retrying (with backoff) until it is.

        Without the lease, the machine is left to the replica that took it over (its run may be on). When
        Redis, not another replica, is why the lease could not be confirmed, nobody can take it over, nor stop
        the machine, before Redis answers: the stop goes ahead, as a stop costs nothing and an outage may
        last. Only a replica cut off from a Redis that the others still reach could stop another's run then."""
        fenced = True
        for attempt in itertools.count():
            try:
                with contextlib.nullcontext() if fenced else without_the_lease():
                    await self.provider.stop(self.observe)
                return
            except LeaseUnconfirmed as exc:
                log.error("%s: the machine is stopped anyway, as nobody else can stop it until Redis answers", exc)
                fenced = False
            except LeaseLost as exc:
                log.error("lost the generator lease, so the machine is not stopped from here: it is the new "
                          "holder's (%s)", exc)
                return
            except Exception as exc:
                delay = backoff_delay(attempt, base=1.0, cap=STOP_RETRY_MAX)
                log.error("stopping the machine failed, retrying in %s: %s", format_duration(delay), exc)
                await asyncio.sleep(delay)
