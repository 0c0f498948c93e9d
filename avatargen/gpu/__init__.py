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
    "PaperspaceProvider", "Provider", "make_provider", "paperspace_api_key",
]


def paperspace_api_key(settings: Settings) -> Secret:
    """The key from the environment variable the config names; missing is a config error, found early."""
    api_key = settings.gpu.paperspace.api_key()
    if not api_key:
        env = settings.gpu.paperspace.api_key_env
        raise ConfigError(f"the environment variable {env} holding the Paperspace API key is not set or empty",
                          key="gpu.paperspace.api_key_env", file=settings.path)
    return api_key


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
    client = PaperspaceClient(gpu.paperspace.api_url, paperspace_api_key(settings))
    return PaperspaceProvider(client, gpu.paperspace.machine_id, sd_url=settings.sd.url, poll_every=gpu.poll_every,
                              stop_timeout=gpu.stop_timeout)
