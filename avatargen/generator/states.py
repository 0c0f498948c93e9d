"""The generator's state, kept in one place, and the only moves it may make.

A run goes idle -> booting -> generating -> shutting_down -> idle. A machine found running at start-up
is stopped on the way idle -> shutting_down -> idle, with no run. Every change goes through `move`: it
refuses any other move, stamps the active run's record with the state reached (so a run's JSON says how
far it got), and announces the change. Nothing else writes the state, and every question about it
("may a run start?", "is the generator idle?") is answered from here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from avatargen.run import Run, State

_MOVES: dict[State, frozenset[State]] = {
    "idle": frozenset({"booting", "shutting_down"}),
    "booting": frozenset({"generating", "shutting_down"}),
    "generating": frozenset({"shutting_down"}),
    "shutting_down": frozenset({"idle"}),
}


class States:
    def __init__(self, announce: Callable[[], None]) -> None:
        self.state: State = "idle"
        self.run: Run | None = None
        self.last_run: Run | None = None
        self._announce = announce
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self, run: Run) -> None:
        """The run becomes the active one, booting."""
        if self.state != "idle":
            raise RuntimeError(f"a run cannot begin while the generator is {self.state}")
        self.run = run
        self.move("booting")

    def move(self, state: State) -> None:
        """Go to `state`; back at idle, the active run (if any) becomes the last run."""
        if state not in _MOVES[self.state]:
            raise RuntimeError(f"the generator cannot go from {self.state} to {state}")
        self.state = state
        if self.run is not None:
            self.run.state = state
        if state == "idle":
            if self.run is not None:
                self.last_run, self.run = self.run, None
            self._idle.set()
        else:
            self._idle.clear()
        self._announce()

    async def wait_idle(self) -> None:
        await self._idle.wait()
