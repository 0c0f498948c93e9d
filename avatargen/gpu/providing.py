"""The provider factory of a running server, and the demo mode's one seam: for `gpu.provider = "simulated"` it
starts the simulated GPU (in this event loop), hands out the provider that drives it, and stops it after.

This is the only production module that imports `avatargen.simulator`, and only inside the functions that
run for the demo (the contract in pyproject.toml's [tool.importlinter] says so, and
tests/test_production_imports.py checks that a real provider's start-up never runs them). The simulated
machine speaks a vendor's real API, so the demo runs the very same provider and client code as production.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from avatargen.config import Settings
from avatargen.gpu import make_provider
from avatargen.gpu.api import Fence
from avatargen.gpu.base import Provider

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def running_provider(settings: Settings, *, fence: Fence | None = None) -> AsyncIterator[Provider]:
    """The provider `gpu.provider` names, for as long as the block runs (the generator closes it); in demo
    mode, the simulated GPU behind it is started first and stopped after. `fence` guards each call that
    changes the machine (see avatargen.gpu.api)."""
    if settings.gpu.provider != "simulated":
        yield make_provider(settings, fence=fence)
        return
    from avatargen.simulator.runner import SimulatedGpu  # demo mode only: production never loads it

    # The simulated machine costs what the owner configured, whichever API says so.
    async with SimulatedGpu(settings.gpu.simulated, hourly_price=settings.gpu.hourly_cost,
                            backend=settings.sd.backend) as simulated:
        log.info("simulated GPU: %s API at %s, SD server (%s) at %s", simulated.api, simulated.api_url,
                 settings.sd.backend, simulated.sd_url)
        yield simulated.provider(settings.gpu, data_dir=settings.server.data_dir, fence=fence)


def check_simulated(settings: Settings) -> None:
    """The simulated GPU's settings the config cannot check itself (the core never imports the simulator)."""
    from avatargen.simulator.faults import unknown_fault

    if problem := unknown_fault(settings.gpu.simulated.faults):
        raise settings.error(problem, "gpu.simulated.faults")


def serve_simulated(settings: Settings, host: str, api_port: int, sd_port: int) -> int:
    """`avatargen simulate`: the simulated GPU of the config as a process of its own, until SIGTERM or Ctrl-C;
    the exit status."""
    from avatargen.simulator.runner import serve_simulator

    check_simulated(settings)
    return serve_simulator(settings.gpu.simulated, host, api_port, sd_port, settings.sd.backend)
