"""A machine found running at start-up, while no run is active: a crash left it on, and it is stopped.

It is stopped before anything else may run (the generator stays `shutting_down` until it is confirmed
off), and the billed time the crash left open in the ledger is closed at that confirmed stop, so the
time the machine ran unattended is counted too.
"""

from __future__ import annotations

import logging
import time

from avatargen.generator.billing import Billing
from avatargen.generator.machine import Machine
from avatargen.generator.states import States

log = logging.getLogger("avatargen.generator")


class OrphanRecovery:
    def __init__(self, machine: Machine, states: States, billing: Billing) -> None:
        self._machine = machine
        self._states = states
        self._billing = billing

    async def find(self) -> bool:
        """True when the machine is on while no run is active; the generator then waits for `stop`."""
        try:
            state = await self._machine.read()
        except Exception as exc:
            log.error("cannot read the machine's state at start-up: %s", exc)
            return False
        if not self._machine.provider.bills:
            return False  # a machine that is always on is no orphan
        if state == "off":
            self._close_interrupted_billing()
            return False
        log.warning("the machine is %s but no run is active: stopping it", state)
        self._states.move("shutting_down")  # no run can start until it is off
        return True

    async def stop(self) -> None:
        await self._machine.stop()
        self._close_interrupted_billing()
        self._states.move("idle")

    def _close_interrupted_billing(self) -> None:
        closed = self._billing.close_open(time.time())
        if closed:
            log.warning("billed time of interrupted run(s) %s closed at the confirmed stop", ", ".join(closed))
