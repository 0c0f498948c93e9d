"""What the owner's requests to the generator can be refused with, and why a run ends early.

The admin API turns the first three into 409s; `RunFailed` is caught inside a run and becomes its error.
"""

from __future__ import annotations


class RunActive(Exception):
    """A run is already under way (or the server is shutting down)."""


class NothingToDo(Exception):
    """Every bucket asked for is already at its max: booting a machine would only cost money."""


class NotRunning(Exception):
    """There is no run to abort."""


class RunFailed(Exception):
    """The run cannot go on; the message is what the owner reads as the run's error."""
