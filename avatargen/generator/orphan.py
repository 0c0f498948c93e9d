"""A machine found running at start-up, while no run is active: a crash left it on, and it is stopped.

It is stopped before anything else may run (the generator stays `shutting_down` until it is confirmed
off), and the billed time the crash left open in the ledger is closed at that confirmed stop, so the
time the machine ran unattended is counted too. A serverless endpoint has no machine running meanwhile:
the open time is closed at its journal's last change, when its last job was sent or seen ending.
"""

from __future__ import annotations

import logging
import time

from avatargen.generator.billing import Billing
from avatargen.generator.machine import Machine
from avatargen.generator.states import States
from avatargen.gpu.base import Serverless

log = logging.getLogger("avatargen.generator")


class OrphanRecovery:
    def __init__(self, machine: Machine, states: States, billing: Billing) -> None:
        self._machine = machine
        self._states = states
        self._billing = billing
        self._interrupted_at: float | None = None

    async def find(self) -> bool:
        """True when the machine is on while no run is active; the generator then waits for `stop`."""
        provider = self._machine.provider
        # A serverless run is billed its workers' time, not the hours the server was down: it ends at the
        # last job activity the crash left in the journal (read before the stop writes it again).
        self._interrupted_at = provider.last_activity() if isinstance(provider, Serverless) else None
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
        closed = self._billing.close_open(min(time.time(), self._interrupted_at or time.time()))
        if closed:
            log.warning("billed time of interrupted run(s) %s closed at the confirmed stop", ", ".join(closed))
