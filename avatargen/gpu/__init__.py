"""GPU machines that generate the avatars: Paperspace, the simulated one (demo mode), or one always on.

`make_provider` picks the provider named by `gpu.provider`. The simulated GPU speaks the Paperspace
API, so "simulated" runs the very same `PaperspaceProvider` code as "paperspace", only pointed at the
simulator: the demo exercises what production runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from avatargen.config import ConfigError, Secret, Settings
from avatargen.gpu.always_on import AlwaysOnProvider
from avatargen.gpu.base import OFF, READY, MachineError, MachineTimeout, Provider
from avatargen.gpu.paperspace import PaperspaceClient, PaperspaceError, PaperspaceProvider

if TYPE_CHECKING:
    from avatargen.simulator import SimulatedGpu

__all__ = [
    "OFF", "READY", "AlwaysOnProvider", "MachineError", "MachineTimeout", "PaperspaceClient", "PaperspaceError",
    "PaperspaceProvider", "Provider", "make_provider",
]


def make_provider(settings: Settings, *, simulated: SimulatedGpu | None = None) -> Provider:
    """The provider for `settings.gpu.provider`; "simulated" needs the running `SimulatedGpu`."""
    gpu = settings.gpu
    if gpu.provider == "always_on":
        return AlwaysOnProvider(settings.sd.url)
    if gpu.provider == "simulated":
        if simulated is None:
            raise ValueError('gpu.provider = "simulated" needs a running SimulatedGpu (pass simulated=...)')
        client = PaperspaceClient(simulated.paperspace_url, Secret(simulated.api_key))
        return PaperspaceProvider(client, simulated.machine_id, sd_url=simulated.sd_url, poll_every=gpu.poll_every,
                                  stop_timeout=gpu.stop_timeout, name="simulated")
    api_key = gpu.paperspace.api_key()
    if not api_key:
        raise ConfigError(f"the environment variable {gpu.paperspace.api_key_env} holding the Paperspace API key "
                          "is not set or empty", key="gpu.paperspace.api_key_env", file=settings.path)
    client = PaperspaceClient(gpu.paperspace.api_url, api_key)
    return PaperspaceProvider(client, gpu.paperspace.machine_id, sd_url=settings.sd.url, poll_every=gpu.poll_every,
                              stop_timeout=gpu.stop_timeout)
