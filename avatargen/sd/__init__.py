"""Stable Diffusion backends: the web UI API (`a1111`: AUTOMATIC1111, Forge, reForge, SD.Next) and ComfyUI.

`make_backend` picks the one `sd.backend` names; the generator only sees `SdBackend`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from avatargen.config import ConfigError, Settings
from avatargen.gpu.base import Provider, Serverless
from avatargen.sd.a1111 import SdClient, Txt2ImgResult
from avatargen.sd.base import Generated, SdBackend, SdError, SdNotReady, SdProgress

__all__ = ["Generated", "SdBackend", "SdClient", "SdError", "SdNotReady", "SdProgress", "Txt2ImgResult",
           "ask_sd_server", "check_backend", "make_backend"]
ASK_TIMEOUT = 5.0  # seconds check-config waits for an always-on web UI before it says it could not ask


def make_backend(settings: Settings, provider: Provider | None = None) -> Callable[[str], SdBackend]:
    """What makes the `sd.backend` client once the machine's SD address is known (when it is ready); a
    serverless provider supplies its own, which sends the jobs to its endpoint.

    ComfyUI's workflow is read and checked now, before a machine is started for it: a file broken since
    start-up is a ConfigError that costs nothing.
    """
    if isinstance(provider, Serverless):
        return provider.sd_backend(settings)
    if settings.sd.backend == "comfyui":
        from avatargen.journal import JobJournal
        from avatargen.sd.comfyui import JOURNAL, ComfyUiClient
        from avatargen.sd.workflow import load_workflow

        workflow = load_workflow(settings)
        journal = settings.server.data_dir / JOURNAL  # read by each client: what the clients before it left
        return lambda url: ComfyUiClient(settings.sd, workflow, url=url, journal=JobJournal(
            journal, unreadable="jobs an earlier run left on ComfyUI, if any, are not cancelled"))
    return lambda url: SdClient(settings.sd, url=url, live_previews=settings.generator.preview_every > 0)


def check_backend(settings: Settings) -> list[str]:
    """What `check-config` and start-up check of the backend beyond the config file (the workflow, the
    proxy token in the environment); ConfigError when a run could not work. Returns notes for the owner."""
    if settings.sd.backend != "comfyui":
        return []
    from avatargen.sd.workflow import load_workflow

    comfyui = settings.sd.comfyui
    if comfyui.token_env and not comfyui.token():
        raise ConfigError(f"the environment variable {comfyui.token_env} holding the proxy's bearer token is not set "
                          "or empty", key="sd.comfyui.token_env", file=settings.path)
    return [load_workflow(settings).describe()]


async def ask_sd_server(settings: Settings, timeout: float = ASK_TIMEOUT) -> tuple[list[str], list[str]]:
    """What `check-config` learns from an always-on web UI (the only SD server that answers before a run),
    as (notes, warnings): which of its models `sd.checkpoint` names and which sampler the requests will
    carry. A name the server does not have is a ConfigError; no answer within `timeout` is a warning."""
    later = "sd.checkpoint and sd.sampler are checked when a run starts"
    async with SdClient(settings.sd) as sd:
        try:
            async with asyncio.timeout(timeout):
                await sd.probe(settings.sd.checkpoint)
        except TimeoutError:
            return [], [f"the SD web UI at {sd.shown_url} did not answer within {timeout:g} s: {later}"]
        except SdNotReady as exc:
            return [], [f"{exc.message}: {later}"]
        except SdError as exc:
            key = "sd.checkpoint" if "sd.checkpoint" in exc.message else "sd.sampler"
            raise ConfigError(exc.message, key=key, file=settings.path) from None
    return [f"SD web UI at {sd.shown_url}: {sd.settled}"], []
