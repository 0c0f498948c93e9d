"""GPU machines that generate the avatars: Paperspace, one always on, or the simulated one (demo mode).

`make_provider` builds the provider `gpu.provider` names from the settings. The simulated GPU runs
inside the server process, so its provider comes from the running simulator
(`avatargen.simulator.SimulatedGpu.provider`), which points `api_provider` at itself: the demo runs
the very same provider and client code as production, and production never imports the simulator.
"""

from __future__ import annotations

from typing import Any

from avatargen.config import ConfigError, GpuSettings, Secret, Settings
from avatargen.gpu.always_on import AlwaysOnProvider
from avatargen.gpu.base import OFF, READY, MachineError, MachineTimeout, Provider
from avatargen.gpu.paperspace import PaperspaceClient, PaperspaceError, PaperspaceProvider

__all__ = [
    "OFF", "READY", "AlwaysOnProvider", "MachineError", "MachineTimeout", "PaperspaceClient", "PaperspaceError",
    "PaperspaceProvider", "Provider", "api_provider", "make_provider", "paperspace_api_key",
]


def paperspace_api_key(settings: Settings) -> Secret:
    """The key from the environment variable the config names; missing is a config error, found early."""
    api_key = settings.gpu.paperspace.api_key()
    if not api_key:
        env = settings.gpu.paperspace.api_key_env
        raise ConfigError(f"the environment variable {env} holding the Paperspace API key is not set or empty",
                          key="gpu.paperspace.api_key_env", file=settings.path)
    return api_key


def api_provider(gpu: GpuSettings, *, api_url: str, api_key: Secret, machine_id: str, sd_url: str,
                 name: str = "paperspace", **client_options: Any) -> Provider:
    """The provider of a machine behind the Paperspace API at `api_url` (`client_options`: retries)."""
    client = PaperspaceClient(api_url, api_key, **client_options)
    return PaperspaceProvider(client, machine_id, sd_url=sd_url, poll_every=gpu.poll_every,
                              stop_timeout=gpu.stop_timeout, name=name)


def make_provider(settings: Settings) -> Provider:
    """The provider for `settings.gpu.provider` ("simulated" is built by the running simulator instead)."""
    gpu = settings.gpu
    if gpu.provider == "always_on":
        return AlwaysOnProvider(settings.sd.url)
    if gpu.provider == "paperspace":
        return api_provider(gpu, api_url=gpu.paperspace.api_url, api_key=paperspace_api_key(settings),
                            machine_id=gpu.paperspace.machine_id, sd_url=settings.sd.url)
    raise ValueError(f"gpu.provider = {gpu.provider!r} is not built here: the simulated GPU's provider comes from "
                     "the running simulator (avatargen.simulator.SimulatedGpu.provider)")
