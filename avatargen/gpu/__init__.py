"""GPU machines that generate the avatars: Paperspace, RunPod (a pod, or a Serverless endpoint), one always on, or
the simulated one (demo mode).

`make_provider` builds the provider `gpu.provider` names from the settings. The simulated GPU runs
inside the server process, so its provider comes from the running simulator
(`avatargen.simulator.SimulatedGpu.provider`), which points `api_provider` at itself: the demo runs
the very same provider and client code as production. `avatargen.gpu.providing.running_provider` is the
server's factory for both, and the one seam through which production code reaches the simulator.

`check_settings` (before anything starts), `settings_warnings` and `ask_provider` (for `check-config`)
find what would otherwise surface only once the generator runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avatargen.config import ConfigError, GpuSettings, Secret, Settings
from avatargen.gpu import paperspace, runpod
from avatargen.gpu.address import template_problem
from avatargen.gpu.always_on import AlwaysOnProvider
from avatargen.gpu.api import Fence
from avatargen.gpu.base import OFF, READY, HourlyRate, MachineError, MachineTimeout, MachineUnusable, Provider
from avatargen.gpu.paperspace import PaperspaceClient, PaperspaceError, PaperspaceProvider
from avatargen.gpu.runpod import RunPodClient, RunPodError, RunPodProvider
from avatargen.gpu.serverless import RunPodServerlessProvider
from avatargen.gpu.serverless_api import ServerlessClient

__all__ = [
    "OFF", "READY", "AlwaysOnProvider", "HourlyRate", "MachineError", "MachineTimeout", "MachineUnusable",
    "PaperspaceClient", "PaperspaceError", "PaperspaceProvider", "Provider", "RunPodClient", "RunPodError",
    "RunPodProvider", "RunPodServerlessProvider", "api_provider", "ask_provider", "check_settings", "make_provider",
    "settings_warnings",
]

_PLACEHOLDERS = {"paperspace": paperspace.PLACEHOLDERS, "runpod": runpod.PLACEHOLDERS, "always_on": ()}
_MACHINE_KEY = {"paperspace": "gpu.paperspace.machine_id", "runpod": "gpu.runpod.pod_id",
                "runpod_serverless": "gpu.runpod_serverless.endpoint_id"}


def provider_api_key(settings: Settings) -> Secret:
    """The provider's key, from the environment variable the config names; missing is a config error."""
    provider = settings.gpu.provider
    vendor = getattr(settings.gpu, provider)
    key = vendor.api_key()
    if not key:
        name = "Paperspace" if provider == "paperspace" else "RunPod"
        raise ConfigError(f"the environment variable {vendor.api_key_env} holding the {name} API key is not set or "
                          "empty", key=f"gpu.{provider}.api_key_env", file=settings.path)
    return key


def api_provider(gpu: GpuSettings, api: str, *, api_url: str, api_key: Secret, machine_id: str, sd_url: str,
                 data_dir: Path | None = None, name: str | None = None, **client_options: Any) -> Provider:
    """The provider of a machine behind the `api` ("paperspace" | "runpod" | "runpod_serverless": then
    `machine_id` is the endpoint's id, and its journal of jobs goes in `data_dir`) at `api_url`;
    `client_options` tune the client's retries."""
    if api == "runpod_serverless":
        if data_dir is None:
            raise ValueError("a serverless provider keeps its journal of jobs in the data folder: pass data_dir")
        options = gpu.runpod_serverless
        return RunPodServerlessProvider(
            ServerlessClient(api_url, machine_id, api_key, **client_options), machine_id, data_dir=data_dir,
            max_in_flight=options.max_in_flight, poll_every=gpu.poll_every, queue_timeout=gpu.ready_timeout,
            idle_timeout=options.idle_timeout, hourly_cost=gpu.hourly_cost, name=name or api)
    timing = {"poll_every": gpu.poll_every, "stop_timeout": gpu.stop_timeout, "hourly_cost": gpu.hourly_cost}
    if api == "runpod":
        return RunPodProvider(RunPodClient(api_url, api_key, **client_options), machine_id, sd_url=sd_url,
                              name=name or api, **timing)
    return PaperspaceProvider(PaperspaceClient(api_url, api_key, **client_options), machine_id, sd_url=sd_url,
                              name=name or api, auto_shutdown=gpu.paperspace.auto_shutdown, **timing)


def make_provider(settings: Settings, *, fence: Fence | None = None) -> Provider:
    """The provider for `settings.gpu.provider` ("simulated" is built by the running simulator instead, see
    `avatargen.gpu.providing`); `fence` guards each call that changes the machine (see avatargen.gpu.api)."""
    gpu = settings.gpu
    if gpu.provider == "always_on":
        return AlwaysOnProvider(settings.sd.url)
    if gpu.provider == "paperspace":
        return api_provider(gpu, "paperspace", api_url=gpu.paperspace.api_url, api_key=provider_api_key(settings),
                            machine_id=gpu.paperspace.machine_id, sd_url=settings.sd.url, fence=fence)
    if gpu.provider == "runpod":
        return api_provider(gpu, "runpod", api_url=gpu.runpod.api_url, api_key=provider_api_key(settings),
                            machine_id=gpu.runpod.pod_id, sd_url=settings.sd.url, fence=fence)
    if gpu.provider == "runpod_serverless":
        return api_provider(gpu, "runpod_serverless", api_url=gpu.runpod_serverless.api_url,
                            api_key=provider_api_key(settings), machine_id=gpu.runpod_serverless.endpoint_id,
                            sd_url="", data_dir=settings.server.data_dir)
    raise ValueError(f"gpu.provider = {gpu.provider!r} is not built here: the simulated GPU's provider comes from "
                     "the running simulator (avatargen.simulator.SimulatedGpu.provider), which "
                     "avatargen.gpu.providing.running_provider starts")


def check_settings(settings: Settings) -> None:
    """What the config cannot check alone, as config errors: the provider's key in the environment, and the
    placeholders `sd.url` uses (each provider fills its own)."""
    provider = settings.gpu.provider
    if provider in _MACHINE_KEY:
        provider_api_key(settings)
    if provider == "runpod_serverless":
        check_serverless(settings)
    allowed = _PLACEHOLDERS.get(provider)
    if allowed is not None and (problem := template_problem(settings.sd.url, allowed)):
        raise settings.error(problem, "sd.url")


def check_serverless(settings: Settings) -> None:
    """What a serverless endpoint needs of the SD settings: worker-comfyui takes a ComfyUI graph (the web UI's
    workers take other inputs, which avatargen does not send), and names its model (nothing can ask a worker)."""
    if settings.sd.backend != "comfyui":
        raise settings.error(f"RunPod Serverless runs avatargen's jobs on worker-comfyui workers only (the job's input "
                             f"is the ComfyUI graph): set sd.backend = \"comfyui\" (got {settings.sd.backend!r}); "
                             "for the web UI, use a pod (gpu.provider = \"runpod\")", "sd.backend")
    from avatargen.sd.workflow import load_workflow  # the workflow's own checks come with it

    if not (settings.sd.checkpoint or load_workflow(settings).checkpoint):
        from avatargen.sd.serverless import NO_CHECKPOINT

        raise settings.error(NO_CHECKPOINT, "sd.checkpoint")


def settings_warnings(settings: Settings) -> list[str]:
    """Settings that work but may cost the owner: a batch the RunPod proxy may cut, a Paperspace backstop
    that would shut the machine down in the middle of a run."""
    gpu, warnings = settings.gpu, []
    if gpu.provider == "runpod" and (warning := runpod.proxy_warning(settings.sd, settings.generator.concurrency)):
        warnings.append(warning)
    longest = settings.generator.max_run_duration + gpu.ready_timeout
    if gpu.provider == "paperspace" and 0 < gpu.paperspace.auto_shutdown < longest:
        warnings.append(f"gpu.paperspace.auto_shutdown ({gpu.paperspace.auto_shutdown / 3600:g}h) is shorter than "
                        "the longest run (generator.max_run_duration + gpu.ready_timeout): Paperspace would shut "
                        "the machine down in the middle of it")
    return warnings


async def ask_provider(settings: Settings) -> list[str]:
    """Ask the provider's API about the configured machine, as the generator does at start-up: what the
    owner should know, or a config error when the machine can never run (wrong id, terminated, key refused)."""
    provider = make_provider(settings)
    try:
        return await provider.check()
    except MachineUnusable as exc:
        raise settings.error(str(exc), _MACHINE_KEY.get(settings.gpu.provider, "gpu.provider")) from None
    finally:
        await provider.aclose()
